"""Registry ingest and persistence, the cost model, and the lean MQTT packet parser."""

from __future__ import annotations

import json
import time

import pytest

from edgekit.fleet.coordinator import ingest, routing
from edgekit.fleet.coordinator.registry import Registry
from edgekit_agent.errors import ConfigError, TransportError
from edgekit_agent.telemetry import schema

pytestmark = pytest.mark.host


def _telemetry(device: str, seq: int, **over) -> bytes:
    body = {"interval_s": 1.0, "mode": "eco", "queue": {},
            "inference": {"per_s": 3.0, "latency_ms": {"p50": 4.5}},
            "sensors": {"temperature_c": 71.0, "battery_pct": 40.0},
            "limits": {"offload_allowed": True}, "bundle": {"name": "digits", "id": "b1"},
            "offload": {"worker": True, "queue_depth": 2, "service_ms_p50": 3.0}, **over}
    return schema.encode(schema.telemetry_payload(device, seq, ts=time.time(), **body))


def test_registry_ingest_dedupe_forgery_and_restart(tmp_path):
    reg = Registry("lab", tmp_path / "state", flush_s=0.05)
    reg.start()
    t = "edgekit/v1/lab/{}/{}"
    reg.feed(t.format("a", "status"), schema.encode(schema.status_payload(
        "a", 1, "online", mode="performance", bundle={"name": "digits", "id": "b1"})), True)
    reg.feed(t.format("a", "telemetry"), _telemetry("a", 5))
    reg.feed(t.format("a", "telemetry"), _telemetry("a", 4, mode="old"))  # an older replay
    reg.feed(t.format("b", "telemetry"), _telemetry("a", 6))  # a speaks on b's topic: forged
    reg.feed(t.format("a", "telemetry"), b"{broken")
    reg.feed("edgekit/v1/other/a/telemetry", _telemetry("a", 7))  # another fleet
    reg.feed(t.format("a", "telemetry"), _telemetry("a", 8, sensors="hot"))  # wrong type
    row = reg.get("a").to_dict()
    assert row["telemetry_seq"] == 5  # the refused message changed nothing
    assert (row["online"], row["mode"], row["temperature_c"], row["latency_ms_p50"],
            row["worker"], row["queue_depth"], row["bundle_id"]) == (True, "eco", 71.0, 4.5,
                                                                       True, 2, "b1")
    assert reg.counts["duplicates"] == 1 and reg.counts["ignored"] == 4 and "b" not in reg.devices
    reg.feed(t.format("a", "status"), schema.encode(schema.status_payload("a", 0, "offline",
                                                                          will=True)))
    assert reg.online_count() == 0 and reg.workers() == []
    reg.stop()
    again = Registry("lab", tmp_path / "state")
    assert again.get("a").to_dict() == reg.get("a").to_dict()


def test_registry_refuses_absurd_ts_and_a_forged_seq_masks_at_most_three(tmp_path):
    reg = Registry("lab")
    t = "edgekit/v1/lab/a/telemetry"
    reg.feed(t, _telemetry("a", 5))
    reg.feed(t, schema.encode(schema.telemetry_payload("a", 6, ts=1e300, interval_s=1.0, mode="x",
                                                       queue={})))
    assert reg.counts["rejected"] == 1 and reg.get("a").last_seen < time.time() + 1
    reg.feed(t, _telemetry("a", 10**9, mode="forged"))  # beyond the jump limit: refused
    reg.feed(t, _telemetry("a", 500_000, mode="forged"))  # within it: taken ...
    modes = []
    for seq in (6, 7, 8, 9):  # ... until three real, increasing messages re-anchor
        reg.feed(t, _telemetry("a", seq, mode=f"m{seq}"))
        modes.append(reg.get("a").mode)
    assert modes == ["forged", "forged", "m8", "m9"]


def test_state_dir_that_cannot_be_used(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="--state"):
        Registry("lab", blocker / "sub")


