"""Activation ranges chosen per tensor: min-max, a percentile clip, or the MSE-optimal clip.

Min-max lets one outlier set the step of a whole tensor; a fixed percentile clips tensors
that have no outliers. Per tensor, the range with the lowest quantization error of that
tensor's own calibration values wins (the "MSE" calibration of TensorRT and ORT, with min-max
and percentile as candidates), which keeps min-max where it is best.

Only tensors whose range the op itself sets are tuned (conv, FC, add, ...); pass-through ops
(reshape, max pool, ...) inherit their input's range, as int8 kernels require, and ops with
fixed output ranges (logistic, softmax, tanh) are left alone. CONCATENATION sets its own range
too: ai-edge-quantizer's calibrated min/max of a concatenated output is an average over samples,
which clipped the MediaPipe face detector's score logits at -80 where they reach -241 (tuning it:
11.5 -> 13.5 dB output SQNR).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..tflite import model as tm
from .quantize_tflite import _TensorTap

TUNABLE = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "ADD",
                     "SUB", "MUL", "HARD_SWISH", "AVERAGE_POOL_2D", "MEAN", "PRELU",
                     "LEAKY_RELU", "RELU", "RELU6", "CONCATENATION"})
PASS_THROUGH = frozenset({"RESHAPE", "MAX_POOL_2D", "SQUEEZE", "EXPAND_DIMS", "TRANSPOSE",
                          "PAD", "STRIDED_SLICE", "SLICE", "GATHER", "DEPTH_TO_SPACE",
                          "SPACE_TO_DEPTH", "RESIZE_NEAREST_NEIGHBOR"})
MAX_VALUES = 1 << 17  # values kept per tensor (a uniform subsample beyond)
PERCENTILE = 99.99
_ALPHAS = np.linspace(0.2, 1.0, 33)


@dataclass(frozen=True)
class RangeChoice:
    name: str
    method: str  # "minmax", "percentile" or "mse"
    lo: float
    hi: float
    mse_gain_db: float  # quantization MSE of min-max over the chosen range's, in dB


def choose_ranges(float_model: bytes, calib: list[dict[str, np.ndarray]],
                  bits: int = 8) -> dict[str, RangeChoice]:
    """{tensor name: RangeChoice} for the tunable activations of subgraph 0."""
    model_t = tm.load(float_model)
    sg = model_t.subgraphs[0]
    tunable, inherit = _tensor_roles(model_t)
    values = _collect(float_model, calib, list(tunable))
    chosen = {n: _choose(n, v, bits) for n, v in values.items()}
    for op_out, op_in in inherit:  # in execution order, so chains inherit transitively
        if op_in in chosen:
            c = chosen[op_in]
            chosen[op_out] = RangeChoice(op_out, c.method, c.lo, c.hi, 0.0)
    del sg
    return chosen


def as_ranges(choices: Mapping[str, RangeChoice]) -> dict[str, tuple[float, float]]:
    return {n: (c.lo, c.hi) for n, c in choices.items()}


def _tensor_roles(model_t: Any) -> tuple[list[str], list[tuple[str, str]]]:
    sg = model_t.subgraphs[0]
    tunable, inherit = [], []
    for op in sg.operators or []:
        name = tm.op_name(model_t, op)
        outs = [tm.tensor_name(sg.tensors[t]) for t in tm.ints(op.outputs)]
        if name in TUNABLE:
            tunable += outs
        elif name in PASS_THROUGH and op.inputs is not None and len(op.inputs):
            inherit.append((outs[0], tm.tensor_name(sg.tensors[int(op.inputs[0])])))
    return tunable, inherit


def _collect(model: bytes, calib: list[dict[str, np.ndarray]],
             names: list[str]) -> dict[str, np.ndarray]:
    tap = _TensorTap(model)
    names = [n for n in names if n in tap.activations]
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    rng = np.random.default_rng(0)
    per_sample = max(1, MAX_VALUES // max(1, len(calib)))
    for sample in calib:
        for n, v in tap(sample, names).items():
            flat = v.ravel()
            if flat.size > per_sample:
                flat = rng.choice(flat, per_sample, replace=False)
            parts[n].append(flat.astype(np.float32))
    return {n: np.concatenate(p) for n, p in parts.items() if p}


def quant_mse(values: np.ndarray, lo: float, hi: float, bits: int = 8) -> float:
    """Mean squared error of asymmetric uniform quantization of ``values`` to [lo, hi]
    (zero exactly representable, as TFLite requires)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    levels = (1 << bits) - 1
    scale = (hi - lo) / levels if hi > lo else 1.0
    zp = np.round(-lo / scale)
    q = np.clip(np.round(values / scale) + zp, 0, levels)
    return float(np.mean(((q - zp) * scale - values) ** 2))


def _choose(name: str, v: np.ndarray, bits: int) -> RangeChoice:
    lo, hi = float(min(v.min(), 0.0)), float(max(v.max(), 0.0))
    cands = [("minmax", lo, hi)]
    p_lo = float(min(np.percentile(v, 100 - PERCENTILE), 0.0))
    p_hi = float(max(np.percentile(v, PERCENTILE), 0.0))
    cands.append(("percentile", p_lo, p_hi))
    cands += [("mse", lo * a, hi * a) for a in _ALPHAS]
    errors = [quant_mse(v, c_lo, c_hi, bits) for _, c_lo, c_hi in cands]
    best = int(np.argmin(errors))
    method, c_lo, c_hi = cands[best]
    if method == "mse" and np.isclose(c_lo, lo) and np.isclose(c_hi, hi):
        method = "minmax"
    gain = 10 * np.log10(max(errors[0], 1e-30) / max(errors[best], 1e-30))
    return RangeChoice(name, method, c_lo, c_hi, float(gain))
