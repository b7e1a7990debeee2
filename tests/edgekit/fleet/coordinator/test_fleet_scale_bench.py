"""tools/bench/fleet_scale.py end to end at a size a test can afford: its last line is the
contract's JSON, and the figures hold (every device ingested at 1 Hz, nothing lost)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.host
BENCH = Path(__file__).resolve().parents[4] / "tools" / "bench" / "fleet_scale.py"
KEYS = {"devices", "msgs_per_s", "coordinator_cpu_cores", "registry_lag_p99_ms",
        "offload_overhead_p50_ms", "requests", "lost_requests"}


def test_fleet_scale_bench_2000_devices():
    proc = subprocess.run([sys.executable, str(BENCH), "--devices", "2000", "--seconds", "4"],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(result)
    assert KEYS <= set(result) and result["devices"] == 2000
    assert 1800 <= result["msgs_per_s"] <= 2200  # 1 Hz per device, all taken in
    assert result["devices_in_registry"] == 2001  # the devices and the bench's worker
    assert result["requests"] >= 30 and result["lost_requests"] == 0
    assert result["registry_lag_p99_ms"] < 1000 and result["coordinator_cpu_cores"] < 1.0
    assert 0 < result["offload_overhead_p50_ms"] < 20


def test_fleet_scale_bench_refuses_bad_arguments():
    proc = subprocess.run([sys.executable, str(BENCH), "--devices", "0"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1 and proc.stderr.strip().startswith("error: ")
    assert "Traceback" not in proc.stderr
