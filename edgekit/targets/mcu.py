"""Microcontroller family: TensorFlow Lite Micro, measured arena, generated C sources."""

from __future__ import annotations

from .base import TargetFamily


class McuFamily(TargetFamily):
    NAME = "mcu"
    OPTIONS = {"runtime_code_bytes": (int, None), "arena_alignment": (int, None)}
    REQUIRED_OPTIONS = ("runtime_code_bytes",)
