"""The benchmark report and the README tables come from bench/results.json, never by hand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools" / "bench"))

import report  # noqa: E402

RESULTS = {
    "machine": {"cpu": "Test CPU", "cores": 2, "python": "3.11.7"},
    "benches": {
        "pack_vs_raw": {"ok": True, "command": "python tools/bench/pack_vs_raw.py", "seconds": 90.0,
                        "date": "2026-12-03 07:00 UTC",
                        "result": [{"model": "digits-onnx", "variant": "raw quantize_static",
                                    "format": "onnx", "size_ratio": 0.281, "sqnr_db": 26.5,
                                    "accuracy_drop": 0.0, "latency_ratio": 1.02}]},
        "fleet_scale@1000": {"ok": True, "command": "python tools/bench/fleet_scale.py", "seconds": 25,
                             "summary": {"devices": 1000, "msgs_per_s": 998.0,
                                         "registry_lag_p99_ms": 40.0}},
        "http_latency": {"ok": False, "command": "python tools/bench/http_latency.py", "seconds": 1,
                         "error": "exit 1"},
    },
}


def test_readme_blocks_are_rendered_from_results(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:pack_vs_raw:begin -->\nold 99.9\n<!-- bench:pack_vs_raw:end -->\n"
                      "mid\n<!-- bench:http_latency:begin -->\n<!-- bench:http_latency:end -->\n"
                      "<!-- bench:never_run:begin --><!-- bench:never_run:end -->\nend\n")
    report.update_readme(RESULTS, readme)
    text = readme.read_text()
    assert "old 99.9" not in text and text.startswith("intro\n") and text.endswith("end\n")
    assert "| digits-onnx | raw quantize_static | onnx | 0.281 | 26.5 | 0 | 1.02 |" in text
    assert "Measured 2026-12-03 07:00 UTC on Test CPU, 2 cores" in text
    assert "**did not complete** (exit 1)" in text and "`never_run` has not been run yet." in text
    once = readme.read_text()
    report.update_readme(RESULTS, readme)  # idempotent
    assert readme.read_text() == once


def test_report_has_every_bench_and_plots(tmp_path):
    path = report.write_report(RESULTS, tmp_path)
    text = path.read_text()
    for name in RESULTS["benches"]:
        assert f"## {name}" in text
    assert "| 1,000 | 998 |" in text  # the fleet row: devices, msgs_per_s, ...
    plots = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert plots == ["fleet_scale.png", "pack_vs_raw_size_vs_sqnr.png"]
    assert all((tmp_path / "plots" / p).stat().st_size > 5000 for p in plots)


def test_run_all_rejects_unknown_names(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "tools/bench/run_all.py"), "--only", "nope",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown benchmark(s) ['nope']" in proc.stderr
