"""Human-readable renderings of pack results and bundle manifests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgekit_agent.bundle.reader import Bundle

from . import ui

_SOURCE_MARK = {"estimated": " est", "measured-device": " dev"}


def _sqnr(f: Any) -> str:
    """The lowest output SQNR, and the one judged before final activations when it differs."""
    pre = f.decision_sqnr_db
    return f"{f.min_sqnr_db:.1f}" + (f" (pre-act {pre:.1f})" if pre != f.min_sqnr_db else "")


def render_candidates(candidates: Sequence[Any], float_size: int) -> str:
    rows = []
    for c in candidates:
        f = c.fidelity
        size = len(c.shipped) if c.model else None
        rows.append((
            c.recipe.name, c.format, ui.human_bytes(size),
            f"{size / float_size:.2f}x" if size else None,
            f"{c.compressed_bytes / float_size:.2f}x" if size else None,
            _sqnr(f) if f else None,
            f"{f.top1_agreement:.3f}" if f and f.top1_agreement is not None else None,
            f"{f.accuracy_drop * 100:+.2f}" if f and f.accuracy_drop is not None else None,
            f"{c.latency.ratio:.2f}x{_SOURCE_MARK.get(c.latency.source, '')}" if c.latency
            else None,
            "yes" if c.fits else "no",
            c.rejected[:90] or None))
    return ui.table(["recipe", "format", "size", "vs float", "zipped", "SQNR dB", "top1 agree",
                     "acc drop pt", "latency", "fits", "why not"], rows)


def _signed(bundle: Bundle) -> str:
    if bundle.signature_checked:
        return f"yes, verified key {bundle.key_id}"
    return "yes (not checked: no --key)" if bundle.signed else "no"


def _yes_no(value: object) -> str:
    return "-" if value is None else "yes" if value else "no"


def render_manifest(bundle: Bundle) -> str:
    m = bundle.manifest
    lines = [
        f"bundle   {bundle.path}  ({m.name} v{m.version}, schema {m.schema})",
        f"target   {m.target} ({m.family})",
        f"signed   {_signed(bundle)}; anti-rollback security_version {m.counter}",
        f"source   {m.source.get('path')} {m.source.get('format')} "
        f"{ui.human_bytes(m.source.get('size_bytes'))}",
    ]
    rows = []
    for v in m.all_variants:
        fid = v.fidelity.to_dict() if v.fidelity else {}
        rep = v.target_report.to_dict() if v.target_report else {}
        rows.append((v.name, v.model.format, ui.human_bytes(v.model.size_bytes),
                     ui.human_bytes(v.model.compressed_bytes), fid.get("min_sqnr_db"),
                     fid.get("accuracy"), fid.get("accuracy_drop"), v.latency_ms,
                     v.latency_source or "-", rep.get("arena_bytes"),
                     len(rep.get("ops_on_accelerator", [])), len(rep.get("ops_on_cpu", [])),
                     _yes_no(rep.get("fits"))))
    lines += ["", ui.table(["variant", "format", "size", "zipped", "SQNR dB", "accuracy", "drop",
                            "p50 ms", "p50 from", "arena B", "ops accel", "ops cpu", "fits"],
                           rows)]
    io = [
        f"  in  {t.name} {list(t.shape)} {t.dtype}"
        + (f" scale={t.scale:.6g} zp={t.zero_point}" if t.scale else "")
        for t in m.primary.inputs
    ]
    io += [
        f"  out {t.name} {list(t.shape)} {t.dtype}"
        + (f" scale={t.scale:.6g} zp={t.zero_point}" if t.scale else "")
        for t in m.primary.outputs
    ]
    lines += ["", "tensors", *io, "", "recipe", *(f"  {_step_line(s.to_dict())}" for s in m.primary.recipe)]
    lines += [f"note     {n}" for n in m.notes]
    return "\n".join(lines)


def _step_line(step: dict[str, Any]) -> str:
    if "detail" in step:
        return f"{step['step']}: {step['detail']}"
    facts = ", ".join(f"{k}={v}" for k, v in sorted(step.items())
                      if k not in ("step", "name", "description") and v not in (0, 0.0, False,
                                                                                None, [], ""))
    return f"{step['step']}: {step.get('name', '')} ({facts})"
