"""The on-device bundle store: A/B slots, self-tests, durable writes, crash counting and rollback."""
