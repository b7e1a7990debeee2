"""CPU family (Raspberry Pi, x86-64 hosts): LiteRT/XNNPACK or ONNX Runtime, no compile step."""

from __future__ import annotations

from typing import Any

from .. import onnx_model
from ..tflite import model as tfl
from .base import Compiled, Profile, TargetFamily, TargetReport, size_violations


class CpuFamily(TargetFamily):
    NAME = "cpu"
    MODEL_FORMATS = ("tflite", "onnx")
    QUANTIZATIONS = ("none", "fp16", "dynamic_int8", "static_int8", "static_int16x8",
                     "weight_int8", "weight_int4")

    def compile(self, model: bytes, fmt: str, profile: Profile, calib: Any = None) -> Compiled:
        report = TargetReport(family=self.NAME, ops_on_cpu=tuple(_op_names(model, fmt)),
                              flash_bytes=len(model),
                              violations=size_violations(profile, len(model), None))
        return Compiled(model=model, format=fmt, report=report)


def _op_names(model: bytes, fmt: str) -> list[str]:
    return onnx_model.op_names(model) if fmt == "onnx" else tfl.op_names(model)
