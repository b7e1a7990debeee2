"""The explicit registry of target families (it also feeds the CLI's choices)."""

from __future__ import annotations

from .base import TargetFamily
from .cpu import CpuFamily
from .edgetpu import EdgeTpuFamily
from .ethos_u import EthosUFamily
from .mcu import McuFamily

FAMILY_REGISTRY: dict[str, type[TargetFamily]] = {
    CpuFamily.NAME: CpuFamily,
    EdgeTpuFamily.NAME: EdgeTpuFamily,
    EthosUFamily.NAME: EthosUFamily,
    McuFamily.NAME: McuFamily,
}


def family_for(name: str) -> TargetFamily:
    return FAMILY_REGISTRY[name]()
