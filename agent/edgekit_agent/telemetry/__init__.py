"""Telemetry: the MQTT wire schema, the store-and-forward outbox, and the MQTT link."""
