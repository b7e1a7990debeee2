"""`edgekit deploy`: a bundle to a fleet over MQTT, in waves, halted by failures and health."""
