"""Defaults and name rules the agent, its config and the host's fleet tools share (one place each)."""

from __future__ import annotations

import re

HTTP_HOST = "127.0.0.1"
HTTP_PORT = 8470
HTTP_MAX_BODY_BYTES = 8 << 20
MQTT_HOST = "localhost"
MQTT_PORT = 1883
MQTT_PROTOCOLS = ("5", "3.1.1")
# The largest MQTT packet a device accepts (MQTT 5 Maximum-Packet-Size) and the generated broker
# config's max_packet_size: the 1 MiB payload limit of telemetry/schema.py plus topic and header.
MQTT_MAX_PACKET_BYTES = (1 << 20) + 4096
# A fleet or device name is one MQTT topic level: no wildcards, no slashes.
DEVICE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEVICE_NAME_RULE = "a name of 1-64 letters, digits, '_', '.', '-' (one MQTT topic level)"
SENSOR_KINDS = ("sysfs", "simulated", "pi")
