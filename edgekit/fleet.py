"""`edgekit fleet`: watch devices and send them commands over MQTT.

    edgekit fleet status [--broker HOST:PORT] [--fleet NAME] [--wait S] [--watch] [--json]
    edgekit fleet cmd DEVICE ACTION [--arg KEY=VALUE ...] --key FLEET.key [--fleet NAME] [--json]

``status`` subscribes to every device's retained ``status`` and live ``telemetry`` (topics and
payloads from :mod:`edgekit_agent.schema`), collects for ``--wait`` seconds and prints one table;
``--watch`` keeps printing (a JSON line per refresh with ``--json``). ``cmd`` signs a command
with the fleet's ed25519 key (the key that signs bundles), publishes it and waits for the
device's ``cmd_result``/``cmd_error`` event with the same correlation id.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit_agent import schema
from edgekit_agent.errors import ConfigError, TransportError

from . import ui
from edgekit_agent.signing import load_private_key

DEFAULT_BROKER = "localhost:1883"


def add_parser(sub: Any) -> None:
    p = sub.add_parser("fleet", help="watch devices and send them commands over MQTT")
    fleet_sub = p.add_subparsers(dest="fleet_command", metavar="SUBCOMMAND", required=True)

    s = fleet_sub.add_parser("status", help="table of devices: online/offline, mode, temperature, "
                             "latency, bundle")
    _connection_args(s)
    s.add_argument("--wait", type=float, default=2.0, metavar="S",
                   help="seconds to collect before printing (default 2)")
    s.add_argument("--watch", action="store_true", help="keep printing until interrupted")
    s.add_argument("--interval", type=float, default=1.0, help="seconds between --watch refreshes")
    s.add_argument("--json", action="store_true", help="JSON (one line per refresh with --watch)")

    c = fleet_sub.add_parser("cmd", help="send a signed command to a device and wait for its answer")
    c.add_argument("device")
    c.add_argument("action", choices=sorted(schema.ACTIONS))
    c.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                   help="command argument (numbers are parsed), e.g. --arg mode=eco")
    c.add_argument("--key", required=True, type=Path, help="fleet ed25519 private key (PREFIX.key)")
    c.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer")
    _connection_args(c)
    c.add_argument("--json", action="store_true")


def _connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", default=DEFAULT_BROKER, metavar="HOST:PORT",
                   help=f"MQTT broker (default {DEFAULT_BROKER})")
    p.add_argument("--fleet", default="+", help="fleet name (default: every fleet)")
    p.add_argument("--tls", action="store_true", help="connect with TLS")
    p.add_argument("--ca-file", type=Path, help="CA certificate for --tls")
    p.add_argument("--username")
    p.add_argument("--password-file", type=Path, help="file whose first line is the password")


def main(args: argparse.Namespace) -> int:
    if args.fleet_command == "status":
        return _status(args)
    return _cmd(args)


# --- the device table ----------------------------------------------------------------------------

@dataclass
class Device:
    fleet: str
    device: str
    status: dict[str, Any] = field(default_factory=dict)
    telemetry: dict[str, Any] = field(default_factory=dict)
    seen: float = 0.0  # wall clock when the device last spoke (0: unknown)

    def row(self, now: float) -> dict[str, Any]:
        st, tm = self.status, self.telemetry
        bundle = st.get("bundle") or tm.get("bundle") or {}
        inference = tm.get("inference") or {}
        latency = inference.get("latency_ms") or {}
        sensors = tm.get("sensors") or {}
        energy = tm.get("energy") or {}
        online = st.get("state") == "online"
        return {"fleet": self.fleet, "device": self.device, "state": st.get("state", "unknown"),
                "mode": tm.get("mode") if online and tm else st.get("mode"),
                "temperature_c": sensors.get("temperature_c"), "battery_pct": sensors.get("battery_pct"),
                "inferences_per_s": inference.get("per_s"), "latency_p50_ms": latency.get("p50"),
                "latency_p95_ms": latency.get("p95"), "errors": inference.get("errors"),
                "energy_per_inference_j": energy.get("per_inference_j"),
                "bundle": bundle.get("name"), "bundle_version": bundle.get("version"),
                "bundle_id": bundle.get("id"), "variant": bundle.get("variant"),
                "queue_dropped_total": (tm.get("queue") or {}).get("dropped_total"),
                "last_seen_s": round(now - self.seen, 1) if self.seen else None}


class FleetView:
    """The latest status and telemetry of every device seen, fed by MQTT messages."""

    def __init__(self) -> None:
        self.devices: dict[tuple[str, str], Device] = {}
        self.ignored = 0
        self._lock = threading.Lock()

    def feed(self, topic: str, payload: bytes, now: float | None = None, retained: bool = False) -> None:
        try:
            fleet, device, kind = schema.parse_topic(topic)
            obj = schema.decode(payload, kind)
        except TransportError:
            self.ignored += 1
            return
        with self._lock:
            d = self.devices.setdefault((fleet, device), Device(fleet, device))
            if kind == "status":
                d.status = obj  # arrival order: the last will (seq 0) must win over an older online
            elif kind == "telemetry" and obj["seq"] >= d.telemetry.get("seq", -1):
                d.telemetry = obj  # replayed backlog must not hide the newest reading
            if obj.get("will"):
                return  # the broker speaks for a vanished device; it was composed at connect time
            # A retained message may be old: trust its own timestamp, not its arrival.
            spoke = obj["ts"] if retained else (time.time() if now is None else now)
            d.seen = max(d.seen, spoke)

    def rows(self, now: float | None = None) -> list[dict[str, Any]]:
        now = time.time() if now is None else now
        with self._lock:
            return [self.devices[k].row(now) for k in sorted(self.devices)]


COLUMNS = (("fleet", "fleet"), ("device", "device"), ("state", "state"), ("mode", "mode"),
           ("temperature_c", "temp °C"), ("battery_pct", "batt %"), ("inferences_per_s", "inf/s"),
           ("latency_p50_ms", "p50 ms"), ("latency_p95_ms", "p95 ms"), ("bundle", "bundle"),
           ("bundle_version", "version"), ("variant", "variant"), ("last_seen_s", "seen s ago"))


def render(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no devices seen"
    return ui.table([title for _, title in COLUMNS], [[r[key] for key, _ in COLUMNS] for r in rows])


def _status(args: argparse.Namespace) -> int:
    view = FleetView()
    filters = [schema.subscription(args.fleet, "status"), schema.subscription(args.fleet, "telemetry")]
    client = _connect(args, filters, lambda msg: view.feed(msg.topic, msg.payload, retained=msg.retain))
    try:
        time.sleep(max(args.wait, 0.0))
        _print_view(view, args.json, watch=args.watch)
        while args.watch:
            time.sleep(max(args.interval, 0.1))
            _print_view(view, args.json, watch=True)
    except KeyboardInterrupt:
        if not args.watch:
            raise
        # Ctrl-C is how --watch ends: not an error.
    finally:
        client.loop_stop()
        client.disconnect()
    if view.ignored and not args.json:
        print(f"({view.ignored} malformed message(s) ignored)", file=sys.stderr)
    return 0


def _print_view(view: FleetView, as_json: bool, watch: bool) -> None:
    rows = view.rows()
    if as_json:
        print(json.dumps(rows) if watch else json.dumps(rows, indent=2, sort_keys=True), flush=True)
        return
    if watch and sys.stdout.isatty():
        sys.stdout.write("\x1b[H\x1b[2J")
    print(render(rows), flush=True)


# --- commands -----------------------------------------------------------------------------------

def _cmd(args: argparse.Namespace) -> int:
    if args.fleet == "+":
        raise ConfigError("a command goes to one device: give --fleet NAME", key="--fleet")
    key = load_private_key(args.key)
    cmd_id = uuid.uuid4().hex
    topics = schema.Topics(args.fleet, args.device)
    payload = schema.sign_command(key, args.device, args.action, _parse_args(args.arg),
                                  seq=int(time.time() * 1000), command_id=cmd_id)
    answer: dict[str, Any] = {}
    done = threading.Event()

    def on_event(msg: Any) -> None:
        try:
            obj = schema.decode(msg.payload, "event")
        except TransportError:
            return
        if obj.get("correlation_id") == cmd_id and obj["kind"] in ("cmd_result", "cmd_error"):
            answer.update(obj)
            done.set()

    client = _connect(args, [topics.event], on_event)
    try:
        client.publish(topics.cmd, payload, qos=1).wait_for_publish(timeout=args.timeout)
        if not done.wait(args.timeout):
            raise TransportError(f"no answer from {args.fleet}/{args.device} within {args.timeout:g} s")
    finally:
        client.loop_stop()
        client.disconnect()
    if args.json:
        ui.print_json(answer)
    else:
        print(f"{answer['kind']}: {answer['message']}")
    return 0 if answer["kind"] == "cmd_result" else 1


def _parse_args(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError("must be KEY=VALUE", key="--arg", value=item)
        try:
            out[key] = json.loads(value) if value[:1].isdigit() or value[:1] == "-" else value
        except ValueError:
            out[key] = value
    return out


# --- the MQTT connection ------------------------------------------------------------------------

def parse_broker(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, "1883"
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not host or not 0 < number < 65536:
        raise ConfigError("must be HOST:PORT", key="--broker", value=text)
    return host.strip("[]"), number


def _connect(args: argparse.Namespace, filters: list[str], on_message: Any) -> Any:
    import paho.mqtt.client as mqtt

    host, port = parse_broker(args.broker)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                         client_id=f"edgekit-fleet-{uuid.uuid4().hex[:12]}", protocol=mqtt.MQTTv5)
    if args.tls:
        client.tls_set(ca_certs=str(args.ca_file) if args.ca_file else None)
    if args.username:
        client.username_pw_set(args.username, _read_password(args.password_file))
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

