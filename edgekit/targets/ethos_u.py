"""Arm Ethos-U family: full-int8 TFLite compiled by Vela for the profile's accelerator config."""

from __future__ import annotations

from .base import TargetFamily

SYSTEM_CONFIGS = ("Ethos_U55_Deep_Embedded", "Ethos_U55_High_End_Embedded", "Ethos_U65_Embedded",
                  "Ethos_U65_Mid_End", "Ethos_U65_High_End", "Ethos_U65_Client_Server")
MEMORY_MODES = ("Sram_Only", "Shared_Sram", "Dedicated_Sram")
ACCELERATOR_CONFIGS = ("ethos-u55-32", "ethos-u55-64", "ethos-u55-128", "ethos-u55-256",
                       "ethos-u65-256", "ethos-u65-512")


class EthosUFamily(TargetFamily):
    NAME = "ethos-u"
    OPTIONS = {"system_config": (str, SYSTEM_CONFIGS), "memory_mode": (str, MEMORY_MODES),
               "runtime_code_bytes": (int, None), "arena_alignment": (int, None)}
    REQUIRED_OPTIONS = ("system_config", "memory_mode")
    FULL_INT8 = True
