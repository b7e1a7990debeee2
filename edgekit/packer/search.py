"""Recipe search: build each candidate, run it, measure it, compile it for the target, judge it.

Candidates are walked in ladder order. float32 is measured first as the reference and kept only
when no compressing recipe fits. A candidate is rejected, by measurement, when it does not run,
misses the fidelity tolerance, breaks a target budget, is larger than the float model, or (on
CPU targets) is slower than the float model. Among the candidates that fit, ``preference``
decides: the least lossy wins (see its docstring). The ladder order is only a prior, so the
search keeps building, after enough candidates fit, every recipe that could still be preferred.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from edgekit_agent.runtime import Runner

from ..dataset import Dataset
from ..errors import EdgekitError
from ..targets import Compiled, Profile, TargetFamily
from .compress import compress_tflite
from .evaluate import Fidelity, Latency, compare, interleaved_latency, make_runner, run_all
from .quantize_onnx import apply_recipe, sensitive_nodes
from .quantize_tflite import fallback_order, quantize_tflite
from .recipes import Recipe
from .tuned import quantize_tuned

SPEED_TOLERANCE = 1.10  # p50 within 10 % of float counts as "not slower" on a shared, noisy host
DEFAULT_MIN_SQNR_DB = 15.0  # used when no labels give an accuracy to hold
MIXED_STEPS = (1, 2, 4, 8, 16)
FASTER_CHOICE = 0.80  # where speed is judged, a candidate at <= 0.8x the p50 of a less lossy one wins
TIE_DB = 0.5  # SQNRs this close count as equal: the smaller, then the faster candidate wins
# (weight bits, activation bits) each quantization computes with; dynamic int8 quantizes the
# activations to 8 bits at run time
_BITS = {"none": (32, 32), "fp16": (16, 32), "dynamic_int8": (8, 8), "static_int8": (8, 8),
         "static_int16x8": (8, 16), "weight_int8": (8, 32), "weight_int4": (4, 32)}


@dataclass(frozen=True)
class Criteria:
    max_drop: float | None = 0.01
    min_sqnr_db: float | None = None
    check_speed: bool = False

    def misses(self, fid: Fidelity) -> list[str]:
        out = []
        drop = fid.accuracy_drop
        if self.max_drop is not None and drop is not None and drop > self.max_drop:
            out.append(
                f"accuracy drop {fid.accuracy_drop * 100:.2f} pt > {self.max_drop * 100:.2f} pt"
            )
        floor = self.min_sqnr_db
        if floor is None and fid.accuracy_drop is None:
            floor = DEFAULT_MIN_SQNR_DB
        low = fid.decision_sqnr_db
        if floor is not None and low < floor:
            where = " before the final activation" if low != fid.min_sqnr_db else ""
            out.append(f"SQNR{where} {low:.1f} dB < {floor:.1f} dB")
        return out


@dataclass
class Context:
    """Everything the search needs, computed once."""

    model: bytes
    format: str
    family: TargetFamily
    profile: Profile
    calib: Dataset | None
    eval: Dataset
    labels: np.ndarray | None
    reference: Runner
    reference_outputs: list[np.ndarray]
    reference_accuracy: float | None
    criteria: Criteria
    int8_io: bool
    # size of the model file as the user gave it (an fp16-stored source is smaller than
    # ``model``, its float32 decomposition); nothing larger than it is ever shipped
    source_bytes: int = 0
    timing: Any = None  # latency_model.Timing; None: host timing, no speed hints
    pre_activation: Any = None  # preact.PreActivation: fidelity before final sigmoid/softmax


@dataclass
class Candidate:
    recipe: Recipe
    format: str
    model: bytes = b""
    stats: dict[str, Any] = field(default_factory=dict)
    fidelity: Fidelity | None = None
    latency: Latency | None = None
    compiled: Compiled | None = None
    rejected: str = ""
    runner: Runner | None = None

    @property
    def fits(self) -> bool:
        return not self.rejected and self.compiled is not None

    @property
    def shipped(self) -> bytes:
        return self.compiled.model if self.compiled else self.model

    @cached_property
    def compressed_bytes(self) -> int:
        """Deflated size (what the bundle member costs); read once the candidate is final."""
        return len(zlib.compress(self.shipped, 9))

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe.name, "format": self.format,
                "size_bytes": len(self.shipped) if self.model else None,
                "compressed_bytes": self.compressed_bytes if self.model else None,
                "fidelity": self.fidelity.to_dict() if self.fidelity else None,
                "latency_ms": self.latency.p50_ms if self.latency else None,
                "latency_ratio": round(self.latency.ratio, 3) if self.latency else None,
                "target_report": self.compiled.report.to_dict() if self.compiled else None,
                "stats": self.stats, "fits": self.fits, "rejected": self.rejected}


def produce(ctx: Context, recipe: Recipe,
            exclude: Sequence[Any] = ()) -> tuple[bytes, dict[str, Any]]:
    calib = ctx.calib if recipe.needs_calibration else None
    if ctx.format == "onnx":
        return apply_recipe(ctx.model, recipe, calib, exclude_nodes=exclude)
    return _produce_tflite(ctx, recipe, calib, exclude)


def _produce_tflite(ctx: Context, recipe: Recipe, calib: Dataset | None,
                    exclude: Sequence[Any]) -> tuple[bytes, dict[str, Any]]:
    model, stats = ctx.model, {}
    if recipe.sparsity or recipe.clusters or recipe.quantization == "fp16":
        model, stats = compress_tflite(model, sparsity=recipe.sparsity, clusters=recipe.clusters,
                                       fp16=recipe.quantization == "fp16")
    if recipe.quantization in ("none", "fp16"):
        return model, stats
    feeds = calib.feeds() if calib is not None else None
    if recipe.calibration == "tuned" or recipe.quantization == "static_int16x8":
        model, tuning = quantize_tuned(model, recipe.quantization, feeds,
                                       float_ops=frozenset(exclude), int8_io=ctx.int8_io,
                                       int8_only=ctx.family.INT8_ONLY_OPS)
        stats = {**stats, **tuning}
    else:
        model = quantize_tflite(model, recipe.quantization, feeds, float_ops=frozenset(exclude),
                                int8_io=ctx.int8_io)
    return model, {**stats, "float_ops": sorted(exclude)} if exclude else stats


def evaluate(ctx: Context, recipe: Recipe, exclude: Sequence[Any] = ()) -> Candidate:
    cand = Candidate(recipe, ctx.format)
    try:
        cand.model, cand.stats = produce(ctx, recipe, exclude)
        cand.compiled = ctx.family.compile(cand.model, ctx.format, ctx.profile, calib=ctx.calib)
        runnable = (cand.compiled.model if ctx.family.HOST_RUNNABLE
                    else cand.compiled.host_model or cand.model)
        cand.runner = make_runner(runnable, ctx.format, **ctx.family.host_backend(cand.compiled))
        outputs = run_all(cand.runner, ctx.eval)
    except EdgekitError as exc:
        cand.rejected = f"failed: {exc}"
        return cand
    names = [s.name for s in ctx.reference.outputs]
    cand.fidelity = compare(names, ctx.reference_outputs, outputs, ctx.eval, ctx.labels,
                            ctx.reference_accuracy)
    if ctx.pre_activation is not None:
        cand.fidelity = ctx.pre_activation.add_to(
            cand.fidelity, runnable, ctx.format, ctx.eval,
            ctx.family.host_backend(cand.compiled, probe=True))
    cand.latency = (ctx.timing.latency(cand, ctx) if ctx.timing is not None
                    else interleaved_latency(cand.runner, ctx.reference, ctx.eval.sample(0)))
    cand.rejected = "; ".join(_misses(ctx, cand))
    return cand


def _misses(ctx: Context, cand: Candidate) -> list[str]:
    out = list(cand.compiled.report.violations) if cand.compiled else []
    if cand.recipe.quantization != "none":
        out += ctx.criteria.misses(cand.fidelity)
        if len(cand.shipped) >= len(ctx.model):
            out.append(f"larger than float ({len(cand.shipped)} B >= {len(ctx.model)} B)")
        elif ctx.source_bytes and len(cand.shipped) >= ctx.source_bytes:
            out.append(f"not smaller than the source file ({len(cand.shipped)} B >= "
                       f"{ctx.source_bytes} B)")
        if ctx.criteria.check_speed and cand.latency.ratio > SPEED_TOLERANCE:
            out.append(f"slower than float ({cand.latency.ratio:.2f}x p50)")
    return out


def evaluate_mixed(ctx: Context, recipe: Recipe, int8: Candidate | None) -> Candidate:
    """Leave the most sensitive layers in float, one more step at a time, until fidelity holds."""
    if int8 is None or not int8.model:
        int8 = evaluate(ctx, Recipe("static_int8"))
        if not int8.model:
            return Candidate(recipe, ctx.format,
                             rejected="failed: the int8 model it starts from did not build")
    try:
        order = sensitivity_order(ctx, int8.model)
    except EdgekitError as exc:
        return Candidate(recipe, ctx.format, rejected=f"failed: {exc}")
    cand = Candidate(recipe, ctx.format, rejected="no layer to leave in float")
    for k in MIXED_STEPS:
        if k > len(order):
            break
        cand = evaluate(ctx, recipe, exclude=order[:k])
        if cand.fidelity is not None and not ctx.criteria.misses(cand.fidelity):
            break
    return cand


def sensitivity_order(ctx: Context, int8_model: bytes) -> list[Any]:
    calib = ctx.calib or ctx.eval
    if ctx.format == "onnx":
        return sensitive_nodes(ctx.model, int8_model, calib)
    return fallback_order(ctx.model, int8_model, calib.feeds(limit=16))


def format_supports(recipe: Recipe, fmt: str) -> bool:
    """ai-edge-quantizer calibrates min/max, per channel; other choices are ONNX Runtime's;
    tuned int8 and 16x8 are edgekit's own, on TFLite."""
    if recipe.calibration == "tuned" or recipe.quantization == "static_int16x8":
        return fmt == "tflite"
    return fmt == "onnx" or (
        recipe.calibration == "minmax" and (recipe.per_channel or recipe.clusters > 0)
    )


