"""Issue 10, finding 6: fleet authentication on a real Mosquitto, configured by
`edgekit fleet broker-config` (per-device passwords or mTLS, an ACL per device prefix).

Judged by what the operator's collector receives: one device's credentials publishing as
another device deliver 0 messages, a device subscribed to another's ``cmd`` receives 0, and a
client id taken by another user cannot kick a device off the broker.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edgekit.fleet.broker_config import password_line

pytestmark = pytest.mark.host
FLEET = "lab"


def _config(edgekit_cli, out: Path, *args: str) -> dict:
    proc = edgekit_cli("fleet", "broker-config", "--fleet", FLEET, "--devices", "a,b",
                       "--out", out, "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def acl_broker(tmp_path, edgekit_cli, broker_class, free_tcp_port):
    port = free_tcp_port()
    summary = _config(edgekit_cli, tmp_path / "conf", "--port", str(port), "--bind", "127.0.0.1")
    work = tmp_path / "run"
    work.mkdir()
    b = broker_class(work, port, config=tmp_path / "conf" / "mosquitto.conf")
    b.start()
    b.summary, b.conf_dir = summary, tmp_path / "conf"
    yield b
    b.stop()


def _password(broker, user: str) -> str:
    return (Path(broker.summary["users"][user]) / "mqtt.password").read_text().strip()


class Client:
    """An MQTT 5 client with a user's credentials (or a certificate); records what it gets."""

    def __init__(self, broker, user: str | None, password: str | None = None, *,
                 client_id: str = "", tls: dict | None = None) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self.connected, self.disconnected = threading.Event(), threading.Event()
        self.reason = None
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5)
        if user is not None:
            self.c.username_pw_set(user, password)
        if tls:
            self.c.tls_set(**tls)
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = lambda *a: self.disconnected.set()
        self.c.on_message = lambda c, u, m: self.messages.append(m)
        self.c.connect(broker.host, broker.port, keepalive=10)
        self.c.loop_start()

    def _on_connect(self, c, u, flags, reason, props) -> None:
        self.reason = reason
        if not reason.is_failure:
            self.connected.set()
        else:
            self.disconnected.set()

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.c.on_subscribe = lambda *a: done.set()
        self.c.subscribe(topic, qos=1)
        assert done.wait(10)

    def publish(self, topic: str, payload: bytes) -> None:
        self.c.publish(topic, payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def _topic(device: str, kind: str) -> str:
    return f"edgekit/v1/{FLEET}/{device}/{kind}"


def test_broker_config_writes_the_fleet_files(tmp_path, edgekit_cli, cli_error):
    out = tmp_path / "conf"
    summary = _config(edgekit_cli, out)
    conf = (out / "mosquitto.conf").read_text()
    for line in ("allow_anonymous false", f"password_file {out}/passwords", f"acl_file {out}/acl",
                 "use_username_as_clientid true", "max_packet_size 1052672", "listener 1883 0.0.0.0"):
        assert line in conf.splitlines(), line
    acl = (out / "acl").read_text().splitlines()
    assert "pattern write edgekit/v1/lab/%u/telemetry" in acl and "pattern read edgekit/v1/lab/%u/cmd" in acl
    assert "topic readwrite edgekit/v1/lab/#" in acl and not any("pattern readwrite" in x for x in acl)
    users = [line.split(":")[0] for line in (out / "passwords").read_text().splitlines()]
    assert users == ["a", "b", "admin"] and set(summary["users"]) == {"a", "b", "admin"}
    for secret in (out / "passwords", out / "devices" / "a" / "mqtt.password"):
        assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    snippet = (out / "devices" / "a" / "agent-mqtt.toml").read_text()
    assert 'username = "a"' in snippet and "max_packet_bytes = 1052672" in snippet
    password = (out / "devices" / "a" / "mqtt.password").read_text().strip()
    assert len(password) >= 32 and password not in edgekit_cli("fleet", "--help").stdout
    # byte for byte what mosquitto_passwd writes for the same salt: $7$101$<salt>$<PBKDF2-SHA512>
    reference = tmp_path / "reference"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(reference), "u", "pw"], check=True,
                   capture_output=True)
    theirs = reference.read_text().strip()
    salt = base64.b64decode(theirs.split("$")[3])
    assert password_line("u", "pw", salt=salt) == theirs
    before = sorted(p.name for p in out.iterdir())
    cli_error(edgekit_cli("fleet", "broker-config", "--fleet", FLEET, "--devices", "a", "--out", out),
              "would overwrite existing files")
    assert sorted(p.name for p in out.iterdir()) == before
    cli_error(edgekit_cli("fleet", "broker-config", "--fleet", FLEET, "--devices", "a,x/y",
                          "--out", tmp_path / "new"), "--devices", "'x/y'")
    assert not (tmp_path / "new").exists()


