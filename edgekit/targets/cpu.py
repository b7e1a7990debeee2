"""CPU family (Raspberry Pi, x86-64 hosts): LiteRT/XNNPACK or ONNX Runtime, no compile step."""

from __future__ import annotations

from typing import Any

from .base import Compiled, TargetFamily, TargetReport, size_violations
from .profiles import Profile


class CpuFamily(TargetFamily):
    NAME = "cpu"
    MODEL_FORMATS = ("tflite", "onnx")
    QUANTIZATIONS = ("none", "fp16", "dynamic_int8", "static_int8", "weight_int8", "weight_int4")

    def compile(self, model: bytes, fmt: str, profile: Profile, calib: Any = None) -> Compiled:
        from ..packer.ingest import op_list

        report = TargetReport(family=self.NAME, ops_on_cpu=tuple(op_list(model, fmt)),
                              flash_bytes=len(model),
                              violations=size_violations(profile, len(model), None))
        return Compiled(model=model, format=fmt, report=report)
