"""Render bench/results.json: bench/report.md with plots, and the README's benchmark tables.

Only what a benchmark measured goes into a table; a benchmark that did not run says so.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

Rows = list[dict[str, Any]]

PACK_COLUMNS = ("model", "variant", "format", "size_ratio", "sqnr_db", "accuracy_drop",
                "latency_ratio")


def fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|")


def markdown_table(columns: tuple[str, ...] | list[str], rows: Rows) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _scalars(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if isinstance(v, (int, float, str, bool)) or v is None}


def _rows_of(result: Any) -> Rows:
    if isinstance(result, list):
        return [r for r in result if isinstance(r, dict)]
    if isinstance(result, dict) and isinstance(result.get("rows"), list):
        return [r for r in result["rows"] if isinstance(r, dict)]
    return []


def _generic(record: dict[str, Any]) -> str:
    rows = _rows_of(record.get("result"))
    if rows:
        columns = list(dict.fromkeys(k for r in rows for k in _scalars(r)))[:9]
        return markdown_table(columns, rows)
    summary = record.get("summary") or _scalars(record.get("result") or {})
    return markdown_table(("figure", "value"), [{"figure": k, "value": v}
                                                for k, v in _scalars(summary).items()])


def _pack(record: dict[str, Any]) -> str:
    return markdown_table(PACK_COLUMNS, _rows_of(record.get("result")))


def _overhead(record: dict[str, Any]) -> str:
    models = (record.get("result") or {}).get("models", {})
    rows = [{"model": name, "direct p50 ms": m.get("direct_ms", {}).get("p50"),
             "agent p50 ms": m.get("agent_ms", {}).get("p50"),
             "overhead p50": m.get("overhead_ratio_p50"), "overhead µs p50": m.get("overhead_us_p50")}
            for name, m in models.items()]
    return markdown_table(("model", "direct p50 ms", "agent p50 ms", "overhead p50",
                           "overhead µs p50"), rows)


FLEET_COLUMNS = ("devices", "msgs_per_s", "coordinator_cpu_cores", "registry_lag_p99_ms",
                 "offload_overhead_p50_ms", "requests", "lost_requests")


def _fleet(record: dict[str, Any]) -> str:
    """The issue's figures in one row (goal at 10,000 devices: <= 1 core, lag p99 <= 1 s,
    overhead <= 5 ms, 0 lost); the rest stay in bench/results.json."""
    return markdown_table(FLEET_COLUMNS, [record.get("summary") or record.get("result") or {}])


def _runs(key: str) -> Callable[[dict[str, Any]], str]:
    def render(record: dict[str, Any]) -> str:
        rows = [r for r in (record.get("result") or {}).get(key, []) if isinstance(r, dict)]
        columns = list(dict.fromkeys(k for r in rows for k in _scalars(r)))[:9]
        return markdown_table(columns, rows)
    return render


def _transcript(record: dict[str, Any]) -> str:
    result = record.get("result") or {}
    return f"```\n$ {result.get('command', '')}\n{str(result.get('text', '')).rstrip()}\n```"


RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "pack_vs_raw": _pack, "agent_overhead": _overhead, "pack_example": _transcript,
    "fleet_scale": _fleet, "ota_transfer": _runs("runs"), "streaming_vad": _runs("results"),
}


def section(name: str, record: dict[str, Any]) -> str:
    head = f"`{record.get('command', name)}` — {record.get('seconds', '?')} s"
    if not record.get("ok"):
        return f"{head}: **did not complete** ({record.get('error', 'no result')})"
    if "result" not in record and not record.get("summary"):
        return f"{head}: no JSON result"
    render = RENDERERS.get(name.split("@")[0], _generic)
    return f"{head}\n\n{render(record)}"


def stamp(results: dict[str, Any], record: dict[str, Any] | None = None) -> str:
    m = results.get("machine", {})
    record = record or {}
    quick = " (--quick: shorter runs)" if record.get("quick") else ""
    return (f"Measured {record.get('date', '?')} on {m.get('cpu', '?')}, {m.get('cores', '?')} "
            f"cores, Python {m.get('python', '?')}{quick}.")


def write_report(results: dict[str, Any], out: Path) -> Path:
    plots = write_plots(results, out / "plots")
    parts = ["# edgekit benchmarks", "", "Written by `python tools/bench/run_all.py` from "
             "`bench/results.json`.", ""]
    for name, record in results.get("benches", {}).items():
        parts += [f"## {name}", "", stamp(results, record), "", section(name, record), ""]
    parts += [f"![{p.stem}](plots/{p.name})" for p in plots]
    path = out / "report.md"
    path.write_text("\n".join(parts) + "\n")
    return path


def update_readme(results: dict[str, Any], readme: Path) -> None:
    """Replace each ``<!-- bench:NAME:begin -->`` … ``end`` block with the rendered section."""
    text = readme.read_text()

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        record = results.get("benches", {}).get(name)
        body = (f"{stamp(results, record)}\n\n{section(name, record)}" if record
                else f"`{name}` has not been run yet.")
        return f"<!-- bench:{name}:begin -->\n{body}\n<!-- bench:{name}:end -->"

    new = re.sub(r"<!-- bench:([\w@.-]+):begin -->.*?<!-- bench:\1:end -->", fill, text, flags=re.S)
    if new != text:
        readme.write_text(new)


def write_plots(results: dict[str, Any], folder: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the report still has every table
        return []
    folder.mkdir(parents=True, exist_ok=True)
    benches = results.get("benches", {})
    made = []
    for name in ("pack_vs_raw", "real_models"):
        rows = [r for r in _rows_of(benches.get(name, {}).get("result"))
                if isinstance(r.get("size_ratio"), (int, float)) and isinstance(r.get("sqnr_db"), (int, float))]
        if rows:
            made.append(_size_vs_fidelity(plt, rows, folder / f"{name}_size_vs_sqnr.png", name))
    fleet = sorted((r["summary"]["devices"], r["summary"]) for n, r in benches.items()
                   if n.startswith("fleet_scale") and isinstance(r.get("summary"), dict)
                   and "devices" in r["summary"])
    if fleet:
        made.append(_fleet_curve(plt, fleet, folder / "fleet_scale.png"))
    overhead = (benches.get("agent_overhead", {}).get("result") or {}).get("models")
    if overhead:
        made.append(_latency_bars(plt, overhead, folder / "agent_latency.png"))
    return made


def _size_vs_fidelity(plt: Any, rows: Rows, path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for model in dict.fromkeys(r.get("model") for r in rows):
        pts = [r for r in rows if r.get("model") == model]
        ax.scatter([r["size_ratio"] for r in pts], [min(r["sqnr_db"], 80) for r in pts], label=model)
    ax.set(xlabel="size vs float model", ylabel="SQNR dB (capped at 80)", title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fleet_curve(plt: Any, points: list[tuple[int, dict[str, Any]]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([d for d, _ in points], [s.get("msgs_per_s", 0) for _, s in points], "o-", label="msgs/s")
    ax2 = ax.twinx()
    ax2.plot([d for d, _ in points], [s.get("registry_lag_p99_ms", 0) for _, s in points], "s--",
             color="tab:red", label="registry lag p99 ms")
    ax.set(xscale="log", xlabel="simulated devices", ylabel="messages/s", title="fleet scale")
    ax2.set_ylabel("lag p99 ms")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _latency_bars(plt: Any, models: dict[str, Any], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    names = list(models)
    for i, side in enumerate(("direct", "agent")):
        p50 = [models[n].get(f"{side}_ms", {}).get("p50", 0) for n in names]
        p99 = [models[n].get(f"{side}_ms", {}).get("p99", 0) for n in names]
        xs = [j + i * 0.4 for j in range(len(names))]
        ax.bar(xs, p50, width=0.38, label=f"{side} p50")
        ax.scatter(xs, p99, marker="_", s=200, color="black")
    ax.set_xticks([j + 0.2 for j in range(len(names))], names)
    ax.set(yscale="log", ylabel="ms per call (bar p50, tick p99)", title="agent vs direct runtime call")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