def test_one_devices_credentials_cannot_publish_as_another(acl_broker, collect):
    admin = collect(acl_broker, f"edgekit/v1/{FLEET}/#", username="admin",
                    password=_password(acl_broker, "admin"))
    b = Client(acl_broker, "b", _password(acl_broker, "b"))
    assert b.connected.wait(10)
    for kind in ("status", "telemetry", "event", "offload/req", "cmd"):
        b.publish(_topic("a", kind), b'{"forged": true}')
    b.publish(_topic("b", "telemetry"), b'{"own": true}')  # the pipe works: this one arrives
    admin.wait_for(lambda m: m.topic == _topic("b", "telemetry"), 10, "b's own telemetry")
    time.sleep(0.5)
    forged = [m for m in admin.messages if "/a/" in m.topic]
    print(f"forged messages received by the operator: {len(forged)} of 5")
    assert forged == []
    b.close()


def test_a_device_reads_only_its_own_cmd_and_cannot_be_kicked(acl_broker, collect):
    admin = Client(acl_broker, "admin", _password(acl_broker, "admin"))
    a = Client(acl_broker, "a", _password(acl_broker, "a"), client_id="edgekit-lab-a")
    b = Client(acl_broker, "b", _password(acl_broker, "b"), client_id="edgekit-lab-a")  # a's id
    for c in (admin, a, b):
        assert c.connected.wait(10)
    a.subscribe(_topic("a", "cmd"))
    b.subscribe(_topic("a", "cmd"))
    b.subscribe(f"edgekit/v1/{FLEET}/#")
    admin.publish(_topic("a", "cmd"), b'{"for": "a"}')
    deadline = time.monotonic() + 10
    while not a.messages and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    assert [m.payload for m in a.messages] == [b'{"for": "a"}']
    assert b.messages == []  # b saw nothing of a's, although it subscribed to it and to '#'
    assert not a.disconnected.is_set()  # b's use of a's client id did not kick a
    intruder = Client(acl_broker, None, client_id="anon")
    wrong = Client(acl_broker, "a", "not-the-password")
    for c in (intruder, wrong):
        assert c.disconnected.wait(10) and not c.connected.is_set()
        assert c.reason.is_failure
    for c in (admin, a, b, intruder, wrong):
        c.close()


def test_an_agent_with_its_snippet_credentials_reports_through_the_acl(
        acl_broker, collect, agent_config, start_agent, edgekit_cli, cli_error):
    device = Path(acl_broker.summary["users"]["a"])
    admin = collect(acl_broker, f"edgekit/v1/{FLEET}/#", username="admin",
                    password=_password(acl_broker, "admin"))
    config = agent_config(acl_broker, mqtt={"username": "a",
                                            "password_file": str(device / "mqtt.password")})
    text = config.read_text().replace('device_id = "dev1"', 'device_id = "a"')
    config.write_text(text)
    agent = start_agent(config)
    status = admin.wait_for(lambda m: m.topic == _topic("a", "status") and m.payload
                            and m.payload["state"] == "online", 60, "a's online status")
    assert status.payload["device"] == "a"
    admin.wait_for(lambda m: m.topic == _topic("a", "telemetry"), 30, "a's telemetry")
    assert agent.alive()
    password_file = Path(acl_broker.summary["users"]["admin"]) / "mqtt.password"
    proc = edgekit_cli("fleet", "status", "--broker", acl_broker.url, "--fleet", FLEET, "--json",
                       "--wait", "1", "--username", "admin", "--password-file", password_file)
    assert proc.returncode == 0, proc.stderr
    assert [(r["device"], r["state"]) for r in json.loads(proc.stdout)] == [("a", "online")]
    cli_error(edgekit_cli("fleet", "status", "--broker", acl_broker.url, "--username", "a",
                          "--password-file", password_file, "--wait", "0"), "refused the connection")


