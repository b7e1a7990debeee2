"""`edgekit demo --quick --json` end to end: its counts, and that no process outlives it.

The demo runs in a session of its own (its pid is its process group), so every process it
started (broker, agents, coordinator, deploy) is in that group unless it escaped on purpose; after
the demo exits, /proc must hold no process of that group. OTA and offload counts are asserted
when this build has ``edgekit deploy`` / the coordinator, and must be 0 otherwise.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgekit.demo.steps import (
    broker_choice,
    coordinator_available,
    deploy_available,
    last_json_object,
)

pytestmark = pytest.mark.host


def group_members(pgid: int) -> list[str]:
    """Processes of process group ``pgid`` still alive (zombies included: not reaped = left)."""
    left = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # exited while we looked
        name, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
        if int(rest[2]) == pgid:  # fields after the name: state, ppid, pgrp
            left.append(f"{stat.parent.name} {name} {rest[0]}")
    return left


def start_demo(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgekit.cli", "demo", "--quick", "--json", *args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"the demo did not finish in {timeout:g} s:\n{err[-3000:]}") from None


@pytest.mark.parametrize("broker_kind", ["auto", "embedded"])
def test_demo_quick_json_counts_and_no_process_left(broker_kind):
    t0 = time.monotonic()
    proc = start_demo("--broker-kind", broker_kind)
    out, err = finish(proc, 180)
    wall = time.monotonic() - t0
    assert proc.returncode == 0, err[-3000:]
    assert group_members(proc.pid) == [], "processes left behind by the demo"
    result = json.loads(out)
    assert result["families_packed"] == 4 and result["devices"] == 3, result
    assert result["mode_changes"] >= 1 and result["lost_requests"] == 0, result
    assert result["requests"] >= 100 and result["accuracy"] >= 0.9, result  # real digits images
    assert 0 < result["seconds"] <= wall < 180
    # Built-in steps: asserted only when this build has `edgekit deploy` / the coordinator.
    if deploy_available():
        assert result["ota_installed"] == 3, result
    else:
        assert result["ota_installed"] == 0 and "edgekit deploy: not available" in err
    if coordinator_available():
        assert result["offloaded_requests"] >= 1, result
    else:
        assert result["offloaded_requests"] == 0 and "coordinator: not available" in err
    expected = "amqtt on" if broker_kind == "embedded" else "mosquitto on"
    assert expected in err and "pi-03: mode performance -> eco: rule 'hot'" in err


def test_demo_stopped_by_sigterm_leaves_no_process():
    proc = start_demo()
    assert proc.stderr is not None
    seen = []
    deadline = time.monotonic() + 150
    for line in proc.stderr:  # wait until the broker and the devices run
        seen.append(line)
        if line.startswith("pi-03: online") or time.monotonic() > deadline:
            break
    assert any(line.startswith("pi-03: online") for line in seen), "".join(seen)[-2000:]
    proc.send_signal(signal.SIGTERM)
    _, err = finish(proc, 60)
    assert proc.returncode != 0, err[-3000:]
    assert group_members(proc.pid) == [], "processes left behind after SIGTERM"
    assert "Traceback" not in err, err[-2000:]


def test_broker_choice_follows_path(monkeypatch, cli_error, edgekit_cli):
    assert broker_choice("auto") == "mosquitto" and broker_choice("embedded") == "amqtt"
    monkeypatch.setenv("PATH", "/nonexistent")  # no mosquitto on PATH: the embedded broker
    assert broker_choice("auto") == "amqtt"
    proc = edgekit_cli("demo", "--quick", "--json", "--broker-kind", "mosquitto",
                       env={**os.environ, "PATH": "/nonexistent"})
    cli_error(proc, "--broker-kind mosquitto: no mosquitto on PATH", "apt-get install mosquitto")
    assert proc.stdout == ""


def test_last_json_object_reads_a_command_summary():
    text = 'resuming rollout r1\n{\n  "devices": ["a"],\n  "succeeded": ["a"]\n}\n'
    assert last_json_object(text) == {"devices": ["a"], "succeeded": ["a"]}
    assert last_json_object('{"a": 1}') == {"a": 1}
    assert last_json_object("no json here") == {} and last_json_object("x\n{broken") == {}
