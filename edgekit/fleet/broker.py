"""The MQTT broker connection the fleet commands share.

``protocol`` is ``"5"``, ``"3.1.1"`` or ``"auto"`` (the default): MQTT 5 first, and MQTT 3.1.1
when the broker refuses version 5 (amqtt, older brokers). Nothing the fleet tools send needs
MQTT 5: request/response carries ``reply_to`` and ``correlation_id`` in the payload. On 3.1.1 a
shared subscription ``$share/GROUP/FILTER`` becomes a plain subscription to ``FILTER`` (3.1.1
has no shared subscriptions: every subscriber then gets every message).
"""

from __future__ import annotations

import argparse
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit_agent.cliutil import parse_broker
from edgekit_agent.errors import ConfigError, TransportError
from edgekit_agent.service.offload import no_delay

PROTOCOLS = ("auto", "5", "3.1.1")
_SHARE = "$share/"


def add_auth_args(p: argparse.ArgumentParser) -> None:
    """The broker login flags every fleet command takes (TLS, CA, user and password file)."""
    p.add_argument("--tls", action="store_true", help="connect with TLS")
    p.add_argument("--ca-file", type=Path, help="CA certificate for --tls")
    p.add_argument("--username", help="MQTT user name (with --password-file)")
    p.add_argument("--password-file", type=Path, help="file whose first line is the password")


@dataclass(frozen=True)
class _Security:
    tls: bool
    ca_file: Path | None
    cert_file: Path | None
    key_file: Path | None
    username: str | None
    password: str | None


def connect(broker: str, filters: list[str], on_message: Callable[[Any], None], *,
            tls: bool = False, ca_file: Path | None = None, username: str | None = None,
            password_file: Path | None = None, cert_file: Path | None = None,
            key_file: Path | None = None, protocol: str = "auto") -> Any:
    """A started paho client subscribed to ``filters`` (QoS 1), or TransportError.

    The client's ``edgekit_protocol`` attribute says which MQTT version was agreed."""
    if protocol not in PROTOCOLS:
        raise ConfigError("unknown MQTT protocol", key="--protocol", value=protocol,
                          allowed=PROTOCOLS)
    host, port = parse_broker(broker)
    security = _Security(tls, ca_file, cert_file, key_file, username,
                         read_password(password_file) if username else None)
    refused = ""
    for version in (("5", "3.1.1") if protocol == "auto" else (protocol,)):
        client, refused = _try_connect(host, port, filters, on_message, version, security)
        if client is not None:
            return client
        if not (protocol == "auto" and version == "5" and _is_version_refusal(refused)):
            break
    raise TransportError(f"broker {host}:{port} " + (f"refused the connection: {refused}"
                                                      if refused else "did not answer in 10 s"))


def plain_filter(topic_filter: str) -> str:
    """``$share/GROUP/FILTER`` -> ``FILTER`` (for MQTT 3.1.1); other filters unchanged."""
    if topic_filter.startswith(_SHARE):
        parts = topic_filter.split("/", 2)
        if len(parts) == 3:
            return parts[2]
    return topic_filter


def _is_version_refusal(reason: str) -> bool:
    return "protocol version" in reason.lower()


def _try_connect(host: str, port: int, filters: list[str], on_message: Callable[[Any], None],
                 version: str, sec: _Security) -> tuple[Any, str]:
    """(started client, "") or (None, why it was refused; "" for no answer)."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                         client_id=f"edgekit-fleet-{uuid.uuid4().hex[:12]}",
                         protocol=mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311)
    client.edgekit_protocol = version
    if version != "5":
        filters = [plain_filter(f) for f in filters]
    if sec.tls or sec.cert_file:
        try:
            client.tls_set(ca_certs=str(sec.ca_file) if sec.ca_file else None,
                           certfile=str(sec.cert_file) if sec.cert_file else None,
                           keyfile=str(sec.key_file) if sec.key_file else None)
        except (OSError, ValueError) as exc:
            raise TransportError(f"cannot set up TLS: {exc}") from None
    if sec.username:
        client.username_pw_set(sec.username, sec.password)
    subscribed, refused = threading.Event(), []

    def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            refused.append(str(reason))
            subscribed.set()
            return
        c.subscribe([(f, 1) for f in filters])

    client.on_connect = on_connect
    client.on_socket_open = no_delay
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_message = lambda c, u, msg: on_message(msg)
    try:
        client.connect(host, port, keepalive=30)
    except (OSError, ValueError) as exc:
        raise TransportError(f"cannot reach the broker {host}:{port}: {exc}") from None
    client.loop_start()
    if not subscribed.wait(10) or refused:
        client.loop_stop()
        client.disconnect()
        return None, refused[0] if refused else ""
    return client, ""


def read_password(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8").splitlines()[0].strip()
    except (OSError, UnicodeDecodeError, IndexError) as exc:
        raise ConfigError(f"cannot read the password file: {exc}", key="--password-file",
                          value=str(path)) from None
