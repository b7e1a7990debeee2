"""Bundles: the manifest (the contract), the reader/verifier of `.ekb` archives, ed25519 signing."""
