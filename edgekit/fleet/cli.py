"""`edgekit fleet`: watch devices and send them commands over MQTT.

    edgekit fleet status [--broker HOST:PORT] [--fleet NAME] [--wait S] [--watch] [--json]
    edgekit fleet cmd DEVICE ACTION [--arg KEY=VALUE ...] --key FLEET.key [--fleet NAME] [--json]
    edgekit fleet broker-config --fleet NAME --devices a,b,c --out DIR [--tls] [--json]

``status`` and ``cmd`` take ``--protocol auto|5|3.1.1`` (auto: MQTT 5, or 3.1.1 when the
broker refuses 5).

``status`` subscribes to every device's retained ``status`` and live ``telemetry`` (topics and
payloads from :mod:`edgekit_agent.schema`), collects for ``--wait`` seconds and prints one table;
``--watch`` keeps printing (a JSON line per refresh with ``--json``). ``cmd`` signs a command
with the fleet's ed25519 key (the key that signs bundles), publishes it and waits for the
device's ``cmd_result``/``cmd_error`` event with the same correlation id. ``broker-config``
writes an authenticating Mosquitto configuration for a fleet (:mod:`.broker_config`).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from edgekit_agent.bundle.signing import load_private_key
from edgekit_agent.errors import ConfigError, TransportError
from edgekit_agent.telemetry import schema

from .. import ui
from ..defaults import DEFAULT_BROKER, MQTT_PORT
from . import broker_config
from .broker import PROTOCOLS, add_auth_args, connect
from .status import FleetView, render


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

    c = fleet_sub.add_parser("cmd",
                             help="send a signed command to a device and wait for its answer")
    c.add_argument("device")
    c.add_argument("action", choices=sorted(schema.ACTIONS))
    c.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                   help="command argument (numbers are parsed), e.g. --arg mode=eco")
    c.add_argument("--key", required=True, type=Path, help="fleet ed25519 private key (PREFIX.key)")
    c.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer")
    _connection_args(c)
    c.add_argument("--json", action="store_true", help="print the answer as one JSON object")
    _broker_config_parser(fleet_sub)


def _broker_config_parser(fleet_sub: Any) -> None:
    b = fleet_sub.add_parser("broker-config", help="write a Mosquitto config with per-device "
                             "credentials and ACLs (mosquitto.conf, acl, passwords)")
    b.add_argument("--fleet", required=True, help="fleet name (the ACL's topic prefix)")
    b.add_argument("--devices", required=True, help="comma-separated device names (= usernames)")
    b.add_argument("--out", required=True, type=Path, help="folder to write (must be empty)")
    b.add_argument("--conf-dir", type=Path, help="where the files will live on the broker host "
                   "(default: --out)")
    b.add_argument("--port", type=int, default=MQTT_PORT, help=f"plain listener (default {MQTT_PORT})")
    b.add_argument("--bind", default="0.0.0.0", help="listener address (default 0.0.0.0)")
    b.add_argument("--admin", default="admin", help="operator/coordinator user (default admin)")
    b.add_argument("--tls", action="store_true", help="mTLS listener instead: a fleet CA, a broker "
                   "certificate and one client certificate per device (CN = device)")
    b.add_argument("--tls-port", type=int, default=8883, help="mTLS listener port (default 8883)")
    b.add_argument("--host", action="append", dest="hosts", metavar="NAME",
                   help="broker host name/IP for the certificate and the snippets (repeatable; "
                   "default localhost, 127.0.0.1)")
    b.add_argument("--max-packet-bytes", type=int, default=broker_config.MQTT_MAX_PACKET_BYTES,
                   help=f"broker max_packet_size (default {broker_config.MQTT_MAX_PACKET_BYTES})")
    b.add_argument("--json", action="store_true", help="list the written files as JSON")


def _connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", default=DEFAULT_BROKER, metavar="HOST:PORT",
                   help=f"MQTT broker (default {DEFAULT_BROKER})")
    p.add_argument("--fleet", default="+", help="fleet name (default: every fleet)")
    add_auth_args(p)
    p.add_argument("--cert-file", type=Path, help="client certificate for mTLS (with --key-file)")
    p.add_argument("--key-file", type=Path, help="client private key for mTLS")
    p.add_argument("--protocol", choices=PROTOCOLS, default="auto",
                   help="MQTT version (default auto: 5, else 3.1.1 when the broker refuses 5)")


def main(args: argparse.Namespace) -> int:
    if args.fleet_command == "status":
        return _status(args)
    if args.fleet_command == "broker-config":
        return _broker_config(args)
    return _cmd(args)


def _broker_config(args: argparse.Namespace) -> int:
    out = args.out.resolve()
    plan = broker_config.BrokerPlan(
        fleet=args.fleet, devices=tuple(d.strip() for d in args.devices.split(",") if d.strip()),
        out=out, conf_dir=(args.conf_dir or out), port=args.port, bind=args.bind,
        admin=args.admin, tls=args.tls, tls_port=args.tls_port,
        hosts=tuple(args.hosts or ("localhost", "127.0.0.1")),
        max_packet_bytes=args.max_packet_bytes)
    summary = broker_config.write(plan)
    print(broker_config.to_json(summary) if args.json else broker_config.render(summary))
    return 0



def _status(args: argparse.Namespace) -> int:
    view = FleetView()
    filters = [schema.subscription(args.fleet, "status"),
               schema.subscription(args.fleet, "telemetry")]
    client = _connect(args, filters,
                      lambda msg: view.feed(msg.topic, msg.payload, retained=msg.retain))
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
    if view.rejected and not args.json:
        print(f"({view.rejected} message(s) with an implausible ts/seq or device refused)",
              file=sys.stderr)
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
            raise TransportError(
                f"no answer from {args.fleet}/{args.device} within {args.timeout:g} s"
            )
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


def _connect(args: argparse.Namespace, filters: list[str], on_message: Any) -> Any:
    return connect(args.broker, filters, on_message, tls=args.tls, ca_file=args.ca_file,
                   username=args.username, password_file=args.password_file,
                   cert_file=args.cert_file, key_file=args.key_file,
                   protocol=args.protocol)
