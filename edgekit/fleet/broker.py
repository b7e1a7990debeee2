"""The MQTT broker connection the fleet commands share."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgekit_agent.cliutil import parse_broker
from edgekit_agent.errors import ConfigError, TransportError


def connect(broker: str, filters: list[str], on_message: Callable[[Any], None], *,
            tls: bool = False, ca_file: Path | None = None, username: str | None = None,
            password_file: Path | None = None) -> Any:
    """A started paho client subscribed to ``filters`` (QoS 1), or TransportError."""
    import paho.mqtt.client as mqtt

    host, port = parse_broker(broker)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                         client_id=f"edgekit-fleet-{uuid.uuid4().hex[:12]}", protocol=mqtt.MQTTv5)
    if tls:
        client.tls_set(ca_certs=str(ca_file) if ca_file else None)
    if username:
        client.username_pw_set(username, _read_password(password_file))
    subscribed, refused = threading.Event(), []

    def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            refused.append(str(reason))
            subscribed.set()
            return
        c.subscribe([(f, 1) for f in filters])

    client.on_connect = on_connect
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_message = lambda c, u, msg: on_message(msg)
    try:
        client.connect(host, port, keepalive=30)
    except (OSError, ValueError) as exc:
        raise TransportError(f"cannot reach the broker {host}:{port}: {exc}") from None
    client.loop_start()
    if not subscribed.wait(10) or refused:
        client.loop_stop()
        raise TransportError(f"broker {host}:{port} " + (f"refused the connection: {refused[0]}"
                                                          if refused else "did not answer in 10 s"))
    return client


def _read_password(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8").splitlines()[0].strip()
    except (OSError, UnicodeDecodeError, IndexError) as exc:
        raise ConfigError(f"cannot read the password file: {exc}", key="--password-file",
                          value=str(path)) from None

