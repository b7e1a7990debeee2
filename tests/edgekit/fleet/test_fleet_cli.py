"""`edgekit fleet status` against a real broker with a real agent, and its bad-input errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

# TEMPORARY (issue 8): registered by this folder's conftest; after the merge, import from the
# shared fixtures instead (see tests/edgekit/fleet/conftest.py).
from edgekit.fleet.broker import parse_broker
from edgekit.fleet.status import FleetView
from edgekit_agent.errors import ConfigError
from edgekit_agent.telemetry import schema

T = 1.7e9  # a plausible wall clock: receivers refuse absurd timestamps (see test_fleet_forgery)


def test_fleet_view_keeps_latest_state():
    view = FleetView()
    topic = schema.Topics("lab", "a")
    enc = lambda p: schema.encode(p)  # noqa: E731
    view.feed(topic.status,
              enc(schema.status_payload("a", 5, "online", mode="eco", ts=T + 50.0)), now=T + 100.0,
              retained=True)
    assert view.rows(now=T + 100.0)[0]["last_seen_s"] == 50.0  # a retained status dates from its ts
    view.feed(topic.telemetry, enc(schema.telemetry_payload("a", 9, interval_s=1.0, mode="eco",
              inference={"per_s": 4.0, "latency_ms": {"p50": 1.5}}, sensors={"temperature_c": 61.0},
              queue={}, ts=T + 101.0)), now=T + 101.0)
    # A replayed, older telemetry must not hide the newer one; a will (seq 0) must win.
    view.feed(topic.telemetry,
              enc(schema.telemetry_payload("a", 7, interval_s=1.0, mode="performance",
              inference={}, sensors={}, queue={}, ts=T + 90.0)), now=T + 102.0)
    view.feed(topic.status, enc(schema.status_payload("a", 0, "offline", will=True, ts=T + 60)),
              now=T + 103.0)
    view.feed(topic.status, b"{not json", now=T + 104.0)
    view.feed("edgekit/v1/lab/a/unknown", b"{}", now=T + 104.0)
    (row,) = view.rows(now=T + 110.0)
    assert (
        row["state"] == "offline"
        and row["temperature_c"] == 61.0
        and row["inferences_per_s"] == 4.0
    )
    # neither the will nor the refused replay (seq 7 after 9) counts as the device speaking
    assert row["latency_p50_ms"] == 1.5 and row["last_seen_s"] == 9.0
    assert view.ignored == 2


def test_parse_broker():
    assert parse_broker("10.0.0.2:8883") == ("10.0.0.2", 8883)
    assert parse_broker("broker.local") == ("broker.local", 1883)
    assert parse_broker("[::1]:1884") == ("::1", 1884)
    for bad in ("host:port", ":1883", "h:0", "h:70000"):
        with pytest.raises(ConfigError, match="must be HOST:PORT"):
            parse_broker(bad)


def test_fleet_status_table_and_json(dedupe, broker, collect, agent_config, start_agent, edgekit_cli):
    sub = collect(broker, f"{schema.ROOT}/lab/dev1/telemetry")
    agent = start_agent(agent_config(broker, load={"rate": 40.0}, sensors={"speed": 0.01}))
    # A second device that went away earlier, as its retained will left it.
    gone = schema.Topics("lab", "pi-gone")
    sub.client.publish(gone.status,
                       schema.encode(schema.status_payload("pi-gone", 0, "offline", will=True)),
                       qos=1, retain=True).wait_for_publish(5)
    junk = schema.Topics("lab", "junk")
    sub.client.publish(junk.status, b"\x00garbage", qos=1, retain=True).wait_for_publish(5)
    sub.wait_for(lambda m: len(dedupe(sub.of("telemetry"))) >= 2, 30, "telemetry")

    proc = edgekit_cli("fleet", "status", "--broker", broker.url, "--fleet", "lab", "--json",
                       "--wait", "1.5")
    assert proc.returncode == 0, proc.stderr
    rows = {r["device"]: r for r in json.loads(proc.stdout)}
    assert set(rows) >= {"dev1", "pi-gone"} and "junk" not in rows
    dev = rows["dev1"]
    assert dev["state"] == "online" and dev["mode"] == "performance" and dev["fleet"] == "lab"
    assert (
        dev["bundle"] == "digits" and dev["bundle_version"] == "1" and len(dev["bundle_id"]) == 16
    )
    assert 20.0 < dev["temperature_c"] < 40.0 and dev["battery_pct"] <= 100.0
    assert 25.0 <= dev["inferences_per_s"] <= 42.0 and 0 < dev["latency_p50_ms"] < 100
    assert dev["energy_per_inference_j"] > 0 and dev["errors"] == 0 and dev["last_seen_s"] < 3
    assert rows["pi-gone"]["state"] == "offline" and rows["pi-gone"]["inferences_per_s"] is None
    assert rows["pi-gone"]["last_seen_s"] is None  # only its will is known

    proc = edgekit_cli("fleet", "status", "--broker", broker.url, "--wait", "1.5")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:4] == ["fleet", "device", "state", "mode"]
    dev_line = next(line for line in lines if " dev1 " in line)
    assert dev_line.split()[2:4] == ["online", "performance"] and "digits" in dev_line
    assert "malformed message(s) ignored" in proc.stderr

    # --watch --json: one JSON document per refresh until interrupted; Ctrl-C ends it cleanly.
    watch = subprocess.Popen([sys.executable, "-m", "edgekit.cli", "fleet", "status",
                              "--broker", broker.url,
                              "--fleet", "lab", "--watch", "--json", "--wait", "0.5",
                              "--interval", "0.5"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    frames = [json.loads(watch.stdout.readline()) for _ in range(3)]
    watch.send_signal(signal.SIGINT)
    assert watch.wait(10) == 0, watch.stderr.read()
    assert all({r["device"] for r in f} >= {"dev1", "pi-gone"} for f in frames)

    agent.stop(signal.SIGTERM)
    time.sleep(0.5)
    proc = edgekit_cli("fleet", "status", "--broker", broker.url, "--fleet", "lab", "--json",
                       "--wait", "0.5")
    rows = {r["device"]: r for r in json.loads(proc.stdout)}
    assert rows["dev1"]["state"] == "offline"
    for topics in (gone, junk):  # clear what this test left retained
        sub.client.publish(topics.status, b"", qos=1, retain=True).wait_for_publish(5)


@pytest.mark.parametrize("args, fragment", [
    (("fleet", "status", "--broker", "127.0.0.1:1", "--wait", "0"),
     "cannot reach the broker 127.0.0.1:1"),
    (("fleet", "status", "--broker", "nohost:xyz"), "must be HOST:PORT"),
    (("fleet", "status", "--fleet", "a/b", "--broker", "127.0.0.1:1"), "is not a name of 1-64"),
    (("fleet", "cmd", "dev1", "report_now", "--key", "/nonexistent.key"), "give --fleet NAME"),
    (("fleet", "cmd", "dev1", "report_now", "--fleet", "lab", "--key", "/nonexistent.key"),
     "cannot read key /nonexistent.key"),
])
def test_fleet_bad_input_is_one_line_error(edgekit_cli, cli_error, args, fragment):
    cli_error(edgekit_cli(*args), fragment)
