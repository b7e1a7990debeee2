"""`edgekit-agent bench MODEL`: warm latency of a model file with the agent's own runtime."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from edgekit_agent.errors import InputError, ModelError
from edgekit_agent.runtime.bench import bench_file, model_format

pytestmark = pytest.mark.host  # the example models come with the host package


def test_bench_json_times_both_formats(digits):
    for path, fmt in ((digits.tflite, "tflite"), (digits.onnx, "onnx")):
        proc = subprocess.run([sys.executable, "-m", "edgekit_agent.cli", "bench", str(path),
                               "--runs", "30", "--json"], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        assert doc["format"] == fmt and doc["runs"] == 30
        assert doc["machine"] == platform.machine()
        assert 0 < doc["p50_ms"] <= doc["p95_ms"] < 1000
        assert doc["model_bytes"] == path.stat().st_size


def test_bench_refuses_bad_input(tmp_path, digits):
    assert model_format(digits.tflite.read_bytes()) == "tflite"
    with pytest.raises(InputError, match="--runs"):
        bench_file(digits.tflite, runs=0)
    with pytest.raises(InputError, match="cannot read"):
        bench_file(tmp_path / "none.tflite")
    (tmp_path / "junk.bin").write_bytes(b"not a model at all")
    with pytest.raises(ModelError):
        bench_file(tmp_path / "junk.bin")
    proc = subprocess.run([sys.executable, "-m", "edgekit_agent.cli", "bench",
                           str(tmp_path / "junk.bin")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error: ")
