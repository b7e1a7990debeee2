"""Rewrites for fixable fallbacks, each kept only if it maps more ops and keeps the outputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ...tflite import rewrite as rw
from .analysis import OpVerdict, analyze, partition
from .table import OpsTable

MIN_REWRITE_SQNR_DB = 30.0
MAX_REWRITE_ROUNDS = 8


Rewrite = Callable[[bytes], tuple[bytes, list[str]]]


def _rewrites_for(verdict: OpVerdict, runtime: int, table: OpsTable) -> list[tuple[str, Rewrite]]:
    """Rewrites that may remove this fallback, in the order to try them."""
    out: list[tuple[str, Rewrite]] = []
    if verdict.op in ("QUANTIZE", "DEQUANTIZE"):
        out.append(("strip_float_io", rw.strip_float_io))
    if verdict.op == "DEQUANTIZE":
        out.append(("requantize_float_islands", rw.requantize_float_islands))
    if verdict.rule == "no_fused_activation":
        out.append(("split_fused_activation", lambda b: rw.split_fused_activation(b, [verdict.op])))
    if verdict.op == "LEAKY_RELU" and table.rule_for("PRELU", runtime):
        out.append(("leaky_relu_to_prelu", rw.leaky_relu_to_prelu))
    return out


def fix_fallbacks(model: bytes, runtime: int, table: OpsTable,
                  probes: list[list[np.ndarray]] | None = None,
                  ) -> tuple[bytes, list[dict[str, Any]]]:
    """Rewrite while the first fallback has a known fix that puts more ops on the Edge TPU and
    keeps the outputs (within 1 LSB, or SQNR against the model before ≥ MIN_REWRITE_SQNR_DB) on
    ``probes`` (float input samples; seeded random inputs when None)."""
    applied: list[dict[str, Any]] = []
    for _ in range(MAX_REWRITE_ROUNDS):
        step = _next_fix(model, runtime, table, probes)
        if step is None:
            break
        candidate, record = step
        applied.append(record)
        if not record["kept"]:
            break
        model = candidate
    return model, applied


def _next_fix(model: bytes, runtime: int, table: OpsTable,
              probes: list[list[np.ndarray]] | None) -> tuple[bytes, dict[str, Any]] | None:
    before = partition(analyze(model, runtime, table))
    if before.first_fallback is None:
        return None
    for name, rewrite in _rewrites_for(before.first_fallback, runtime, table):
        candidate, changes = rewrite(model)
        if changes and len(partition(analyze(candidate,
                                             runtime, table)).on_tpu) > len(before.on_tpu):
            return candidate, {"rewrite": name, "changes": changes,
                               **_checked(model, candidate, probes)}
    return None


def _checked(before: bytes, after: bytes, probes: list[list[np.ndarray]] | None) -> dict[str, Any]:
    try:
        diff = rw.compare_outputs(before, after, probes)
    except Exception as exc:  # a model LiteRT cannot run cannot be verified: keep the original
        return {"kept": False,
                "why": f"could not run the rewritten model: {str(exc).splitlines()[0]}"}
    kept = diff["max_diff_lsb"] <= 1 or (diff["sqnr_db"] or 0.0) >= MIN_REWRITE_SQNR_DB
    return {"kept": kept, **diff}
