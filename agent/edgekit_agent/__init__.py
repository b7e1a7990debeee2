"""edgekit-agent: the device side of edgekit (bundle verification, runtimes, policies, telemetry).

Imports only numpy, cryptography and paho-mqtt at module level; runtimes load lazily.
"""

__version__ = "0.1.0"
