"""Never worse than the input: when float wins, ship the source file itself.

The float reference the search measures is the *doctored* model: an fp16-stored source is
decomposed to float32 weights there (twice the size). When no compressing recipe fits, the
source as the user gave it is the smallest lossless choice, so it is shipped unchanged.
"""

from __future__ import annotations

from ..errors import EdgekitError
from .evaluate import compare, interleaved_latency, make_runner, run_all
from .recipes import Recipe
from .search import Candidate, Context

SOURCE_RECIPE = Recipe("none", description="the source model file, shipped unchanged")


def keep_source(ctx: Context, original: bytes, fmt: str,
                chosen: list[Candidate]) -> list[Candidate]:
    """``chosen`` with a float winner replaced by the source file when that is smaller and runs
    on the evaluation data with the same fidelity criteria."""
    if (not chosen or chosen[0].recipe.quantization != "none" or fmt != ctx.format
            or len(original) >= len(chosen[0].shipped)):
        return chosen
    cand = source_candidate(ctx, original, fmt)
    if not cand.fits:
        return chosen
    return [cand, *chosen[1:]]


def source_candidate(ctx: Context, original: bytes, fmt: str) -> Candidate:
    cand = Candidate(SOURCE_RECIPE, fmt, model=original, stats={"source_unchanged": True})
    try:
        cand.compiled = ctx.family.compile(original, fmt, ctx.profile, calib=ctx.calib)
        cand.runner = make_runner(cand.compiled.model, fmt,
                                  **ctx.family.host_backend(cand.compiled))
        outputs = run_all(cand.runner, ctx.eval)
    except EdgekitError as exc:
        cand.rejected = f"failed: {exc}"
        return cand
    names = [s.name for s in ctx.reference.outputs]
    cand.fidelity = compare(names, ctx.reference_outputs, outputs, ctx.eval, ctx.labels,
                            ctx.reference_accuracy)
    cand.latency = interleaved_latency(cand.runner, ctx.reference, ctx.eval.sample(0))
    misses = list(cand.compiled.report.violations) + ctx.criteria.misses(cand.fidelity)
    cand.rejected = "; ".join(misses)
    return cand
