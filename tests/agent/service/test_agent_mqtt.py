"""The agent daemon as a subprocess on a real Mosquitto, judged by what arrives on the broker."""

from __future__ import annotations

import json
import re
import signal
import time

import pytest

from edgekit_agent.bundle.manifest import bundle_id
from edgekit_agent.bundle.reader import open_bundle
from edgekit_agent.bundle.signing import load_private_key
from edgekit_agent.telemetry import schema

DEVICE = schema.Topics("lab", "dev1")


def is_event(kind: str, **fields):
    def match(m) -> bool:
        p = m.payload or {}
        return (m.topic == DEVICE.event and p.get("kind") == kind
                and all(p.get(k) == v for k, v in fields.items()))
    return match


def test_telemetry_mode_change_rate_limit_and_last_will(dedupe, broker, collect, agent_config, start_agent,
                                                        power_bundle):
    sub = collect(broker, f"{schema.ROOT}/lab/dev1/#")
    agent = start_agent(agent_config(broker))
    expected_id = bundle_id(open_bundle(power_bundle).manifest)

    online = sub.wait_for(lambda m: m.topic == DEVICE.status and m.payload["state"] == "online", 30,
                          "status online")
    assert online.payload["bundle"]["id"] == expected_id and online.payload["mode"] == "performance"
    change = sub.wait_for(is_event("mode_change"), 40, "the mode change")
    data = change.payload["data"]
    assert (data["from"], data["to"]) == ("performance", "eco")
    held = re.fullmatch(r"rule 'hot': temperature_c [0-9.]+ > 40 for ([0-9.]+) s", data["reason"])
    assert held and 2.0 <= float(held.group(1)) <= 2.6, data["reason"]  # hold_s, at the 0.25 s tick
    assert data["readings"]["temperature_c"] > 40.0
    assert data["applied"]["variant"] == "onnx" and data["applied"]["threads"] == 1
    assert data["applied"]["max_inferences_per_s"] == 20.0
    change_seq = change.payload["seq"]

    # Four full telemetry intervals in eco after the one that straddles the switch.
    sub.wait_for(lambda m: m.topic == DEVICE.telemetry and m.payload["seq"] > change_seq
                 and m.payload["mode"] == "eco" and
                 len([t for t in dedupe(sub.of("telemetry")) if t.payload["seq"] > change_seq]) >= 5,
                 20, "5 telemetry messages in eco")
    assert agent.alive(), agent.output()
    telemetry = [t.payload for t in dedupe(sub.of("telemetry"))]
    before = [t for t in telemetry if t["seq"] < change_seq and t["mode"] == "performance"]
    after = [t for t in telemetry if t["seq"] > change_seq][1:]
    assert before and len(after) >= 4
    fast = max(t["inference"]["per_s"] for t in before)
    assert fast >= 60.0, [t["inference"]["per_s"] for t in before]  # unthrottled (300/s asked), 3x eco
    rates = [t["inference"]["per_s"] for t in after]
    assert all(r <= 21.5 for r in rates), rates  # 20/s + a bucket of 1 per 1 s interval
    assert sum(rates) / len(rates) >= 14.0, rates  # and the load is still running
    # Every telemetry carries what the fleet needs.
    last = telemetry[-1]
    assert last["schema"] == "edgekit.telemetry/1" and last["device"] == "dev1"
    assert last["bundle"]["id"] == expected_id and last["bundle"]["variant"] == "onnx"
    lat = last["inference"]["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] < 100
    assert last["inference"]["errors"] == 0
    assert last["energy"]["source"] == "profile" and last["energy"]["per_inference_j"] > 0
    assert last["memory"]["rss_bytes"] > 20 << 20
    assert last["limits"] == {"max_inferences_per_s": 20.0, "duty_cycle": 1.0, "offload_allowed": False}
    temps = [t["sensors"]["temperature_c"] for t in before]
    # Heating up; idle power alone could never pass 25 + 0.02 W * 200 °C/W = 29 °C.
    assert temps == sorted(temps) and data["readings"]["temperature_c"] > 40.0 > 29.0
    batteries = [t["sensors"]["battery_pct"] for t in telemetry]
    assert batteries == sorted(batteries, reverse=True) and batteries[-1] < 100.0
    assert {t["queue"]["dropped_total"] for t in telemetry} == {0}
    for t in telemetry:
        schema.validate(t, "telemetry")
    print(f"\nbefore the switch: {[t['inference']['per_s'] for t in before]} inf/s; in eco (limit 20): "
          f"{rates}; switch at {data['readings']['temperature_c']} °C; p50 {lat['p50']:.3f} ms; "
          f"{last['energy']['per_inference_j'] * 1e3:.2f} mJ/inference; RSS {last['memory']['rss_bytes'] >> 20} MiB")

    # SIGKILL: no goodbye from the agent, so the broker publishes the retained last will.
    t0, mark = time.monotonic(), sub.mark()
    agent.stop(signal.SIGKILL)
    will = sub.wait_for(lambda m: m.topic == DEVICE.status and m.payload["state"] == "offline", 10,
                        "the offline last will", since=mark)
    assert will.payload["will"] is True and will.payload["seq"] == 0
    assert will.payload["bundle"]["id"] == expected_id  # the will names what the device ran
    assert time.monotonic() - t0 < 5
    late = collect(broker, DEVICE.status)  # a newcomer sees the retained offline status
    retained = late.wait_for(lambda m: True, 5, "retained status")
    assert retained.retain and retained.payload["state"] == "offline"


@pytest.mark.host
def test_commands_bad_ones_are_answered_good_ones_executed(broker, collect, agent_config, start_agent,
                                                            keypair, power_bundle, power_bundle_v2,
                                                            edgekit_cli):
    sub = collect(broker, f"{schema.ROOT}/lab/dev1/#")
    config = agent_config(broker, bundles=(power_bundle, power_bundle_v2), load={"rate": 50.0},
                          sensors={"speed": 0.01})  # stays cool: only commands change the mode
    agent = start_agent(config)
    sub.wait_for(lambda m: m.topic == DEVICE.status and m.payload["state"] == "online", 30, "online")
    key = load_private_key(keypair[0])
    assert [m.payload["kind"] for m in sub.of("event")] in ([], ["start"])  # nothing left over

    def send(payload: bytes) -> None:
        sub.client.publish(DEVICE.cmd, payload, qos=1).wait_for_publish(5)

    good = json.loads(schema.sign_command(key, "dev1", "set_mode", {"mode": "eco"}, command_id="replayed"))
    bad = {
        "garbage": b"\x00\xff not json",
        "array": b"[1, 2]",
        "unsigned": json.dumps({k: v for k, v in good.items() if k != "sig"} | {"id": "unsigned"}).encode(),
        "forged": json.dumps(good | {"id": "forged"}).encode(),  # id changed after signing
        "unknown-action": schema.sign_command(key, "dev1", "reboot", command_id="unknown-action"),
        "wrong-device": schema.sign_command(key, "dev9", "report_now", command_id="wrong-device"),
        "bad-mode": schema.sign_command(key, "dev1", "set_mode", {"mode": "turbo"}, command_id="bad-mode"),
        "huge": json.dumps({"id": "huge", "pad": "x" * 20000}).encode(),
    }
    for payload in bad.values():
        send(payload)
    errors = {}
    for cid in bad:
        if cid in ("garbage", "array"):
            continue
        errors[cid] = sub.wait_for(is_event("cmd_error", correlation_id=cid), 10, f"error for {cid}").payload
    anonymous = [m for m in sub.of("event") if m.payload["kind"] == "cmd_error"
                 and "correlation_id" not in m.payload]
    assert len(anonymous) == 2  # garbage and array: no id to correlate
    assert "not UTF-8" in anonymous[0].payload["message"]
    assert "must be a JSON object" in anonymous[1].payload["message"]
    assert "not signed" in errors["unsigned"]["message"]
    assert "signature rejected" in errors["forged"]["message"]
    assert "action: 'reboot' is not" in errors["unknown-action"]["message"]
    assert "device: 'dev9' is not" in errors["wrong-device"]["message"]
    bad_mode = errors["bad-mode"]["message"]
    assert "mode: 'turbo' is not a mode" in bad_mode and "allowed: eco, performance" in bad_mode
    assert "over the 16384 byte limit" in errors["huge"]["message"]
    assert all(e["level"] == "error" and "\n" not in e["message"] for e in errors.values())
    assert agent.alive(), agent.output()

    # A valid command works, exactly once.
    send(json.dumps(good).encode())
    ok = sub.wait_for(is_event("cmd_result", correlation_id="replayed"), 10, "set_mode result").payload
    assert ok["data"] == {"action": "set_mode", "from": "performance", "mode": "eco", "override": "eco"}
    change = sub.wait_for(is_event("mode_change"), 10, "manual mode change").payload
    assert change["data"]["reason"] == "manual mode" and change["data"]["to"] == "eco"
    send(json.dumps(good).encode())
    replay = sub.wait_for(lambda m: is_event("cmd_error", correlation_id="replayed")(m), 10, "replay refused")
    assert "replay" in replay.payload["message"]

    # report_now: a telemetry with the promised seq, in the new mode; the answer also goes to reply_to.
    replies = collect(broker, "ops/replies/#")
    send(schema.sign_command(key, "dev1", "report_now", command_id="report", reply_to="ops/replies/me"))
    seq = sub.wait_for(is_event("cmd_result", correlation_id="report"), 10, "report result").payload["data"]["seq"]
    reply = replies.wait_for(lambda m: True, 10, "the reply on reply_to").payload
    assert reply["correlation_id"] == "report" and reply["kind"] == "cmd_result" and reply["data"]["seq"] == seq
    report = sub.wait_for(lambda m: m.topic == DEVICE.telemetry and m.payload["seq"] == seq, 10, "report")
    assert report.payload["mode"] == "eco" and report.payload["override"] == "eco"

    # rollback through the host CLI: v2 is active, v1 comes back, and the store says so.
    v1, v2 = (bundle_id(open_bundle(b).manifest) for b in (power_bundle, power_bundle_v2))
    proc = edgekit_cli("fleet", "cmd", "dev1", "rollback", "--fleet", "lab", "--key", keypair[0],
                       "--broker", broker.url, "--json")
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert answer["kind"] == "cmd_result" and answer["data"]["bundle_id"] == v1
    rollback = sub.wait_for(is_event("rollback"), 10, "rollback event").payload
    assert rollback["data"]["bundle_id"] == v1 and rollback["data"]["from_bundle_id"] == v2
    telemetry = sub.wait_for(lambda m: m.topic == DEVICE.telemetry and m.payload["bundle"]["id"] == v1,
                             10, "telemetry from the rolled-back bundle").payload
    assert telemetry["inference"]["errors"] == 0
    # A second rollback goes back to v2 (the store keeps both slots).
    proc = edgekit_cli("fleet", "cmd", "dev1", "rollback", "--fleet", "lab", "--key", keypair[0],
                       "--broker", broker.url)
    assert proc.returncode == 0 and proc.stdout.startswith("cmd_result: rollback done"), proc.stdout
    # The CLI reports a refused command as an error exit.
    proc = edgekit_cli("fleet", "cmd", "dev1", "set_mode", "--arg", "mode=turbo", "--fleet", "lab",
                       "--key", keypair[0], "--broker", broker.url)
    assert proc.returncode == 1 and "cmd_error: set_mode failed" in proc.stdout

    # SIGTERM: a clean stop says goodbye itself (no will) and exits 0.
    mark = sub.mark()
    assert agent.stop(signal.SIGTERM) == 0, agent.output()
    stop = sub.wait_for(lambda m: m.topic == DEVICE.status and m.payload["state"] == "offline", 10,
                        "offline", since=mark)
    assert "will" not in stop.payload and stop.payload["seq"] > 0
    assert any(m.payload["kind"] == "stop" for m in sub.of("event"))
    assert "Traceback" not in agent.output()