@pytest.fixture
def mtls_broker(tmp_path, edgekit_cli, broker_class, free_tcp_port):
    port = free_tcp_port()
    summary = _config(edgekit_cli, tmp_path / "conf", "--tls", "--tls-port", str(port),
                      "--bind", "127.0.0.1")
    work = tmp_path / "run"
    work.mkdir()
    b = broker_class(work, port, config=tmp_path / "conf" / "mosquitto.conf")
    b.start()
    b.summary = summary
    yield b
    b.stop()


def _certs(broker, user: str) -> dict:
    d = Path(broker.summary["users"][user])
    return {"ca_certs": str(d / "ca.pem"), "certfile": str(d / "client.pem"),
            "keyfile": str(d / "client.key")}


def test_mtls_identity_is_the_certificate_and_the_acl_applies(mtls_broker, tmp_path):
    conf = (tmp_path / "conf" / "mosquitto.conf").read_text().splitlines()
    assert "require_certificate true" in conf and "use_identity_as_username true" in conf
    assert not (tmp_path / "conf" / "passwords").exists()
    admin = Client(mtls_broker, None, tls=_certs(mtls_broker, "admin"))
    b = Client(mtls_broker, "a", "claims-to-be-a", tls=_certs(mtls_broker, "b"))  # cert says b
    for c in (admin, b):
        assert c.connected.wait(10)
    admin.subscribe(f"edgekit/v1/{FLEET}/#")
    b.publish(_topic("a", "telemetry"), b'{"forged": true}')
    b.publish(_topic("b", "telemetry"), b'{"own": true}')
    deadline = time.monotonic() + 10
    while not admin.messages and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    assert [m.topic for m in admin.messages] == [_topic("b", "telemetry")]
    try:
        no_cert = Client(mtls_broker, "a", "x", tls={"ca_certs": _certs(mtls_broker, "a")["ca_certs"]})
    except OSError:
        pass  # the handshake failed: no client certificate
    else:  # or the broker dropped it right after
        assert no_cert.disconnected.wait(10) and not no_cert.connected.is_set()
        no_cert.close()
    for c in (admin, b):
        c.close()


def test_an_agent_connects_with_its_client_certificate(mtls_broker, collect, agent_config,
                                                      start_agent, edgekit_cli):
    device = Path(mtls_broker.summary["users"]["a"])
    admin = Client(mtls_broker, None, tls=_certs(mtls_broker, "admin"))
    assert admin.connected.wait(10)
    admin.subscribe(_topic("a", "status"))
    config = agent_config(mtls_broker, mqtt={"tls": True, "ca_file": str(device / "ca.pem"),
                                             "cert_file": str(device / "client.pem"),
                                             "key_file": str(device / "client.key")})
    config.write_text(config.read_text().replace('device_id = "dev1"', 'device_id = "a"'))
    start_agent(config)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(
            json.loads(m.payload).get("state") == "online" for m in admin.messages):
        time.sleep(0.1)
    assert any(json.loads(m.payload).get("state") == "online" for m in admin.messages)
    admin.close()
    certs = _certs(mtls_broker, "admin")
    proc = edgekit_cli("fleet", "status", "--broker", mtls_broker.url, "--fleet", FLEET, "--json",
                       "--wait", "1", "--tls", "--ca-file", certs["ca_certs"], "--cert-file",
                       certs["certfile"], "--key-file", certs["keyfile"])
    assert proc.returncode == 0, proc.stderr
    assert [(r["device"], r["state"]) for r in json.loads(proc.stdout)] == [("a", "online")]