def test_cost_model_prefers_fast_idle_unstressed_workers():
    m = routing.CostModel()
    fast = routing.WorkerView("coral", 2.0)
    slow = routing.WorkerView("mcu", 150.0)
    busy = routing.WorkerView("busy", 2.0, queue_depth=40)
    hot = routing.WorkerView("hot", 2.0, stressed=True)
    far = routing.WorkerView("far", 2.0, link=routing.Link(rtt_ms=80.0))
    assert routing.choose(m, [slow, busy, hot, far, fast], 256).worker == "coral"
    ranked = [d for d, _ in routing.choose(m, [slow, busy, hot, far, fast], 256).ranked]
    assert ranked.index("coral") < ranked.index("hot") < ranked.index("mcu")
    assert routing.cost_ms(m, busy, 256) > routing.cost_ms(m, far, 256)  # 40 queued x 2 ms
    big = 10_000_000  # 10 MB over the default 100 Mbit/s links: transfer dominates
    assert routing.cost_ms(m, fast, big) > 1500
    assert routing.choose(m, [], 256).worker is None
    assert routing.choose(m, [slow], 256, budget_ms=100).worker is None  # cannot make it in time
    assert routing.choose(m, [slow], 256, local_ms=10.0).worker is None  # local (stressed) wins
    assert routing.choose(m, [fast], 256, local_ms=10.0).worker == "coral"
    thrifty = routing.WorkerView("thrifty", 4.0, energy_j=0.01)
    hungry = routing.WorkerView("hungry", 2.0, energy_j=2.0)
    assert routing.choose(m, [thrifty, hungry], 256).worker == "hungry"  # latency only
    green = routing.CostModel(energy_weight_ms_per_j=10.0)
    assert routing.choose(green, [thrifty, hungry], 256).worker == "thrifty"  # energy-weighted


def test_lean_parser_handles_fragments_acks_and_bad_lengths():
    got = []
    packets = [ingest._packet(0x32, ingest._utf8("t/a") + b"\x00\x07" + b"x" * 300),  # QoS 1
               ingest._packet(0x31, ingest._utf8("t/b") + b"retained"),  # QoS 0, retained
               b"\x90\x03\x00\x01\x01",  # SUBACK
               ingest._packet(0x30, ingest._utf8("t/c") + json.dumps({"k": 1}).encode())]
    stream = b"".join(packets)
    buf, acks, others = bytearray(), [], []
    for i in range(0, len(stream), 7):  # arrives in 7-byte pieces
        buf += stream[i:i + 7]
        used, seen = ingest.parse(buf, lambda t, p, r: got.append((t, len(p), r)), acks)
        del buf[:used]
        others += seen
    assert got == [("t/a", 300, False), ("t/b", 8, True), ("t/c", 8, False)] and not buf
    assert acks == [b"\x40\x02\x00\x07"] and others == [9]
    with pytest.raises(TransportError, match="length"):
        ingest.parse(bytearray(b"\x30\xff\xff\xff\xff\x01"), lambda *a: None, [])
    with pytest.raises(TransportError, match="refused a subscription"):
        ingest.parse(bytearray(b"\x90\x03\x00\x01\x80"), lambda *a: None, [])


def test_history_is_bounded_and_only_accepted_telemetry_counts():
    reg = Registry("lab", history_points=5, history_devices=2)
    t = "edgekit/v1/lab/{}/telemetry"
    for seq in range(1, 9):
        latency = {"p50": float(seq)}
        reg.feed(t.format("a"), _telemetry("a", seq, inference={"latency_ms": latency}))
    reg.feed(t.format("a"), _telemetry("a", 8, mode="repeat"))  # a QoS 1 repeat: no point
    reg.feed(t.format("a"), _telemetry("a", 9, inference={"latency_ms": {"p50": "slow"}}))
    for device in ("b", "c"):
        reg.feed(t.format(device), _telemetry(device, 1))
    series = reg.series()
    assert sorted(series) == ["a", "b"]  # c is past history_devices
    assert series["a"]["latency_ms_p50"] == [5.0, 6.0, 7.0, 8.0, "slow"]  # the last 5 points
    assert series["a"]["mode"] == ["eco"] * 5 and series["b"]["temperature_c"] == [71.0]
    # the histogram took the 8 numeric latencies of a, and b's and c's 4.5 ms
    assert sum(reg.latency_counts) == 10 and reg.latency_sum_ms == sum(range(1, 9)) + 9.0
    assert reg.series(["c", "b"]) == {"b": series["b"]}
