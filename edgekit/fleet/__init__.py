"""The fleet side: device status from MQTT (``status``), the `edgekit fleet` commands (``cli``)
and the broker connection they share (``broker``)."""
