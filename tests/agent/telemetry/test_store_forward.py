"""The SQLite outbox, and the MQTT link on a real Mosquitto: replay, drops, auth, TLS."""

from __future__ import annotations

import datetime
import ipaddress
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgekit_agent.config import MqttConfig
from edgekit_agent.errors import StoreError
from edgekit_agent.telemetry.mqtt import Backoff, Telemetry
from edgekit_agent.telemetry.outbox import Outbox
from edgekit_agent.telemetry.schema import Topics

TOPICS = Topics("lab", "dev1")


def telemetry_body(i: int) -> dict:
    return {"interval_s": 1.0, "mode": "m", "inference": {"i": i}, "sensors": {}}


def put(outbox: Outbox, i: int) -> int:
    return outbox.put("t", lambda seq: {"seq": seq, "i": i})


def test_outbox_assigns_seq_persists_and_acks(tmp_path: Path):
    ob = Outbox(tmp_path / "q.sqlite", 100)
    assert [put(ob, i) for i in range(5)] == [1, 2, 3, 4, 5]
    rows = ob.peek(0, 10)
    assert [r.seq for r in rows] == [1, 2, 3, 4, 5]
    assert [json.loads(r.payload)["seq"] for r in rows] == [1, 2, 3, 4, 5]  # seq is in the payload
    ob.ack([1, 2])
    assert ob.depth == 3 and [r.seq for r in ob.peek(0, 10)] == [3, 4, 5]
    assert [r.seq for r in ob.peek(3, 1)] == [4]
    ob.close()
    again = Outbox(tmp_path / "q.sqlite", 100)
    assert again.depth == 3 and put(again, 9) == 6  # never reused, even after all acks
    again.ack([3, 4, 5, 6])
    assert again.depth == 0 and put(again, 10) == 7
    mode = sqlite3.connect(tmp_path / "q.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_outbox_bound_drops_oldest_and_counts_once(tmp_path: Path):
    ob = Outbox(tmp_path / "q.sqlite", 10)
    for i in range(25):
        put(ob, i)
    assert ob.depth == 10
    assert [r.seq for r in ob.peek(0, 100)] == list(range(16, 26))
    assert ob.take_dropped() == (15, 15)
    assert ob.take_dropped() == (0, 15)
    ob.protect_upto = 18  # handed to the client: not dropped, the next-oldest goes instead
    put(ob, 99)
    assert [r.seq for r in ob.peek(0, 100)] == [16, 17, 18, *range(20, 27)]
    assert ob.take_dropped() == (1, 16)


def test_outbox_survives_kill_9(tmp_path: Path):
    """Rows committed before SIGKILL are all there, in order, after reopening."""
    code = ("import sys, os, signal\nfrom edgekit_agent.telemetry.outbox import Outbox\n"
            f"ob = Outbox({str(tmp_path / 'q.sqlite')!r}, 1000)\n"
            "for i in range(300):\n    ob.put('t', lambda seq: {'seq': seq})\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert proc.returncode == -9
    ob = Outbox(tmp_path / "q.sqlite", 1000)
    assert [r.seq for r in ob.peek(0, 1000)] == list(range(1, 301))


def test_outbox_refuses_unusable_paths(tmp_path: Path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="telemetry queue"):
        Outbox(tmp_path / "file" / "q.sqlite")
    with pytest.raises(StoreError, match="bound must be >= 1"):
        Outbox(tmp_path / "q.sqlite", 0)


def test_backoff_is_exponential_with_jitter_and_capped():
    b = Backoff(0.5, 8.0)
    delays = [b.next() for _ in range(8)]
    for i, d in enumerate(delays):
        ceiling = min(8.0, 0.5 * 2 ** i)
        assert ceiling / 2 <= d <= ceiling
    b.reset()
    assert b.next() <= 0.5
    spread = {round(Backoff(1.0, 1.0).next(), 6) for _ in range(20)}
    assert len(spread) > 10  # jitter: devices do not reconnect in lockstep


def seqs(messages) -> list[int]:
    return [m.payload["seq"] for m in messages]


def first_occurrences(values: list[int]) -> list[int]:
    seen: set[int] = set()
    return [v for v in values if not (v in seen or seen.add(v))]


def test_replay_after_broker_restart_and_drop_report(broker_class, tmp_path: Path, collect):
    broker = broker_class(tmp_path)
    broker.start()
    try:
        sub = collect(broker, "edgekit/v1/lab/dev1/#", client_id="replay-collector")
        ob = Outbox(tmp_path / "q.sqlite", 8)
        tel = Telemetry(MqttConfig(host=broker.host, port=broker.port, reconnect_min_s=0.1,
                                    reconnect_max_s=0.3), TOPICS, ob)
        tel.start()
        for i in range(5):
            tel.publish_telemetry(telemetry_body(i))
        sub.wait_for(lambda m: m.topic.endswith("telemetry") and m.payload["inference"]["i"] == 4, 10, "i=4")
        deadline = time.monotonic() + 5
        while ob.depth and time.monotonic() < deadline:  # every PUBACK in: nothing is in flight
            time.sleep(0.02)
        broker.stop()
        deadline = time.monotonic() + 5
        while tel.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not tel.connected
        for i in range(5, 20):  # 15 while the broker is down; the bound (8) drops the oldest 7
            tel.publish_telemetry(telemetry_body(i))
        assert ob.depth == 8
        broker.start()
        sub.wait_for(lambda m: m.topic.endswith("telemetry") and m.payload["inference"]["i"] == 19, 15, "i=19")
        tel.publish_telemetry(telemetry_body(20))  # reports the last drop
        last = sub.wait_for(lambda m: m.topic.endswith("telemetry") and m.payload["inference"]["i"] == 20, 10, "i=20")
        tel.stop()
        ob.close()
        received = first_occurrences(seqs(sub.of("telemetry")))
        assert received == sorted(received)  # in order
        indices = [m.payload["inference"]["i"] for m in sub.of("telemetry")]
        lost = sorted(set(range(21)) - set(indices))
        # The 7 oldest of the outage, and one more for the "online" status queued on reconnect.
        assert lost == list(range(5, 13))
        assert last.payload["queue"]["dropped_total"] == 8
        # "dropped" (since the previous telemetry) travels in queued messages that may be dropped in
        # turn; the running total is what a receiver trusts. It never decreases.
        totals = [m.payload["queue"]["dropped_total"] for m in sub.of("telemetry")]
        assert totals == sorted(totals) and last.payload["queue"]["dropped"] >= 1
        assert tel.connects == 2
    finally:
        broker.stop()


def test_username_and_password(broker_class, tmp_path: Path, collect):
    pw_file = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw_file), "device", "s3cret"], check=True,
                   capture_output=True)
    broker = broker_class(tmp_path, security=f"allow_anonymous false\npassword_file {pw_file}\n")
    broker.start()
    try:
        sub = collect(broker, "edgekit/v1/lab/#", username="device", password="s3cret")
        bad = Telemetry(MqttConfig(host=broker.host, port=broker.port, username="device",
                                    password="wrong", reconnect_min_s=0.1, reconnect_max_s=0.2),
                        Topics("lab", "intruder"), Outbox(tmp_path / "bad.sqlite"))
        good = Telemetry(MqttConfig(host=broker.host, port=broker.port, username="device",
                                     password="s3cret"), TOPICS, Outbox(tmp_path / "good.sqlite"))
        bad.start()
        good.start()
        bad.publish_telemetry(telemetry_body(1))
        good.publish_telemetry(telemetry_body(2))
        sub.wait_for(lambda m: m.topic == TOPICS.telemetry, 10, "authorised telemetry")
        time.sleep(1.0)
        assert not bad.connected and "Not authorized" in bad.last_error
        assert bad.outbox.depth == 1  # its telemetry waits on disk (status is queued on connect)
        assert not [m for m in sub.messages if "intruder" in m.topic]
        bad.stop(0.5)
        good.stop()
    finally:
        broker.stop()


