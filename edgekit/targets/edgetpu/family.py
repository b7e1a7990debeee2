"""The Edge TPU family: checks, rewrites, partition, and the compiler when it is on PATH."""

from __future__ import annotations

import shutil
from typing import Any

from ...errors import ModelError
from ...tflite import model as tfl
from ...tflite import rewrite as rw
from ..base import Compiled, Profile, TargetFamily, TargetReport, size_violations
from .analysis import Partition, analyze, partition, require_int8
from .checks import OpContext
from .compiler import COMPILE_PENDING, COMPILER, run_compiler
from .rewrites import fix_fallbacks
from .table import DEFAULT_RUNTIME, RUNTIME_VERSIONS, OpsTable, load_ops_table


class EdgeTpuFamily(TargetFamily):
    NAME = "edgetpu"
    OPTIONS = {"onchip_param_bytes": (int, None), "host": (str, None),
               "runtime_version": (int, RUNTIME_VERSIONS)}
    REQUIRED_OPTIONS = ("onchip_param_bytes",)
    FULL_INT8 = True

    @property
    def HOST_RUNNABLE(self) -> bool:  # noqa: N802 (the base class's constant, decided per host)
        # edgetpu_compiler output needs the Edge TPU delegate; without the compiler the
        # compiled model is the (rewritten) int8 TFLite model, which LiteRT runs.
        return shutil.which(COMPILER) is None

    def compile(self, model: bytes, fmt: str, profile: Profile, calib: Any = None) -> Compiled:
        if fmt != "tflite":
            raise ModelError(
                f"Edge TPU runs TFLite models only; got {fmt!r} (convert it to TFLite first)"
            )
        runtime = int(profile.options.get("runtime_version", DEFAULT_RUNTIME))
        table = load_ops_table()
        require_int8(model)
        model, rewrites = fix_fallbacks(model, runtime, table, rw.calibration_probes(calib))
        part = partition(analyze(model, runtime, table))
        compiled, compiler = model, None
        if shutil.which(COMPILER):
            compiled, compiler = run_compiler(model, runtime)
        report = self._report(model, compiled, part, compiler, rewrites, runtime, table, profile)
        return Compiled(model=compiled, format="tflite", report=report)

    def _report(self, model: bytes, compiled: bytes, part: Partition,
                compiler: dict[str, Any] | None,
                rewrites: list[dict[str, Any]], runtime: int, table: OpsTable,
                profile: Profile) -> TargetReport:
        first = part.first_fallback
        param_bytes = _param_bytes(model, {v.index for v in part.on_tpu})
        ops = ([{"index": v.index, "op": v.op, "on": "edgetpu"} for v in part.on_tpu]
               + [{"index": v.index, "op": v.op, "on": "cpu",
                   "reason": v.reason} for v in part.on_cpu])
        done = (
            f"done: {COMPILER} {compiler.get('version', '')}".strip()
            if compiler is not None
            else None
        )
        details: dict[str, Any] = {
            "first_fallback": first.to_dict() if first else None,
            "ops": ops,
            "rewrites": rewrites,
            "compile_steps": [c for r in rewrites if r["kept"] for c in r["changes"]]
                             + [done or COMPILE_PENDING],
            "runtime_version": runtime,
            "min_compiler_version": table.min_compiler(runtime),
            "ops_table": {"url": table.source["url"],
                          "table_runtime": table.source["table_runtime"],
                          "retrieved": table.source["retrieved"]},
            "param_bytes": param_bytes,
            "compiler": compiler if compiler is not None else "pending",
            "compile_step": done or COMPILE_PENDING,
            "notes": _notes(model, part, compiler, param_bytes, profile),
        }
        return TargetReport(
            family=self.NAME,
            ops_on_accelerator=tuple(v.op for v in part.on_tpu),
            ops_on_cpu=tuple(v.op for v in part.on_cpu),
            sram_bytes=compiler.get("onchip_param_bytes_used") if compiler else None,
            flash_bytes=len(compiled),
            violations=size_violations(profile, len(compiled), None),
            details=details,
        )


def _param_bytes(model: bytes, op_indices: set[int]) -> int:
    """Bytes of constant data (weights, biases) the given ops read, each buffer counted once."""
    m = tfl.load(model)
    sg = m.subgraphs[0]
    buffers: set[int] = set()
    for index in op_indices:
        for i in OpContext(m, sg, sg.operators[index], index).inputs():
            buf = sg.tensors[i].buffer
            if buf and m.buffers[buf].data is not None and len(m.buffers[buf].data):
                buffers.add(buf)
    return sum(len(m.buffers[b].data) for b in buffers)


def _notes(model: bytes, part: Partition, compiler: dict[str, Any] | None, param_bytes: int,
           profile: Profile) -> list[str]:
    notes = []
    cache = int(profile.options["onchip_param_bytes"])
    streamed = compiler.get("offchip_param_bytes") if compiler else max(param_bytes - cache, 0)
    if streamed:
        source = "compiler" if compiler else "predicted"
        notes.append(
            f"parameters exceed the {cache} B on-chip cache: {streamed} B stream from host "
            f"memory every inference ({source}); slower, not a failure"
        )
    if len(tfl.load(model).subgraphs) > 1:
        notes.append("model has more than one subgraph; only the main graph can map")
    if part.first_fallback and part.first_fallback.index == 0:
        notes.append("no op maps to the Edge TPU: the whole model runs on the CPU")
    return notes
