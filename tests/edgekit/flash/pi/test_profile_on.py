"""`edgekit pack --profile-on ssh://…`: candidates timed on a real board through its own
`edgekit-agent bench`, over the flash ssh transport (a real OpenSSH server on loopback)."""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys

import pytest

import edgekit
from edgekit.errors import ConfigError, FlashError
from edgekit.flash.bench_ssh import bench_on_device, parse_profile_uri
from edgekit_agent.bundle.reader import open_bundle

# the agent under test, by path: the board's login PATH may hold another installation
AGENT = shutil.which("edgekit-agent") or "edgekit-agent"


def board(sshd) -> str:
    return f"ssh://{sshd.user}@{sshd.host}:{sshd.port}"


def test_bench_on_device_runs_the_agents_benchmark(sshd, monkeypatch, digits):
    monkeypatch.setenv("EDGEKIT_SSH", sshd.env()["EDGEKIT_SSH"])
    got = bench_on_device(parse_profile_uri(board(sshd), agent_cmd=AGENT),
                          digits.tflite.read_bytes(), runs=20)
    assert got.runs == 20 and got.runtime == "tflite" and got.machine == platform.machine()
    assert 0 < got.p50_ms <= got.p95_ms < 100


def test_pack_profile_on_labels_every_latency_measured_device(tmp_path, sshd, monkeypatch,
                                                               digits):
    monkeypatch.setenv("EDGEKIT_SSH", sshd.env()["EDGEKIT_SSH"])
    out = tmp_path / "d.ekb"
    result = edgekit.pack(str(digits.tflite), "rpi4", out, calib=digits.calib,
                          eval_data=digits.eval, labels=digits.labels, profile_on=board(sshd), agent_cmd=AGENT)
    m = open_bundle(out).manifest
    assert m.primary.latency_source == "measured-device"
    assert m.source["latency_source"] == "measured-device" and m.source["latency_ms"] > 0
    timed = [c for c in result.candidates if c.latency]
    assert len(timed) >= 2 and all(c.latency.source == "measured-device" for c in timed)
    assert " dev" in result.render()
    # nothing is left behind on the device
    leftovers = subprocess.run([*sshd.env()["EDGEKIT_SSH"].split(), "-p", str(sshd.port), "--",
                                sshd.host, "ls ${TMPDIR:-/tmp} | grep -c edgekit-bench || true"],
                               capture_output=True, text=True, timeout=30)
    assert leftovers.stdout.strip() == "0"


@pytest.mark.parametrize("uri, why", [("ssh://", "expected ssh://"), ("http://pi", "expected ssh://"),
                                      ("ssh://pi:99999", "port must be a number")])
def test_bad_profile_uri_is_refused_before_any_work(tmp_path, uri, why, digits):
    proc = subprocess.run([sys.executable, "-m", "edgekit.cli", "pack", str(digits.tflite),
                           "--target", "rpi4", "-o", str(tmp_path / "x.ekb"), "--calib",
                           str(digits.calib), "--profile-on", uri],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and why in proc.stderr
    assert not (tmp_path / "x.ekb").exists()


def test_unreachable_board_and_missing_agent_are_one_line_errors(tmp_path, sshd, monkeypatch,
                                                                 unused_port, digits):
    env = sshd.env()
    proc = subprocess.run([sys.executable, "-m", "edgekit.cli", "pack", str(digits.tflite),
                           "--target", "rpi4", "-o", str(tmp_path / "x.ekb"), "--calib",
                           str(digits.calib), "--profile-on",
                           f"ssh://{sshd.user}@127.0.0.1:{unused_port}"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1 and proc.stderr.startswith("error: ssh ")
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "x.ekb").exists()
    monkeypatch.setenv("EDGEKIT_SSH", env["EDGEKIT_SSH"])
    target = parse_profile_uri(board(sshd), agent_cmd="no-such-agent")
    with pytest.raises(FlashError, match="'no-such-agent' not found on the device"):
        bench_on_device(target, digits.tflite.read_bytes())


def test_profile_on_is_for_cpu_targets(tmp_path, sshd, monkeypatch, digits):
    monkeypatch.setenv("EDGEKIT_SSH", sshd.env()["EDGEKIT_SSH"])
    with pytest.raises(ConfigError, match="--profile-on"):
        edgekit.pack(str(digits.tflite), "stm32h7", tmp_path / "m.ekb", calib=digits.calib,
                     profile_on=board(sshd), agent_cmd=AGENT)