def make_tls_files(d: Path) -> tuple[Path, Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, srv_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgekit test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(1).not_valid_before(now)
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    srv = (x509.CertificateBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
           .issuer_name(ca_name).public_key(srv_key.public_key()).serial_number(2)
           .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
           .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                          critical=False)
           .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    paths = d / "ca.pem", d / "server.pem", d / "server.key"
    paths[0].write_bytes(ca.public_bytes(pem))
    paths[1].write_bytes(srv.public_bytes(pem))
    paths[2].write_bytes(srv_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return paths


def test_tls(broker_class, tmp_path: Path, collect):
    ca, cert, key = make_tls_files(tmp_path)
    broker = broker_class(tmp_path, listener=f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\n")
    broker.start()
    try:
        sub = collect(broker, "edgekit/v1/lab/#", ca_file=ca)
        tel = Telemetry(MqttConfig(host=broker.host, port=broker.port, tls=True, ca_file=ca), TOPICS,
                        Outbox(tmp_path / "q.sqlite"))
        tel.start()
        tel.publish_telemetry(telemetry_body(7))
        msg = sub.wait_for(lambda m: m.topic == TOPICS.telemetry, 10, "telemetry over TLS")
        assert msg.payload["inference"] == {"i": 7}
        tel.stop()
        # Without the CA the handshake fails: nothing is sent, the message stays queued.
        untrusting = Telemetry(MqttConfig(host=broker.host, port=broker.port, tls=True,
                                           reconnect_min_s=0.1, reconnect_max_s=0.2),
                               Topics("lab", "dev2"), Outbox(tmp_path / "q2.sqlite"))
        untrusting.start()
        untrusting.publish_telemetry(telemetry_body(8))
        time.sleep(1.0)
        assert not untrusting.connected and "CERTIFICATE_VERIFY_FAILED" in untrusting.last_error
        assert untrusting.outbox.depth == 1
        untrusting.stop(0.5)
    finally:
        broker.stop()
