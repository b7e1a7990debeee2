"""`edgekit deploy` without agents: a stuck device times out, `cancel` stops a running rollout,
`--select` picks devices by their status, and bad input is one `error:` line that stores nothing.

The "devices" here are retained ``status`` messages, as a device that hangs after connecting
leaves them: online, and silent.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from edgekit_agent.telemetry import schema

FLEET = "ghosts"
GHOSTS = {"g-1": ("online", "rpi4"), "g-2": ("online", "x86-64"), "g-3": ("offline", "rpi4")}


@pytest.fixture
def ghosts(broker, collect):
    sub = collect(broker, schema.subscription(FLEET, "#"))
    for name, (state, target) in GHOSTS.items():
        status = schema.status_payload(name, 1, state, mode="performance",
                                       bundle={"id": "0" * 16, "name": "digits", "version": "1",
                                               "target": target})
        sub.client.publish(schema.Topics(FLEET, name).status, schema.encode(status), qos=1,
                           retain=True).wait_for_publish(5)
    yield sub
    for name in GHOSTS:
        for kind in ("status", "ota"):
            sub.client.publish(schema.Topics(FLEET, name).topic(kind), b"", qos=1,
                               retain=True).wait_for_publish(5)


def _args(broker, keypair, bundle, state, *extra):
    return ["deploy", str(bundle), "--fleet", FLEET, "--broker", broker.url, "--key",
            str(keypair[0]), "--state", str(state), "--json", *map(str, extra)]


def test_stuck_device_times_out_instead_of_blocking(ghosts, broker, keypair, make_bundle, tmp_path,
                                                    edgekit_cli):
    t0 = time.monotonic()
    proc = edgekit_cli(*_args(broker, keypair, make_bundle(), tmp_path / "state", "--select",
                              "target=rpi4", "--select", "state=online", "--timeout", "2"))
    seconds = time.monotonic() - t0
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert out["devices"] == ["g-1"] and out["halted"] and out["succeeded"] == []
    assert out["failed"] == [{"device": "g-1", "reason": "timed out after 2 s without an outcome"}]
    assert 2.0 < seconds < 15.0, seconds
    ota = [m for m in ghosts.of("ota") if m.topic == schema.Topics(FLEET, "g-1").ota]
    offer = json.loads(ota[0].raw)
    assert offer["type"] == "offer" and offer["rollout"] == out["rollout"] and "sig" in offer
    assert [json.loads(m.raw)["type"] for m in ota[1:] if m.raw] == ["cancel"]
    assert ota[-1].raw == b""  # the retained offer is withdrawn
    assert not [m for m in ghosts.of("ota") if "/g-2/" in m.topic or "/g-3/" in m.topic]

    proc = edgekit_cli("deploy", "status", "--fleet", FLEET, "--state", tmp_path / "state")
    assert proc.returncode == 0, proc.stderr
    assert "halted (failure rate 1.00 (1 of 1 finished) > 0.2)" in proc.stdout
    assert "timed out after 2 s" in proc.stdout and "0/1 devices run the bundle" in proc.stdout


def test_cancel_stops_a_running_rollout(ghosts, broker, keypair, make_bundle, tmp_path, edgekit_cli,
                                        cli_error, power_bundle):
    state = tmp_path / "state"
    deploy = subprocess.Popen([sys.executable, "-m", "edgekit.cli",
                               *_args(broker, keypair, make_bundle(), state, "--select", "target=rpi4",
                                      "--waves", "100", "--wait")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ghosts.wait_for(lambda m: m.topic.endswith("/g-1/ota") and m.raw, 30, "the offer to g-1")
    # g-3 is offline: it was offered too (retained), it is waited for, not counted.
    ghosts.wait_for(lambda m: m.topic.endswith("/g-3/ota") and m.raw, 30, "the offer to g-3")
    other = edgekit_cli(*_args(broker, keypair, power_bundle, state))
    cli_error(other, "is still running on fleet ghosts", "edgekit deploy cancel --fleet ghosts")

    proc = edgekit_cli("deploy", "cancel", "--fleet", FLEET, "--broker", broker.url, "--key",
                       keypair[0], "--state", state, "--json")
    assert proc.returncode == 0, proc.stderr
    (cancelled,) = json.loads(proc.stdout)
    assert sorted(cancelled["devices_told"]) == ["g-1", "g-3"]
    out_text, err = deploy.communicate(timeout=30)
    assert deploy.returncode == 1, err
    out = json.loads(out_text)
    assert out["status"] == "cancelled" and sorted(out["skipped"]) == ["g-1", "g-3"]
    for name in ("g-1", "g-3"):
        last = [m for m in ghosts.of("ota") if m.topic == schema.Topics(FLEET, name).ota][-1]
        assert last.raw == b"" or json.loads(last.raw)["type"] == "cancel"
    cli_error(edgekit_cli("deploy", "cancel", "--fleet", FLEET, "--broker", broker.url,
                          "--state", state), "no running rollout on fleet ghosts")


@pytest.mark.parametrize("extra, fragment", [
    (("--waves", "5,3,100"), "must be increasing percentages"),
    (("--waves", "5,50"), "must end at 100"),
    (("--waves", "x"), "must be comma-separated percentages"),
    (("--select", "target"), "must be KEY=VALUE"),
    (("--max-failure-rate", "2"), "--max-failure-rate"),
    (("--chunk-size", "10"), "--chunk-size"),
    (("--select", "target=nothing"), "no device of fleet ghosts matches (devices seen: g-1, g-2, g-3)"),
])
def test_bad_input_is_one_line_and_stores_nothing(ghosts, broker, keypair, make_bundle, tmp_path,
                                                  edgekit_cli, cli_error, extra, fragment):
    state = tmp_path / "state"
    cli_error(edgekit_cli(*_args(broker, keypair, make_bundle(), state, *extra)), fragment)
    assert not state.exists()


def test_bad_target_key_or_broker_is_one_line(broker, keypair, make_bundle, tmp_path, edgekit_cli,
                                              cli_error):
    state = tmp_path / "state"
    bundle = make_bundle()
    cases = [
        (["deploy", tmp_path / "missing.ekb", "--fleet", FLEET, "--key", keypair[0]],
         "cannot deploy"),
        (["deploy", bundle, "--fleet", FLEET], "give --key FLEET.key"),
        (["deploy", bundle, "--key", keypair[0]], "give --fleet NAME"),
        (["deploy", bundle, "--fleet", "a/b", "--key", keypair[0]], "is not a name of 1-64"),
        (["deploy", bundle, "--fleet", FLEET, "--key", tmp_path / "none.key"], "cannot read key"),
        (["deploy", bundle, "--fleet", FLEET, "--key", keypair[0], "--broker", "127.0.0.1:1"],
         "cannot reach the broker 127.0.0.1:1"),
        (["deploy", "status"], "no rollout state here"),
        (["deploy", "cancel", "--fleet", FLEET], "no rollout state here"),
    ]
    for args, fragment in cases:
        cli_error(edgekit_cli(*args, "--state", state), fragment)
        assert not state.exists(), args
