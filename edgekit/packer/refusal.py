"""A precise refusal when no recipe fits: the first line names the binding constraint.

When the float model itself misses a budget (RAM, flash) that comes first: it is why anything
had to be compressed. Then, when full integer cannot reach the fidelity floor, it names
the best SQNR any full-integer candidate reached, the layers that limit it (the ops
adding the most quantization noise, by output tensor name), and what would reach the floor:
int16 activations (measured, and which profiles run 16x8 kernels), or keeping layers on the
CPU in float (measured, with the MACs moved and an estimated CPU time). For the Edge TPU the
CPU layers are the trailing ones: its compiler partitions once, everything after the first
CPU op stays on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from .. import ui
from ..errors import EdgekitError
from ..targets import Profile, load_profiles
from ..tflite import model as tm
from .evaluate import compare, make_runner, run_all
from .quantize_tflite import fallback_order
from .recipes import FULL_INT8, Recipe
from .search import DEFAULT_MIN_SQNR_DB, Candidate, Context
from .tuned import quantize_tuned

LIMITING_SHOWN = 3
CPU_STEPS = (1, 4, 16)
# fp32 MACs per cycle per core of a host CPU, for the estimate only (NEON 4-wide FMA on
# Cortex-A, scalar FPU on Cortex-M); unknown CPUs count 1
_MACS_PER_CYCLE = {"cortex-a72": 4.0, "cortex-a76": 8.0, "cortex-a53": 2.0, "cortex-m55": 1.0,
                   "cortex-m7": 1.0, "cortex-m4": 1.0}
_INT16 = Recipe("static_int16x8")
_TUNED_MIXED = Recipe("static_int8", calibration="tuned", mixed_precision=True)


@dataclass(frozen=True)
class CpuSplit:
    layers: tuple[str, ...]
    sqnr_db: float
    macs: int
    total_macs: int
    est_ms: float
    cpu: str
    reaches: bool
    # the same quick tuning with nothing moved: the split's figure compares with this, not with
    # the fully tuned best (which it can read below)
    baseline_db: float | None = None


@dataclass(frozen=True)
class Refusal:
    floor_db: float
    best_recipe: str
    best_db: float
    limiting: tuple[str, ...]
    int16_db: float | None
    int16_targets: tuple[str, ...]
    cpu: CpuSplit | None

    @property
    def headline(self) -> str:
        return (f"full integer reaches at best {self.best_db:.1f} dB ({self.best_recipe}), "
                f"the floor is {self.floor_db:.1f} dB")

    def render(self) -> str:
        lines = [f"limiting layers: {', '.join(self.limiting) or '-'}"]
        if self.int16_db is not None:
            ok = "reaches" if self.int16_db >= self.floor_db else "gives"
            lines.append(f"int16 activations (16x8) {ok} {self.int16_db:.1f} dB; targets that "
                         f"run them: {', '.join(self.int16_targets) or 'none'}")
        if self.cpu is not None:
            c = self.cpu
            verb = "reaches" if c.reaches else "gives only"
            base = (f" (quick tuning; {c.baseline_db:.1f} dB with none kept)"
                    if c.baseline_db is not None else "")
            lines.append(f"keeping {len(c.layers)} layer(s) on the CPU in float {verb} "
                         f"{c.sqnr_db:.1f} dB{base}, {c.macs} of {c.total_macs} MACs, estimated "
                         f"{c.est_ms:.2f} ms on {c.cpu}: {', '.join(c.layers[:8])}"
                         + (" ..." if len(c.layers) > 8 else ""))
        return "\n".join(lines)


def refusal_message(ctx: Context, tried: Sequence[Candidate], table: str) -> str:
    """The BudgetError text: one line naming the binding constraint, the candidates table, then
    the refusal's details. The line: when full integer missed the fidelity floor, the float
    model's budget miss (why it could not ship) and the best SQNR reached; when every candidate
    breaks a budget, what even the smallest needs."""
    floor = ctx.criteria.min_sqnr_db
    if floor is None:
        floor = DEFAULT_MIN_SQNR_DB
    refusal = None
    if ctx.family.FULL_INT8 or ctx.profile.family == "mcu":
        refusal = refuse(ctx, tried, floor)
    fidelity_bound = refusal is not None and refusal.best_db < floor
    reference = next((c for c in tried if c.recipe.quantization == "none"), None)
    float_miss = budget_miss(reference, ctx.profile) if reference else ""
    float_line = f"the float model needs {float_miss}" if float_miss else ""
    if fidelity_bound:
        lead = [float_line, refusal.headline]
    else:
        lead = [_smallest_miss(tried, ctx.profile) or float_line]
    head = f"no recipe fits {ctx.profile.name}: {'; '.join(p for p in lead if p)}".rstrip(": ")
    details = f"\n{refusal.render()}" if fidelity_bound else ""
    return f"{head}\n{table}{details}"


def budget_miss(cand: Candidate, profile: Profile) -> str:
    """'14.7 KiB of RAM (14.4 KiB arena), stm32h7 has 11.7 KiB', or '' within the budgets."""
    r = cand.compiled.report if cand.compiled else None
    if r is None:
        return ""
    parts = []
    if r.sram_bytes is not None and r.sram_bytes > profile.ram_bytes:
        arena = (f" ({ui.human_bytes(r.arena_bytes)} arena)"
                 if r.arena_bytes and r.arena_bytes != r.sram_bytes else "")
        parts.append(f"{ui.human_bytes(r.sram_bytes)} of RAM{arena}, {profile.name} has "
                     f"{ui.human_bytes(profile.ram_bytes)}")
    if r.flash_bytes is not None and r.flash_bytes > profile.flash_bytes:
        parts.append(f"{ui.human_bytes(r.flash_bytes)} of flash, {profile.name} has "
                     f"{ui.human_bytes(profile.flash_bytes)}")
    return " and ".join(parts)


def _smallest_miss(tried: Sequence[Candidate], profile: Profile) -> str:
    """When every built candidate breaks a budget: what even the smallest one needs."""
    built = [c for c in tried if c.model and c.compiled is not None]
    if not built or any(not budget_miss(c, profile) for c in built):
        return ""
    small = min(built, key=lambda c: len(c.shipped))
    return f"even the smallest candidate ({small.recipe.name}) needs {budget_miss(small, profile)}"


def refuse(ctx: Context, tried: Sequence[Candidate], floor_db: float) -> Refusal | None:
    """None when no full-integer candidate was built (nothing to explain)."""
    built = [c for c in tried if c.recipe.quantization in FULL_INT8 and c.fidelity is not None
             and c.model]
    if not built or ctx.format != "tflite":
        return None
    best = max(built, key=lambda c: c.fidelity.decision_sqnr_db)
    calib = (ctx.calib or ctx.eval).feeds(limit=16)
    try:
        order = fallback_order(ctx.model, best.model, calib)
    except EdgekitError:
        order = []
    names = _op_labels(ctx.model)
    int16 = next((c for c in built if c.recipe.quantization == "static_int16x8"), None)
    int16_db = int16.fidelity.decision_sqnr_db if int16 else _measure(ctx, _INT16)
    return Refusal(floor_db, best.recipe.name, best.fidelity.decision_sqnr_db,
                   tuple(names[i] for i in order[:LIMITING_SHOWN] if i in names), int16_db,
                   _int16_targets(), _cpu_split(ctx, order, names, floor_db))


def _measure(ctx: Context, recipe: Recipe, exclude: Sequence[int] = ()) -> float | None:
    """Decision SQNR of a recipe (tuned, quick) on the evaluation data, without the target's
    compile step (which would refuse it: that is the point)."""
    feeds = (ctx.calib or ctx.eval).feeds()
    try:
        model, _ = quantize_tuned(ctx.model, recipe.quantization, feeds,
                                  float_ops=frozenset(exclude), int8_io=ctx.int8_io, quick=True)
        outputs = run_all(make_runner(model, ctx.format), ctx.eval)
    except EdgekitError:
        return None
    names = [s.name for s in ctx.reference.outputs]
    fid = compare(names, ctx.reference_outputs, outputs, ctx.eval, None, None)
    if ctx.pre_activation is not None:  # judged as the search judges: before a final activation
        fid = ctx.pre_activation.add_to(fid, model, ctx.format, ctx.eval)
    return fid.decision_sqnr_db


def _cpu_split(ctx: Context, order: list[int], names: dict[int, str],
               floor_db: float) -> CpuSplit | None:
    n_ops = len(tm.load(ctx.model).subgraphs[0].operators or [])
    trailing = ctx.family.NAME == "edgetpu"
    macs = _op_macs(ctx.model)
    cpu, rate = _host_rate(ctx)
    split = None
    for k in CPU_STEPS:
        if k > (n_ops if trailing else len(order)):
            break
        ops = list(range(n_ops - k, n_ops)) if trailing else order[:k]
        db = _measure(ctx, _TUNED_MIXED, ops)
        if db is None:
            continue
        moved = sum(macs.get(i, 0) for i in ops)
        split = CpuSplit(tuple(names.get(i, f"op{i}") for i in ops), db, moved,
                         sum(macs.values()), moved / rate * 1e3, cpu, db >= floor_db)
        if split.reaches:
            break
    return replace(split, baseline_db=_measure(ctx, _TUNED_MIXED)) if split else None


def _host_rate(ctx: Context) -> tuple[str, float]:
    """(host CPU name, fp32 MACs per second) of the CPU that runs the float layers."""
    host = ctx.profile
    host_name = ctx.profile.options.get("host")
    if host_name:
        host = load_profiles().get(host_name, host)
    per_cycle = _MACS_PER_CYCLE.get(host.cpu, 1.0)
    return (f"{host.name} ({host.cpu or host.arch})",
            max(host.clock_mhz, 1) * 1e6 * max(host.cores, 1) * per_cycle)


def _int16_targets() -> tuple[str, ...]:
    return tuple(sorted(n for n, p in load_profiles().items()
                        if "int16" in p.dtypes and p.family in ("ethos-u", "mcu", "cpu")))


def _op_labels(model: bytes) -> dict[int, str]:
    model_t = tm.load(model)
    sg = model_t.subgraphs[0]
    return {i: f"{tm.op_name(model_t, op)} '{_short(tm.tensor_name(sg.tensors[tm.ints(op.outputs)[0]]))}'"
            for i, op in enumerate(sg.operators or [])}


def _short(name: str) -> str:
    """The first of the ';'-joined names the converter gives a fused op's output."""
    return name.split(";")[0][:80]


def _op_macs(model: bytes) -> dict[int, int]:
    model_t = tm.load(model)
    sg = model_t.subgraphs[0]
    out = {}
    for i, op in enumerate(sg.operators or []):
        name = tm.op_name(model_t, op)
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"):
            w = sg.tensors[tm.ints(op.inputs)[1]].shape
            y = sg.tensors[tm.ints(op.outputs)[0]].shape
            per_out = int(np.prod(w[1:3])) if name == "DEPTHWISE_CONV_2D" else int(np.prod(w[1:]))
            out[i] = int(np.prod(y)) * per_out
    return out
