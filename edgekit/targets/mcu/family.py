"""Microcontroller family: TensorFlow Lite Micro, measured arena, generated C sources."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgekit_agent.bundle.manifest import TensorSpec
from edgekit_agent.runtime import load_backend

from ...dataset import Dataset
from ...errors import ModelError, UnsupportedOpError
from ...tflite import model as tfl
from ...tflite import rewrite as rw
from ..base import Compiled, Profile, TargetFamily, TargetReport, size_violations
from .arena import DEFAULT_ALIGNMENT, measure_arena
from .check import compare_tflm_litert, random_inputs
from .csource import generate_sources
from .ops import TFLM_INT8_ONLY_OPS, tflm_op_set, unsupported_ops

PROBE_ARENA_MARGIN = 64 * 1024  # a copy with extra outputs keeps those tensors alive too
# dtypes of activations, as TFLite names them, that a profile must list to run the model
_COMPUTE_DTYPES = ("float32", "float16", "int16", "int8", "uint8")


class McuFamily(TargetFamily):
    NAME = "mcu"
    OPTIONS = {"runtime_code_bytes": (int, None), "arena_alignment": (int, None)}
    REQUIRED_OPTIONS = ("runtime_code_bytes",)
    # int8 first; int16x8 / float32 where the profile's dtypes list int16 / float32
    QUANTIZATIONS = ("static_int8", "static_int16x8", "none")
    INT8_ONLY_OPS = TFLM_INT8_ONLY_OPS

    def compile(self, model: bytes, fmt: str, profile: Profile,
                calib: Dataset | None = None) -> Compiled:
        if fmt != "tflite":
            raise ModelError(f"the {self.NAME} family runs TFLite models (TFLM), not {fmt}")
        model, rewrites = rewrite_for_tflm(model)
        ops = all_ops(model)
        missing = unsupported_ops(ops)
        if missing:
            raise UnsupportedOpError(f"TFLM has no kernel for {', '.join(missing)} "
                                     f"(and edgekit has no rewrite for it)")
        precision = _check_dtypes(model, profile)
        alignment = int(profile.options.get("arena_alignment", DEFAULT_ALIGNMENT))
        arena = measure_arena(model)
        arena_bytes = arena.with_margin(alignment)
        litert = load_backend(model, "tflite")
        io_bytes = sum(_nbytes(s) for s in (*litert.inputs, *litert.outputs))
        data = calib if calib is not None else random_inputs(litert.inputs)
        max_diff = compare_tflm_litert(model, data, arena_size=arena.measured_bytes)
        flash = len(model) + int(profile.options["runtime_code_bytes"])
        ram = arena_bytes + io_bytes
        violations = size_violations(profile, flash, ram)
        report = TargetReport(
            family=self.NAME, ops_on_cpu=tuple(ops), arena_bytes=arena_bytes, sram_bytes=ram,
            flash_bytes=flash, violations=violations,
            details={"runtime": "tflm", "precision": precision,
                     "arena_measured_bytes": arena.measured_bytes,
                     "arena_recorded_bytes": arena.recorded_bytes,
                     "arena_recorded_agrees": arena.recorded_bytes == arena.measured_bytes,
                     "arena_alignment": alignment, "arena_probes": arena.probes,
                     "io_buffer_bytes": io_bytes, "model_bytes": len(model),
                     "runtime_code_bytes": int(profile.options["runtime_code_bytes"]),
                     _diff_key(litert.outputs): max_diff,
                     "tflm_vs_litert_inputs": "synthetic" if data.synthetic else "calibration",
                     "rewrites": list(rewrites),
                     "resolver_ops": len(dict.fromkeys(ops)),
                     "tflite_micro_version": tflm_op_set().version})
        files = generate_sources(model, arena_bytes=arena_bytes, inputs=litert.inputs,
                                 outputs=litert.outputs, ops=ops,
                                 arena_note=f"TFLM measured {arena.measured_bytes} B, "
                                            f"+ alignment margin ({alignment} B)")
        return Compiled(model=model, format=fmt, report=report, extra_files=files)

    def host_backend(self, compiled: Compiled, probe: bool = False) -> dict[str, Any]:
        # The device runs TFLM, whose int8 kernels round differently from LiteRT's, and deep
        # models compound it (the OCR direction classifier: 2 LSB at its first HARD_SWISH, 51
        # at its softmax). So fidelity is measured in TFLM itself, in the arena the manifest
        # claims; the LiteRT difference stays in the report as evidence, not as a verdict.
        # A candidate already over a budget cannot ship: LiteRT's figure (much faster than
        # TFLM's reference kernels on a big model) only explains the refusal.
        if compiled.report.violations:
            return {}
        arena = compiled.report.arena_bytes or None
        if probe and arena:
            arena = 2 * arena + PROBE_ARENA_MARGIN
        return {"prefer_micro": True, "arena_size": arena}


def rewrite_for_tflm(model: bytes) -> tuple[bytes, list[str]]:
    """Rewrite ops TFLM lacks into ops it has, where edgekit knows an equivalent."""
    rewrites = {"RELU_0_TO_1": rw.relu_0_to_1_to_relu_minimum}
    notes: list[str] = []
    for op in unsupported_ops(all_ops(model)):
        if op in rewrites:
            model, done = rewrites[op](model)
            notes += done
    return model, notes


def all_ops(model: bytes) -> list[str]:
    """Op names over every subgraph (IF/WHILE bodies need their kernels registered too)."""
    model_t = tfl.load(model)
    return [name for i in range(len(model_t.subgraphs)) for name in tfl.op_names(model_t, i)]


def _check_dtypes(model: bytes, profile: Profile) -> str:
    """The activation dtypes the model computes in; each must be one the profile lists."""
    model_t = tfl.load(model)
    used = []
    for sg in model_t.subgraphs:
        for op in sg.operators or []:
            for i in op.outputs if op.outputs is not None else []:
                name = tfl.tensor_type_name(sg.tensors[i].type)
                if name in _COMPUTE_DTYPES and name not in used:
                    used.append(name)
    missing = [d for d in used if d not in profile.dtypes]
    if missing:
        raise ModelError(f"the model computes in {', '.join(missing)}, which {profile.name} does "
                         f"not run (it runs {', '.join(profile.dtypes)}); quantize it to int8")
    if not used:
        return "none"
    return used[0] if len(used) == 1 else "mixed:" + "+".join(sorted(used))


def _nbytes(spec: TensorSpec) -> int:
    return int(np.prod([max(d, 1) for d in spec.shape],
                       dtype=np.int64)) * np.dtype(spec.dtype).itemsize


def _diff_key(outputs: Sequence[TensorSpec]) -> str:
    quantized = all(s.scale is not None for s in outputs)
    return "tflm_vs_litert_max_lsb" if quantized else "tflm_vs_litert_max_abs"
