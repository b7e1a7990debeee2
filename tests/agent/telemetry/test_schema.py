"""Topics, payload validation, and strict authenticated command parsing."""

from __future__ import annotations

import base64
import json
import re

import pytest

from edgekit_agent.bundle.manifest import canonical_json
from edgekit_agent.bundle.signing import generate_keypair, load_private_key, sign
from edgekit_agent.errors import CommandError, TransportError
from edgekit_agent.telemetry import schema

NOW = 1_700_000_000.0


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("cmdkeys")
    fleet_key, fleet_pub = generate_keypair(d / "fleet")
    other_key, _ = generate_keypair(d / "other")
    return load_private_key(fleet_key), fleet_pub, load_private_key(other_key)


def test_topics_and_filters():
    t = schema.Topics("lab", "pi-01")
    assert [t.status, t.telemetry, t.event, t.cmd, t.ota, t.offload_req, t.offload_resp] == [
        f"edgekit/v1/lab/pi-01/{k}" for k in
        ("status", "telemetry", "event", "cmd", "ota", "offload/req", "offload/resp")]
    assert schema.parse_topic("edgekit/v1/lab/pi-01/offload/resp") == ("lab", "pi-01", "offload/resp")
    assert schema.subscription("lab", "status") == "edgekit/v1/lab/+/status"
    assert schema.subscription() == "edgekit/v1/+/+/#"
    for bad in ("edgekit/v1/lab/pi-01", "edgekit/v2/lab/pi-01/status", "edgekit/v1/lab/pi-01/shell"):
        with pytest.raises(TransportError, match="not an edgekit topic"):
            schema.parse_topic(bad)
    for fleet, device in (("lab", "a/b"), ("+", "x"), ("lab", "#"), ("", "x"), ("lab", "x" * 65)):
        with pytest.raises(TransportError, match="is not a name of 1-64 letters"):
            schema.Topics(fleet, device)


def test_payload_builders_validate_and_round_trip():
    st = schema.status_payload("pi-01", 7, "online", bundle={"id": "ab"}, mode="eco", ts=NOW)
    assert st == {"schema": "edgekit.status/1", "device": "pi-01", "seq": 7, "ts": NOW,
                  "state": "online", "bundle": {"id": "ab"}, "mode": "eco"}
    assert schema.decode(schema.encode(st), "status") == st
    will = schema.status_payload("pi-01", 0, "offline", will=True)
    assert will["will"] is True and will["seq"] == 0
    ev = schema.event_payload("pi-01", 8, "mode_change", "a -> b", data={"from": "a"}, correlation_id="c1")
    assert schema.decode(schema.encode(ev), "event")["correlation_id"] == "c1"
    tm = schema.telemetry_payload("pi-01", 9, interval_s=1.0, mode="eco", inference={}, sensors={},
                                  queue={})
    schema.validate(tm, "telemetry")
    with pytest.raises(TransportError, match="event payload: kind: 'party' is not an event kind"):
        schema.event_payload("pi-01", 1, "party", "x")
    with pytest.raises(TransportError, match=r"status payload: state: 'asleep' is not a status state "
                                             r"\(allowed: offline, online\)"):
        schema.status_payload("pi-01", 1, "asleep")


@pytest.mark.parametrize("mutate, fragment", [
    (lambda p: p.pop("seq"), "status payload: seq: missing is not an integer >= 0"),
    (lambda p: p.update(seq=-1), "status payload: seq: -1 is not an integer >= 0"),
    (lambda p: p.update(seq=True), "status payload: seq: True is not an integer"),
    (lambda p: p.update(ts="now"), "status payload: ts: 'now' is not a number"),
    (lambda p: p.update(schema="edgekit.status/2"),
     "schema: 'edgekit.status/2' is not one of the allowed values (allowed: edgekit.status/1)"),
    (lambda p: p.update(device="a/b"), "status payload: device: 'a/b' is not a name of 1-64"),
    (lambda p: p.update(state="maybe"), "state: 'maybe' is not one of the allowed values (allowed: offline, online)"),
])
def test_validate_rejects_malformed_payloads(mutate, fragment):
    p = schema.status_payload("pi-01", 3, "online")
    mutate(p)
    with pytest.raises(TransportError, match=re.escape(fragment)):
        schema.validate(p, "status")


@pytest.mark.parametrize("raw, fragment", [
    (b"\xff\xfe", "not UTF-8"), (b"{", "not JSON"), (b"[1]", "must be a JSON object, got list"),
    (b"x" * (2 << 20), "over the 1048576 byte limit")])
def test_decode_rejects_garbage(raw, fragment):
    with pytest.raises(TransportError, match=fragment):
        schema.decode(raw, "telemetry")


def verifier(pub, **kw) -> schema.CommandVerifier:
    return schema.CommandVerifier("pi-01", pub, **kw)


