"""``static_int8_tuned``: full int8 with the techniques plain post-training quantization lacks.

0. PRELU and RELU_0_TO_1 written in ops ai-edge-quantizer quantizes (``decompose``; it leaves
   PRELU in float, and TFLM has no RELU_0_TO_1 kernel);
1. cross-layer equalisation of conv pairs (``equalize``), on the float model;
2. per-tensor activation ranges: min-max, percentile or MSE-optimal (``ranges``);
3. learned rounding of the int8 conv/FC weights (``adaround``: each layer's output error on
   the calibration inputs, not each weight's own, decides up or down);
4. empirical bias correction of the int8 conv/FC biases (``bias_correction``).

Each step is kept only when it raises the output SQNR on the calibration samples, so the
tuned model is never worse there than plain min-max int8 (which is built as the baseline).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from edgekit_agent.runtime import Runner, load_backend

from ..errors import CalibrationError, EdgekitError
from ..tflite import model as tm
from .adaround import adaround
from .bias_correction import correct_bias
from .decompose import hard_swish_to_mul, prelu_to_relu_mul, relu_0_to_1_to_relu6
from .equalize import equalize
from .preact import probe_model
from .quantize_tflite import float_compute_ops, quantize_tflite
from .ranges import as_ranges, choose_ranges

SCORE_SAMPLES = 32


def quantize_tuned(model: bytes, scheme: str, calib: list[dict[str, np.ndarray]], *,
                   float_ops: frozenset[int] = frozenset(),
                   int8_io: bool = True, quick: bool = False,
                   int8_only: frozenset[str] = frozenset()) -> tuple[bytes, dict[str, Any]]:
    """(the best of plain and tuned quantization of ``model``, what was done and measured).
    ``quick``: per-tensor ranges + bias correction only, without the plain baseline and
    equalisation (for probes such as the refusal's, which only need a figure).
    ``int8_only``: op names the target runs in int8 only (int8 activations in 16x8)."""
    if not calib:
        raise CalibrationError(f"{scheme} needs calibration samples (none given)")
    int8_ops: frozenset[str] = frozenset()

    def build(m: bytes, ranges: dict | None = None) -> bytes:
        return quantize_tflite(m, scheme, calib, float_ops=float_ops, int8_io=int8_io,
                               ranges=ranges, int8_op_types=int8_ops)

    score = _Scorer(model, calib[:SCORE_SAMPLES])
    log: dict[str, Any] = {}
    if scheme == "static_int16x8" and not float_ops:
        model, n = hard_swish_to_mul(model)
        if n:
            log["hard_swish_decomposed"] = n
    if not float_ops:  # float_ops index the model as given: no rewrite then
        for key, rewrite in (("prelu_decomposed", prelu_to_relu_mul),
                             ("relu_0_to_1_decomposed", relu_0_to_1_to_relu6)):
            model, n = rewrite(model)
            if n:
                log[key] = n
    if quick:
        return _quick(model, scheme, calib, build, score, log)
    best = build(model)
    if scheme == "static_int16x8" and not float_ops:
        # ops without a 16x8 config would stay float, and ops the target has no int16 kernel
        # for would not run: give them int8 activations instead
        int8_ops = float_compute_ops(best) | (int8_only & set(tm.op_names(model)))
        if int8_ops:
            best = build(model)
            log["int8_ops"] = sorted(int8_ops)
    best_db = score(best)
    log["plain_calib_sqnr_db"] = round(best_db, 2)
    bits = 16 if scheme == "static_int16x8" else 8
    for label, base, reference, extra in _variants(model):
        try:
            choices = choose_ranges(base, calib, bits=bits)
            cand = build(base, as_ranges(choices))
        except EdgekitError:
            continue
        log.setdefault("ranges", dict(Counter(c.method for c in choices.values())))
        for steps, m, stats in _refinements(label, reference, cand, calib):
            db = score(m)
            log[f"{steps}_calib_sqnr_db"] = round(db, 2)
            if db > best_db:
                best, best_db, log["kept"] = m, db, steps
                log.update(extra, **stats)
    log.setdefault("kept", "plain")
    log["calib_sqnr_db"] = round(best_db, 2)
    return best, {"tuning": log}


def _quick(model: bytes, scheme: str, calib: list[dict[str, np.ndarray]], build: Any,
           score: Any, log: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    bits = 16 if scheme == "static_int16x8" else 8
    cand = build(model, as_ranges(choose_ranges(model, calib, bits=bits)))
    scored = [(score(m), steps, m, stats)
              for steps, m, stats in _refinements("ranges", model, cand, calib)]
    db, steps, best, stats = max(scored, key=lambda t: t[0])
    log.update(kept=steps, calib_sqnr_db=round(db, 2), **stats)
    return best, {"tuning": log}


def _refinements(label: str, reference: bytes, cand: bytes, calib: list[dict[str, np.ndarray]]
                 ) -> list[tuple[str, bytes, dict[str, Any]]]:
    """(steps, model, stats) of ``cand`` as it is, bias corrected, with learned rounding, and
    with both (rounding first: bias correction removes the mean shift rounding leaves)."""
    out = [(label, cand, {"bias_corrected_layers": 0, "adaround_layers": 0})]
    corrected, n = correct_bias(reference, cand, calib)
    out.append((f"{label}+bias", corrected, {"bias_corrected_layers": n, "adaround_layers": 0}))
    rounded, stats = adaround(reference, cand, calib)
    if stats["adaround_layers"]:
        out.append((f"{label}+adaround", rounded, {"bias_corrected_layers": 0, **stats}))
        both, n = correct_bias(reference, rounded, calib)
        out.append((f"{label}+adaround+bias", both, {"bias_corrected_layers": n, **stats}))
    return out


def _variants(model: bytes) -> list[tuple[str, bytes, bytes, dict[str, int]]]:
    """(label, model to quantize, float model its bias correction compares with, stats): the
    model itself and, when it has conv pairs, cross-layer equalised (the same function)."""
    out = [("ranges", model, model, {"cle_pairs": 0})]
    eq, pairs = _try_equalize(model)
    if pairs:
        out.append(("cle+ranges", eq, eq, {"cle_pairs": pairs}))
    return out


def _try_equalize(model: bytes) -> tuple[bytes, int]:
    try:
        return equalize(model)
    except EdgekitError:
        return model, 0


class _Scorer:
    """SQNR (dB, worst output) of a quantized model against the float one, on what the packer
    decides on: before a final sigmoid/softmax where there is one (``preact``). A saturated
    softmax on a few calibration samples would otherwise pick the steps that suit those."""

    def __init__(self, float_model: bytes, samples: list[dict[str, np.ndarray]]) -> None:
        self.samples = samples
        self.ref, self.judged = self._outputs(float_model)

    def _outputs(self, model: bytes) -> tuple[list[np.ndarray], tuple[str, ...]]:
        """(the outputs, each replaced by its decision signal where judged; which were)."""
        n = len(tm.load(model).subgraphs[0].outputs)
        probe = probe_model(model, "tflite", [str(i) for i in range(n)])
        runner = Runner(load_backend(probe.model if probe else model, "tflite"))
        outs = [runner([s[spec.name] for spec in runner.inputs]) for s in self.samples]
        joined = [np.concatenate([o[j] for o in outs]).astype(np.float64)
                  for j in range(len(runner.outputs))]
        if probe is None:
            return joined, ()
        return probe.judged(joined), tuple(probe.activations)

    def __call__(self, model: bytes) -> float:
        outs, judged = self._outputs(model)
        if judged != self.judged:  # the quantized graph hides an activation: no fair figure
            return float("-inf")
        dbs = []
        for r, t in zip(self.ref, outs, strict=True):
            noise = float(np.sum((r - t.reshape(r.shape)) ** 2))
            dbs.append(100.0 if noise == 0 else 10 * np.log10(max(np.sum(r ** 2), 1e-30) / noise))
        return float(min(dbs))
