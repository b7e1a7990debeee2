"""Defaults and choice lists that the CLI and the library share, defined once.

Import-light on purpose: the CLI reads these while building its parser, before any command runs.
"""

from __future__ import annotations

MQTT_PORT = 1883
DEFAULT_BROKER = f"localhost:{MQTT_PORT}"
# ``--runtime`` / PackOptions.runtime: which runtime a CPU target with ONNX input gets
# ("auto" measures both and keeps the faster).
RUNTIME_CHOICES = ("auto", "onnxruntime", "litert")
