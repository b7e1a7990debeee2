"""Edge TPU family (Coral USB / Dev Board): full-int8 TFLite, op compatibility and partition."""

from __future__ import annotations

from .base import TargetFamily


class EdgeTpuFamily(TargetFamily):
    NAME = "edgetpu"
    OPTIONS = {"onchip_param_bytes": (int, None), "host": (str, None)}
    REQUIRED_OPTIONS = ("onchip_param_bytes",)
    FULL_INT8 = True
