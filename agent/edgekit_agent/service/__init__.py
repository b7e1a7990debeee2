"""The running agent: the inference API, the daemon, its command handlers and the local HTTP API."""