def test_signed_command_is_accepted_once(keys):
    key, pub, _ = keys
    raw = schema.sign_command(key, "pi-01", "set_mode", {"mode": "eco", "duration_s": 30}, seq=4,
                              ts=NOW, command_id="c-1", reply_to="ops/replies")
    v = verifier(pub)
    cmd = v.parse(raw, now=NOW + 1)
    assert (cmd.id, cmd.action, cmd.args, cmd.seq, cmd.reply_to) == (
        "c-1", "set_mode", {"mode": "eco", "duration_s": 30}, 4, "ops/replies")
    with pytest.raises(CommandError, match="already executed \\(replay\\)"):
        v.parse(raw, now=NOW + 2)
    for action in ("reload", "rollback", "report_now"):
        assert v.parse(schema.sign_command(key, "pi-01", action, ts=NOW), now=NOW).action == action


def resign(key, obj: dict) -> bytes:
    body = {k: v for k, v in obj.items() if k != "sig"}
    return json.dumps({**body, "sig": base64.b64encode(sign(key, canonical_json(body))).decode()}).encode()


def good(key, **over) -> dict:
    obj = json.loads(schema.sign_command(key, "pi-01", "set_mode", {"mode": "eco"}, ts=NOW, command_id="c9"))
    obj.update(over)
    return obj


@pytest.mark.parametrize("make, fragment", [
    (lambda k, o: b"not json", "cmd payload is not JSON"),
    (lambda k, o: b'"set_mode"', "must be a JSON object, got str"),
    (lambda k, o: b"{" * 100_000, "over the 16384 byte limit"),
    (lambda k, o: resign(k, good(k, id="a b")), "cmd: id: 'a b' is not an id of 1-64"),
    (lambda k, o: resign(k, good(k, action="reboot")),
     "cmd: action: 'reboot' is not one of the allowed values (allowed: reload, report_now, rollback, set_mode)"),
    (lambda k, o: resign(k, good(k, args={"mode": "eco", "force": True})),
     "cmd: args.force: True is not a known key (allowed: duration_s, mode)"),
    (lambda k, o: resign(k, good(k, args={})), "cmd: args.mode: missing is not a string"),
    (lambda k, o: resign(k, good(k, args={"mode": 3})), "cmd: args.mode: 3 is not a string"),
    (lambda k, o: resign(k, good(k, args={"mode": "eco", "duration_s": -5})),
     "cmd: args.duration_s: -5 is not a duration in (0, 604800] s"),
    (lambda k, o: resign(k, good(k, args=[1])), "cmd: args: [1] is not a table"),
    (lambda k, o: resign(k, good(k, device="pi-02")),
     "cmd: device: 'pi-02' is not one of the allowed values (allowed: pi-01)"),
    (lambda k, o: resign(k, good(k, schema="edgekit.cmd/0")),
     "cmd: schema: 'edgekit.cmd/0' is not one of the allowed values (allowed: edgekit.cmd/1)"),
    (lambda k, o: resign(k, good(k, shell="rm -rf /")), "cmd: shell: 'rm -rf /' is not a known key"),
    (lambda k, o: resign(k, good(k, reply_to="a/+/b")), "cmd: reply_to: 'a/+/b' is not a topic without wildcards"),
    (lambda k, o: resign(k, good(k, ts=NOW - 3600)), "outside the ±60 s window"),
    (lambda k, o: resign(k, good(k, seq="1")), "cmd: seq: '1' is not an integer"),
    (lambda k, o: json.dumps({k2: v for k2, v in good(k).items() if k2 != "sig"}).encode(), "not signed"),
    (lambda k, o: json.dumps(good(k, sig="!!!")).encode(), "'sig' is not base64"),
    (lambda k, o: json.dumps(good(k, sig=base64.b64encode(b"x" * 10).decode())).encode(), "10 bytes, expected 64"),
    (lambda k, o: resign(o, good(k)), "signature rejected: signature does not match"),
    (lambda k, o: json.dumps({**good(k), "args": {"mode": "critical"}}).encode(), "signature rejected"),
])
def test_bad_commands_are_one_line_command_errors(keys, make, fragment):
    key, pub, other = keys
    with pytest.raises(CommandError) as info:
        verifier(pub).parse(make(key, other), now=NOW)
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_commands_refused_without_a_fleet_key(keys):
    key, _, _ = keys
    with pytest.raises(CommandError, match=r"no fleet public key configured \(store.public_key\)"):
        verifier(None).parse(schema.sign_command(key, "pi-01", "report_now", ts=NOW), now=NOW)


def test_command_id_of_bad_payloads():
    assert schema.command_id_of(b'{"id": "abc", "action": 5}') == "abc"
    assert schema.command_id_of(b'{"id": "a b"}') is None
    assert schema.command_id_of(b"\xff") is None and schema.command_id_of(b"[]") is None