def run_search(ctx: Context, recipes: Sequence[Recipe], variants: int, bar: Any) -> list[Candidate]:
    """Every candidate tried, in ladder order. Once ``variants`` compressing ones fit, a recipe is
    still built when it could be preferred to the best of them (``could_be_preferred``), or when
    the target's cost model predicts it clearly faster (int8 on Arm)."""
    tried: list[Candidate] = []
    hint = ctx.timing.worth_trying if ctx.timing is not None else (lambda _r: False)
    for recipe in recipes:
        bar.update(1)
        fitted = [c for c in tried if c.fits and c.recipe.quantization != "none"]
        if len(fitted) >= variants and not (
                hint(recipe) or could_be_preferred(recipe, fitted, ctx.criteria.check_speed)):
            continue
        if not format_supports(recipe, ctx.format):
            continue
        bar.set_postfix_str(recipe.name)
        if recipe.mixed_precision:
            int8 = next((c for c in tried if c.recipe == Recipe("static_int8")), None)
            tried.append(evaluate_mixed(ctx, recipe, int8))
        else:
            tried.append(evaluate(ctx, recipe))
    return tried


def lossier_by_construction(recipe: Recipe, than: Recipe) -> bool:
    """``recipe`` computes with no more bits than ``than`` and takes something more away (fewer
    bits, more pruning, fewer clusters). Calibration, per-channel and mixed-precision choices at
    the same bits are not ordered: only measurement tells them apart."""
    (w, a), (tw, ta) = _BITS[recipe.quantization], _BITS[than.quantization]
    fewer_clusters = recipe.clusters > 0 and (than.clusters == 0 or recipe.clusters < than.clusters)
    takes_more = w < tw or a < ta or recipe.sparsity > than.sparsity or fewer_clusters
    return w <= tw and a <= ta and takes_more


