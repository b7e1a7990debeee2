"""Store-and-forward end to end: the broker goes away for 20 s while the agent runs under load."""

from __future__ import annotations

import json
import time
import urllib.request

from edgekit_agent.telemetry import schema

DEVICE = schema.Topics("lab", "dev1")
GAP_S = 20.0
INTERVAL_S = 0.5
SINGLE_MODE = '[modes.normal]\n'


def test_broker_outage_loses_nothing_and_replays_in_order(dedupe, own_broker, collect, agent_config, start_agent):
    sub = collect(own_broker, f"{schema.ROOT}/lab/dev1/#", client_id="outage-collector")  # persistent session
    agent = start_agent(agent_config(own_broker, policy=SINGLE_MODE, load={"rate": 100.0},
                                     telemetry={"interval_s": INTERVAL_S}, sensors={"speed": 1.0}))
    sub.wait_for(lambda m: m.topic == DEVICE.telemetry and len(dedupe(sub.of("telemetry"))) >= 3, 30,
                 "3 telemetry messages before the outage")

    start = sub.wait_for(lambda m: m.topic == DEVICE.event and m.payload["kind"] == "start", 10, "start")
    health_url = start.payload["data"]["http"] + "/v1/health"
    assert _mqtt_health(health_url)["connected"] is True

    stopped_at = time.time()
    own_broker.stop()
    arrived_before_restart = len(sub.messages)
    time.sleep(GAP_S)
    assert agent.alive(), agent.output()
    down = _mqtt_health(health_url)
    assert down["connected"] is False and "cannot reach" in down["last_error"], down
    assert down["queued"] >= 0.9 * GAP_S / INTERVAL_S - 1, down
    restarted_at = time.time()
    own_broker.start()

    # Wait for telemetry produced after the restart: the backlog is in front of it.
    sub.wait_for(lambda m: m.topic == DEVICE.telemetry and m.payload["ts"] > restarted_at + 2 * INTERVAL_S,
                 30, "telemetry produced after the restart")
    assert agent.alive(), agent.output()

    everything = [m for m in sub.messages if m.payload and m.payload.get("seq", 0) > 0]
    unique = dedupe(everything)
    duplicates = len(everything) - len(unique)
    seqs = [m.payload["seq"] for m in unique]
    first = min(seqs)
    # Nothing lost: every seq from the first seen to the last, once each (all topics share seq).
    assert sorted(seqs) == list(range(first, max(seqs) + 1)), sorted(set(range(first, max(seqs) + 1)) - set(seqs))
    # In order: per topic, first arrivals have increasing seq and production time.
    for kind in ("telemetry", "event", "status"):
        arrived = [m.payload for m in unique if m.topic == DEVICE.topic(kind)]
        assert [p["seq"] for p in arrived] == sorted(p["seq"] for p in arrived), kind
        assert [p["ts"] for p in arrived] == sorted(p["ts"] for p in arrived), kind

    telemetry = [m for m in unique if m.topic == DEVICE.telemetry]
    in_gap = [m for m in telemetry if stopped_at < m.payload["ts"] < restarted_at]
    expected = GAP_S / INTERVAL_S
    assert len(in_gap) >= 0.9 * expected - 1, (len(in_gap), expected)
    # They were produced offline (the agent said so itself) and delivered only after the restart.
    assert all(m.payload["queue"]["connected"] is False for m in in_gap[1:])
    depths = [m.payload["queue"]["depth"] for m in in_gap]
    assert depths[-1] >= len(in_gap) - 2 and depths == sorted(depths)
    assert sub.messages.index(in_gap[0]) >= arrived_before_restart
    assert {m.payload["queue"]["dropped_total"] for m in telemetry} == {0}
    # The inference load kept running through the outage.
    assert sum(m.payload["inference"]["count_interval"] for m in in_gap) >= 0.8 * 100.0 * GAP_S * 0.9
    # After reconnecting the agent announced itself again.
    online = [m for m in unique if m.topic == DEVICE.status and m.payload["state"] == "online"
              and m.payload["ts"] > restarted_at]
    assert len(online) == 1
    up = _mqtt_health(health_url)
    assert up["connected"] is True and up["connects"] == 2, up
    log = agent.output()  # the operator is told: lost, retrying, back
    assert "MQTT link to" in log and "lost" in log and "retrying" in log, log
    assert "MQTT connected to" in log and "(reconnect 1)" in log, log
    print(f"\noutage: {len(in_gap)} telemetry messages produced in the {GAP_S:g} s gap, all delivered "
          f"after restart; {len(unique)} unique messages, {duplicates} duplicate deliveries dropped by seq")


def _mqtt_health(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())["mqtt"]
