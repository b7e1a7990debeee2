"""Run every benchmark, collect their JSON in bench/results.json, write the report and README tables.

    python tools/bench/run_all.py [--quick] [--only NAME ...] [--render-only] [--no-readme]

Each benchmark is its own script in tools/bench/ that runs edgekit and the plain library it wraps
side by side and writes a JSON file (``--out``); this runner starts them one after another (they
time things: running two at once would skew both), records how each went, and then renders
``bench/report.md`` (tables and matplotlib plots in ``bench/plots/``) and the README's benchmark
tables, between ``<!-- bench:NAME:begin -->`` and ``<!-- bench:NAME:end -->`` markers, from
``bench/results.json`` alone — nothing in those tables is typed by hand. A benchmark that fails is
recorded with its error and the others still run; the exit code is then 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools" / "bench"))

import report  # noqa: E402  (tools/bench/report.py)

OUT = REPO / "bench"


@dataclass(frozen=True)
class Bench:
    name: str
    args: tuple[str, ...] = ()
    quick: tuple[str, ...] = ()  # extra arguments for --quick
    out_dir: str = ""  # the script takes a folder for --out and writes this file in it

    @property
    def script(self) -> Path:
        return REPO / "tools" / "bench" / f"{self.name.split('@')[0]}.py"


BENCHES = (
    Bench("pack_example"),
    Bench("pack_example@stm32h7", args=("--target", "stm32h7", "--variants", "1")),
    Bench("pack_vs_raw"),
    Bench("real_models", quick=("--model", "face_detector", "--model", "ocr_direction_cls"),
          out_dir="real_models.json"),
    Bench("streaming_vad"),
    Bench("agent_overhead", quick=("--calls", "300", "--small-calls", "1000")),
    Bench("http_latency", quick=("--calls", "300", "--half-open", "500")),
    Bench("serial_throughput", quick=("--runs", "1", "--no-noisy")),
    Bench("fleet_scale@1000", args=("--devices", "1000", "--seconds", "20"),
          quick=("--seconds", "8")),
    Bench("fleet_scale@10000", args=("--devices", "10000", "--seconds", "30"),
          quick=("--seconds", "10")),
    Bench("ota_transfer", quick=("--size-mb", "2", "--chunk-kib", "64")),
)


def machine() -> dict[str, object]:
    cpu = next((line.split(":", 1)[1].strip() for line in _lines("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    return {"platform": platform.platform(), "machine": platform.machine(), "cpu": cpu,
            "cores": os.cpu_count(), "python": platform.python_version()}


def _lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def run(bench: Bench, quick: bool, raw_dir: Path) -> dict[str, object]:
    out = raw_dir / bench.name.replace("@", "_")
    out = out / bench.out_dir if bench.out_dir else out.with_suffix(".json")
    if not bench.script.exists():
        return {"ok": False, "error": f"{bench.script.name} is not in this checkout"}
    cmd = [sys.executable, str(bench.script), *bench.args, *(bench.quick if quick else ()),
           "--out", str(out.parent if bench.out_dir else out)]
    print(f"==> {bench.name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=None, text=True)
    shown = ["python", *cmd[1:-2]]  # without the temporary --out
    record: dict[str, object] = {"command": " ".join(shown).replace(str(REPO) + "/", ""),
                                 "seconds": round(time.monotonic() - start, 1),
                                 "ok": proc.returncode == 0, "quick": quick,
                                 "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    last = proc.stdout.strip().splitlines()[-1:] or [""]
    try:
        record["summary"] = json.loads(last[0])
    except ValueError:
        record["summary"] = None
    if proc.returncode != 0:
        record["error"] = f"exit {proc.returncode}"
    if out.exists():
        record["result"] = json.loads(out.read_text())
    return record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter runs (figures are noisier)")
    ap.add_argument("--only", action="append", metavar="NAME", help="run only these (repeat)")
    ap.add_argument("--render-only", action="store_true", help="re-render from bench/results.json")
    ap.add_argument("--no-readme", action="store_true", help="leave README.md alone")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    results_file = args.out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {"benches": {}}
    if not args.render_only:
        unknown = set(args.only or ()) - {b.name for b in BENCHES}
        if unknown:
            ap.error(f"unknown benchmark(s) {sorted(unknown)}; known: {[b.name for b in BENCHES]}")
        args.out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as raw:
            for bench in BENCHES:
                if not args.only or bench.name in args.only:
                    results["benches"][bench.name] = run(bench, args.quick, Path(raw))
        results.update(machine=machine())
        results_file.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    report.write_report(results, args.out)
    if not args.no_readme:
        report.update_readme(results, REPO / "README.md")
    failed = [name for name, r in results["benches"].items() if not r.get("ok")]
    print(json.dumps({"results": str(results_file), "benches": len(results["benches"]),
                      "failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
