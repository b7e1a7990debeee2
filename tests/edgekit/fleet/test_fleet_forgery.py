"""Issue 10, finding 6 (receivers): forged status/telemetry on a broker without ACLs cannot take
a device over in `edgekit fleet status`: absurd ``ts`` and ``seq`` are refused, a forged high
``seq`` masks at most a few real messages, ghosts retained by others turn stale, and "seen
-1e+300 s ago" cannot happen."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from edgekit.fleet.status import FleetView
from edgekit_agent.telemetry import schema
from edgekit_agent.telemetry.receiver import Plausibility, SeqTracker

pytestmark = pytest.mark.host
T = 1.7e9
TOPIC = schema.Topics("lab", "a")


def _telemetry(seq: int, temp: float, ts: float = T, device: str = "a") -> bytes:
    return schema.encode(schema.telemetry_payload(device, seq, ts=ts, sensors={"temperature_c": temp},
                                                  interval_s=1.0, mode="eco", inference={}, queue={}))


def _status(state: str, ts: float, device: str = "a", seq: int = 1) -> bytes:
    return schema.encode(schema.status_payload(device, seq, state, ts=ts))


def test_a_forged_high_seq_masks_at_most_three_real_messages():
    view = FleetView()
    for seq in (1, 2):
        view.feed(TOPIC.telemetry, _telemetry(seq, 30.0 + seq), now=T)
    view.feed(TOPIC.telemetry, _telemetry(10**9, 99.0), now=T)  # a jump beyond 1e6: refused
    assert view.rows(now=T)[0]["temperature_c"] == 32.0 and view.rejected == 1
    view.feed(TOPIC.telemetry, _telemetry(900_000, 99.0), now=T)  # within the jump: shown ...
    assert view.rows(now=T)[0]["temperature_c"] == 99.0
    shown = []
    for seq in range(3, 8):  # ... until three real, increasing messages re-anchor the sequence
        view.feed(TOPIC.telemetry, _telemetry(seq, 30.0 + seq), now=T)
        shown.append(view.rows(now=T)[0]["temperature_c"])
    assert shown == [99.0, 99.0, 35.0, 36.0, 37.0]


def test_seq_tracker_drops_repeats_and_replays_without_resyncing_on_them():
    t = SeqTracker()
    assert [t.accept(s) for s in (5, 6, 6, 5, 7, 4, 4, 4, 8)] == [True, True, False, False, True,
                                                                   False, False, False, True]
    assert t.last == 8 and not t.accept(8 + 2_000_000)


@pytest.mark.parametrize("ts, why", [
    (1e300, "in the future"), (T + 301.0, "in the future"), (float(T - 31 * 86400), "old"),
    (1.0, "not a plausible Unix time"), (-5.0, "not a plausible Unix time")])
def test_absurd_timestamps_are_refused(ts, why):
    assert why in Plausibility().ts_problem(ts, T)
    view = FleetView()
    view.feed(TOPIC.status, _status("online", ts), now=T, retained=True)
    view.feed(TOPIC.telemetry, _telemetry(1, 50.0, ts=ts), now=T)
    assert view.rows(now=T) == [] and view.rejected == 2


def test_last_seen_is_never_negative_and_ghosts_go_stale():
    view = FleetView()
    view.feed(TOPIC.status, _status("online", T + 200.0), now=T, retained=True)  # clock ahead, in skew
    assert view.rows(now=T)[0]["last_seen_s"] == 0.0
    ghost = schema.Topics("lab", "ghost")
    view.feed(ghost.status, _status("online", T - 3600.0, device="ghost"), now=T, retained=True)
    rows = {r["device"]: r for r in view.rows(now=T)}
    assert rows["ghost"]["state"] == "stale" and rows["a"]["state"] == "online"
    # a real device keeps confirming: its live messages; without them it goes stale as well
    view.feed(TOPIC.telemetry, _telemetry(2, 30.0, ts=T + 100), now=T + 100)
    assert view.rows(now=T + 250)[0]["state"] == "online"
    assert view.rows(now=T + 100 + 181)[0]["state"] == "stale"


def test_a_payload_naming_another_device_is_refused():
    view = FleetView()
    view.feed(TOPIC.telemetry, _telemetry(1, 30.0, device="b"), now=T)
    assert view.rows(now=T) == [] and view.rejected == 1


def test_fleet_status_shows_the_real_device_despite_forgeries(broker, collect, agent_config,
                                                             start_agent):
    sub = collect(broker, f"{schema.ROOT}/lab/dev1/telemetry")
    start_agent(agent_config(broker))  # its simulated board warms from 29 towards ~90 °C
    sub.wait_for(lambda m: True, 60, "dev1 telemetry")
    now = time.time()
    dev1, ghost, future = (schema.Topics("lab", d) for d in ("dev1", "ghost-1", "ghost-2"))
    for topic, payload in ((ghost.status, _status("online", now - 3600, device="ghost-1")),
                           (future.status, _status("online", 1e300, device="ghost-2"))):
        sub.client.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    watch = subprocess.Popen([sys.executable, "-m", "edgekit.cli", "fleet", "status", "--broker",
                              broker.url, "--fleet", "lab", "--json", "--wait", "4"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.0)  # the CLI is subscribed: these arrive live, among the real messages
        for seq, ts, temp in ((10**9, time.time(), 99.0), (1, 1e300, 98.0)):
            sub.client.publish(dev1.telemetry, schema.encode(schema.telemetry_payload(
                "dev1", seq, ts=ts, sensors={"temperature_c": temp}, inference={}, queue={},
                interval_s=1.0, mode="forged")), qos=1).wait_for_publish(5)
        out, err = watch.communicate(timeout=60)
        assert watch.returncode == 0, err
        rows = {r["device"]: r for r in json.loads(out)}
        assert rows["dev1"]["state"] == "online" and rows["dev1"]["mode"] != "forged"
        assert 20.0 < rows["dev1"]["temperature_c"] < 95.0
        assert rows["dev1"]["temperature_c"] not in (98.0, 99.0)  # the forged figures
        assert rows["ghost-1"]["state"] == "stale" and "ghost-2" not in rows
        assert all(r["last_seen_s"] is None or r["last_seen_s"] >= 0 for r in rows.values())
    finally:
        watch.kill()
        for t in (ghost, future):
            sub.client.publish(t.status, b"", qos=1, retain=True).wait_for_publish(5)