def could_be_preferred(recipe: Recipe, fitted: Sequence[Candidate], prefer_speed: bool) -> bool:
    """Not lossier by construction than the candidate preferred so far (after a speed win on a
    CPU target, that is the faster one: a better calibration of it may still beat it)."""
    return not lossier_by_construction(recipe, _preferred(fitted, prefer_speed).recipe)


def _sqnr(c: Candidate) -> float:
    db = c.fidelity.decision_sqnr_db if c.fidelity else None
    return float("-inf") if db is None else db


def _least_lossy(cands: Sequence[Candidate]) -> Candidate:
    top = max(_sqnr(c) for c in cands)
    tied = [c for c in cands if _sqnr(c) >= top - TIE_DB]
    return min(tied, key=lambda c: (len(c.shipped), c.latency.p50_ms if c.latency else 0.0))


def _preferred(cands: Sequence[Candidate], prefer_speed: bool) -> Candidate:
    best = _least_lossy(cands)
    if prefer_speed and best.latency is not None:
        faster = [c for c in cands if c.latency is not None
                  and c.latency.p50_ms <= FASTER_CHOICE * best.latency.p50_ms]
        if faster:
            return _least_lossy(faster)
    return best


def preference(fits: Sequence[Candidate], prefer_speed: bool = False) -> list[Candidate]:
    """The product rule: of the candidates that fit every budget, the least lossy wins.

    Loss is the lowest output SQNR judged (before final activations where measured); SQNRs
    within ``TIE_DB`` are a tie, broken by the smaller model, then the lower p50 latency.
    Where the target judges speed (CPU targets: nothing slower than float ships), a candidate
    predicted at <= ``FASTER_CHOICE`` x the p50 of the least lossy one is preferred to it, the
    least lossy of those (int8 on a Cortex-A72 whose estimate says int8 is faster).
    Returns all of ``fits``, most preferred first."""
    left, ranked = list(fits), []
    while left:
        ranked.append(_preferred(left, prefer_speed))
        left.remove(ranked[-1])
    return ranked


