"""Defaults and choice lists that the CLI and the library share, defined once.

Import-light on purpose: the CLI reads these while building its parser, before any command runs.
"""

from __future__ import annotations

# The ports are the agent's (one definition for both sides): the host's broker, fleet tools and
# coordinator talk to agents that use these.
from edgekit_agent.defaults import HTTP_PORT, MQTT_HOST, MQTT_PORT

__all__ = ["DEFAULT_BROKER", "HTTP_PORT", "MQTT_PORT", "RUNTIME_CHOICES"]

DEFAULT_BROKER = f"{MQTT_HOST}:{MQTT_PORT}"
# ``--runtime`` / PackOptions.runtime: which runtime a CPU target with ONNX input gets
# ("auto" measures both and keeps the faster).
RUNTIME_CHOICES = ("auto", "onnxruntime", "litert")
