"""Acceptance: three agent subprocesses with simulated hardware (Pi 4 CPU, Coral-class, MCU-class)
and a coordinator on a real Mosquitto. The overheating Pi 4's requests go to the fastest worker;
killing that worker mid-load loses no request; the registry shows it offline within its
keepalive and is rebuilt from retained messages by a fresh coordinator."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time

import numpy as np
import pytest

from edgekit_agent.service.agent import Agent

from .conftest import HOT, HOT_OFFLOAD_POLICY, wait_until

pytestmark = pytest.mark.host
REQUESTS = 300
KILL_AFTER = 100
KEEPALIVE_S = 5


def _fleet_ready(coordinator, names: set[str]) -> bool:
    rows = coordinator.devices()
    return (names <= set(rows) and all(rows[n]["online"] and rows[n]["service_ms_p50"]
                                       for n in names) and rows["pi4"]["mode"] == "hot")


def test_hot_device_offloads_to_fastest_and_loses_nothing(fleet_agent, start_coordinator, tmp_path,
                                                          power_bundle, keypair):
    state = tmp_path / "state"
    coordinator = start_coordinator(state=state)
    pi4 = fleet_agent("pi4", "pi4", sensors=HOT, policy=HOT_OFFLOAD_POLICY, enabled=True,
                      deadline_ms=1000.0)
    coral = fleet_agent("coral", "coral")
    fleet_agent("mcu", "mcu")
    wait_until(lambda: _fleet_ready(coordinator, {"pi4", "coral", "mcu"}), 40, "a ready fleet")

    rng = np.random.default_rng(0)
    images = [rng.random((1, 8, 8, 1), dtype=np.float32) for _ in range(8)]
    with Agent(power_bundle, public_key=keypair[1]) as reference:
        expected = [reference.infer({"image": im})["logits"] for im in images]

    results: list[tuple[int, float, float, str]] = []  # (index, started, finished, served_by)
    lock, cursor = threading.Lock(), iter(range(REQUESTS))
    killed_at: list[float] = []

    def client() -> None:
        while True:
            with lock:
                i = next(cursor, None)
            if i is None:
                return
            started = time.monotonic()
            reply = pi4.infer(images[i % 8].tolist())
            np.testing.assert_allclose(reply["outputs"]["logits"], expected[i % 8], atol=1e-4)
            with lock:
                results.append((i, started, time.monotonic(), reply["served_by"]))
                if len(results) == KILL_AFTER:
                    coral.process.stop(signal.SIGKILL)  # mid-load, no goodbye: only the last will
                    killed_at.append(time.monotonic())

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    offline_seen = wait_until(lambda: not coordinator.devices()["coral"]["online"] and
                              time.monotonic(), 30, "coral offline in the registry")
    for t in threads:
        t.join(120)

    served = [r[3] for r in sorted(results)]
    print(f"served: { {s: served.count(s) for s in set(served)} }, coral offline in the registry "
          f"{offline_seen - killed_at[0]:.2f} s after the kill")
    assert len(results) == REQUESTS  # counted replies == sent requests: nothing lost
    before = [s for _, _, done, s in results if done < killed_at[0]]
    assert before.count("coral") >= 0.95 * len(before), before  # the fastest worker
    # Requests started once the registry knew coral was gone never went to it.
    after = [s for _, started, _, s in results if started > offline_seen]
    assert after and "coral" not in after, after
    assert set(served) <= {"coral", "mcu", "pi4"}
    assert offline_seen - killed_at[0] <= 1.5 * KEEPALIVE_S + 2.0  # the last will, in time

    metrics = coordinator.get("/metrics")
    assert "edgekit_devices_online 2.0" in metrics
    stats = coordinator.get("/api/stats")["coordinator"]
    assert stats["dispatched"] >= before.count("coral") and stats["rejected"] == 0

    # The registry survives the coordinator: SQLite in --state, and retained status for a new one.
    coordinator.stop()
    with sqlite3.connect(state / "registry.sqlite") as db:
        stored = {row[0] for row in db.execute("SELECT device FROM devices")}
    assert stored == {"pi4", "coral", "mcu"}
    fresh = start_coordinator(state=tmp_path / "fresh-state")
    rows = wait_until(lambda: r if len(r := fresh.devices()) == 3 else None, 10,
                      "a registry rebuilt from retained status")
    assert {d: r["online"] for d, r in rows.items()} == {"pi4": True, "coral": False, "mcu": True}
    assert rows["pi4"]["bundle"] == "digits" and rows["mcu"]["worker"] is True
    assert rows["pi4"]["target"] == "rpi4"  # the bundle's target profile


def test_frozen_agent_shows_offline_within_its_keepalive(fleet_agent, start_coordinator):
    """A device that stops answering (here: SIGSTOP, its socket left open) goes offline when the
    broker's keepalive timer fires the last will, and comes back online when it resumes."""
    coordinator = start_coordinator()
    mcu = fleet_agent("mcu", "mcu")
    wait_until(lambda: coordinator.devices().get("mcu", {}).get("online"), 30, "mcu online")
    frozen = time.monotonic()
    mcu.process.proc.send_signal(signal.SIGSTOP)
    try:
        # 1.5 x keepalive by the MQTT spec, plus the broker's timer granularity under load.
        wait_until(lambda: not coordinator.devices()["mcu"]["online"], 1.5 * KEEPALIVE_S + 6,
                   "the last will of a frozen agent")
        offline_after = time.monotonic() - frozen
    finally:
        mcu.process.proc.send_signal(signal.SIGCONT)
    print(f"frozen agent offline after {offline_after:.2f} s (keepalive {KEEPALIVE_S} s)")
    assert offline_after >= KEEPALIVE_S  # the broker waited for the keepalive, as it should
    wait_until(lambda: coordinator.devices()["mcu"]["online"], 20, "mcu back online")
    metrics = coordinator.get("/metrics")
    assert "edgekit_devices_online 1.0" in metrics