def choose(tried: Sequence[Candidate], variants: int,
           prefer_speed: bool = False) -> list[Candidate]:
    """The preferred fitting compressing candidates; float32 only when nothing else fits."""
    fits = [c for c in tried if c.fits and c.recipe.quantization != "none"]
    if fits:
        return preference(fits, prefer_speed)[:variants]
    return [c for c in tried if c.fits][:1]


def why_chosen(chosen: Candidate, tried: Sequence[Candidate]) -> str:
    """One line: why ``chosen`` won over the other fitting candidates."""
    others = [c for c in tried if c.fits and c is not chosen and c.recipe.quantization != "none"]
    if chosen.recipe.quantization == "none":
        return "float: no compressing recipe fits"
    if not others:
        return "the only compressing recipe that fits"
    rival = max(others, key=_sqnr)
    mine, theirs = _sqnr(chosen), _sqnr(rival)
    if theirs > mine + TIE_DB:
        return (f"predicted {chosen.latency.p50_ms / rival.latency.p50_ms:.2f}x the p50 of the "
                f"less lossy {rival.recipe.name} ({theirs:.1f} dB vs {mine:.1f} dB): speed is "
                f"judged on this target, <= {FASTER_CHOICE:.2f}x wins")
    if theirs >= mine - TIE_DB:
        size, other = len(chosen.shipped), len(rival.shipped)
        how = (f"smaller ({size} B vs {other} B)" if size < other else
               f"faster ({chosen.latency.p50_ms:.3g} vs {rival.latency.p50_ms:.3g} ms p50)")
        return f"ties {rival.recipe.name} within {TIE_DB} dB ({mine:.1f} vs {theirs:.1f}); {how}"
    return (f"least lossy that fits: {mine:.1f} dB vs {theirs:.1f} dB ({rival.recipe.name}, "
            f"the next best of {len(others)} other fitting)")
