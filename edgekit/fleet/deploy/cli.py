"""`edgekit deploy`: roll a bundle out to a fleet over MQTT, in waves.

    edgekit deploy BUNDLE --fleet NAME --broker HOST:PORT --key FLEET.key [--select k=v ...]
        [--waves 5,15,100] [--max-failure-rate F] [--min-devices N] [--timeout S] [--wait] [--json]
    edgekit deploy status [--fleet NAME] [--json]
    edgekit deploy cancel --fleet NAME [--key FLEET.key]

Devices are the fleet's retained ``status`` messages matching every ``--select`` (fields of the
status or of its running bundle: device, state, mode, target, name, version, ...). State lives
under ``--state DIR`` (default ``$EDGEKIT_CACHE_DIR/deploy`` or ``~/.cache/edgekit/deploy``); the
same command run again while its rollout is unfinished resumes it. Exit 0 only when every
selected device runs the bundle.
"""

from __future__ import annotations

import argparse
import queue
import sys
from pathlib import Path
from typing import Any

from edgekit_agent.bundle.signing import load_private_key
from edgekit_agent.errors import ConfigError
from edgekit_agent.telemetry import schema

from ... import ui
from ...defaults import DEFAULT_BROKER
from ..broker import add_auth_args, connect
from . import engine, transfer
from .rollout import RolloutOptions, parse_selectors, parse_waves, plan_waves, select
from .state import DB_FILE, RUNNING, StateDB, default_state_dir

SUBCOMMANDS = ("status", "cancel")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("deploy", help="roll a bundle out to a fleet over MQTT, in waves",
                       description="edgekit deploy BUNDLE | status | cancel")
    p.add_argument("target", metavar="BUNDLE|status|cancel")
    p.add_argument("--fleet", help="fleet name")
    p.add_argument("--broker", default=DEFAULT_BROKER, metavar="HOST:PORT",
                   help=f"MQTT broker (default {DEFAULT_BROKER})")
    p.add_argument("--key", type=Path, help="fleet ed25519 private key (signs offers, rollbacks)")
    p.add_argument("--select", action="append", default=[], metavar="KEY=VALUE",
                   help="only devices whose status has KEY=VALUE (repeatable)")
    p.add_argument("--waves", default="5,15,100", help="cumulative percentages (default 5,15,100)")
    p.add_argument("--max-failure-rate", type=float, default=0.2, metavar="F",
                   help="halt when failed/finished passes this after a wave (default 0.2)")
    p.add_argument("--min-devices", type=int, default=1, metavar="N",
                   help="finished devices before the failure rate counts (default 1)")
    p.add_argument("--timeout", type=float, default=600.0, metavar="S",
                   help="a device with no outcome this long after its offer fails (default 600)")
    p.add_argument("--wait", action="store_true",
                   help="also wait for devices that were offline to come back and finish")
    p.add_argument("--health-s", type=float, default=10.0, metavar="S",
                   help="health window after install (default 10)")
    p.add_argument("--max-error-rate", type=float, default=0.0,
                   help="inference error rate allowed in the health window (default 0)")
    p.add_argument("--max-latency-ratio", type=float, default=2.0,
                   help="p95 latency allowed vs before, plus --latency-slack-ms (default 2)")
    p.add_argument("--latency-slack-ms", type=float, default=5.0, metavar="MS",
                   help="absolute p95 slack added to --max-latency-ratio (default 5)")
    p.add_argument("--chunk-size", type=int, default=64 << 10, help="bytes per chunk (default 65536)")
    p.add_argument("--window", type=int, default=16, help="chunks per request (default 16)")
    p.add_argument("--allow-downgrade", action="store_true",
                   help="let devices install a bundle with a lower security_version (signed in "
                        "the offer, recorded in each device's install event)")
    p.add_argument("--state", type=Path, metavar="DIR", help="rollout state folder")
    add_auth_args(p)
    p.add_argument("--json", action="store_true", help="end with one JSON object")


def main(args: argparse.Namespace) -> int:
    if args.target == "status":
        return _status(args)
    if args.target == "cancel":
        return _cancel(args)
    return _deploy(args)


def _options(args: argparse.Namespace) -> RolloutOptions:
    return RolloutOptions(waves=parse_waves(args.waves), max_failure_rate=args.max_failure_rate,
                          min_devices=args.min_devices, timeout_s=args.timeout,
                          chunk_size=args.chunk_size, window=args.window, health_s=args.health_s,
                          max_error_rate=args.max_error_rate,
                          max_latency_ratio=args.max_latency_ratio,
                          latency_slack_ms=args.latency_slack_ms,
                          selectors=parse_selectors(args.select),
                          allow_downgrade=bool(getattr(args, "allow_downgrade", False)))


def _fleet(args: argparse.Namespace) -> str:
    if not args.fleet:
        raise ConfigError("a rollout goes to one fleet: give --fleet NAME", key="--fleet")
    return schema.check_name(args.fleet, "--fleet")


def _deploy(args: argparse.Namespace) -> int:
    fleet = _fleet(args)
    if args.key is None:
        raise ConfigError("offers and rollbacks are signed: give --key FLEET.key", key="--key")
    options = _options(args)  # every input is checked before anything is stored
    key = load_private_key(args.key)
    bundle = transfer.BundleFile.open(args.target if isinstance(args.target, Path)
                                      else Path(args.target))
    client, inbox = _connect(args, fleet)
    try:
        view = engine.Fleet()
        engine.gather(inbox, view, engine.SETTLE_S)
        folder = args.state or default_state_dir()
        if not (folder / DB_FILE).exists() and not select(view.statuses, options.selectors):
            raise _no_match(fleet, options, view)  # before anything is stored
        db = StateDB(folder)
        try:
            rollout = _resume_or_create(db, fleet, bundle, options, view)
            deployer = engine.Deployer(db, rollout, bundle, key, client, inbox, view,
                                       progress=not args.json)
            deployer.run(args.wait)
            summary = engine.report(db, rollout)
        finally:
            db.close()
    finally:
        client.loop_stop()
        client.disconnect()
    _print(summary, args.json)
    return 0 if len(summary["succeeded"]) == len(summary["devices"]) else 1


def _resume_or_create(db: StateDB, fleet: str, bundle: transfer.BundleFile,
                      options: RolloutOptions, view: engine.Fleet) -> Any:
    for r in db.rollouts(fleet, RUNNING):
        if r.sha256 == bundle.sha256:
            print(f"resuming rollout {r.id} of {r.version} on fleet {fleet}", flush=True,
                  file=sys.stderr)
            return r
        raise ConfigError(f"rollout {r.id} (version {r.version}) is still running on fleet {fleet}: "
                          f"`edgekit deploy cancel --fleet {fleet}` it first")
    devices = select(view.statuses, options.selectors)
    if not devices:
        raise _no_match(fleet, options, view)
    return db.create(fleet, str(bundle.path), bundle.sha256, bundle.bundle_id, bundle.version,
                     options, plan_waves(devices, options.waves))


def _no_match(fleet: str, options: RolloutOptions, view: engine.Fleet) -> ConfigError:
    seen = ", ".join(sorted(view.statuses)) or "none"
    return ConfigError(f"no device of fleet {fleet} matches (devices seen: {seen})",
                       key="--select", value=" ".join(f"{k}={v}" for k, v in options.selectors))


def _status(args: argparse.Namespace) -> int:
    db = StateDB(args.state or default_state_dir(), create=False)
    try:
        reports = [engine.report(db, r) for r in db.rollouts(args.fleet)]
    finally:
        db.close()
    if args.json:
        ui.print_json(reports)
    else:
        for r in reports:
            _print(r, False)
    return 0


def _cancel(args: argparse.Namespace) -> int:
    fleet = _fleet(args)
    key = load_private_key(args.key) if args.key else None
    db = StateDB(args.state or default_state_dir(), create=False)
    try:
        running = db.rollouts(fleet, RUNNING)
        if not running:
            raise ConfigError(f"no running rollout on fleet {fleet}", key="--fleet", value=fleet)
        client, _ = _connect(args, fleet)
        try:
            out = [{"rollout": r.id, "devices_told": engine.cancel_rollout(db, r, client, key)}
                   for r in running]
        finally:
            client.loop_stop()
            client.disconnect()
    finally:
        db.close()
    if args.json:
        ui.print_json(out)
    else:
        for o in out:
            print(f"cancelled {o['rollout']} (offers withdrawn: {', '.join(o['devices_told']) or 'none'})")
    return 0


def _connect(args: argparse.Namespace, fleet: str) -> tuple[Any, queue.Queue]:
    inbox: queue.Queue = queue.Queue()
    filters = [schema.subscription(fleet, "status"), schema.subscription(fleet, "event")]
    client = connect(args.broker, filters, lambda msg: inbox.put((msg.topic, bytes(msg.payload))),
                     tls=args.tls, ca_file=args.ca_file, username=args.username,
                     password_file=args.password_file)
    return client, inbox


def _print(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        ui.print_json(summary)
        return
    print(f"rollout {summary['rollout']}: {summary['version']} to fleet {summary['fleet']} - "
          f"{summary['status']}{' (' + summary['halt_reason'] + ')' if summary['halt_reason'] else ''}")
    failed = {f["device"]: f["reason"] for f in summary["failed"]}
    rows = []
    for w in summary["waves"]:
        for d in w["devices"]:
            state = ("succeeded" if d in summary["succeeded"] else "failed" if d in failed
                     else "rolled back" if d in summary["rolled_back"] else
                     "pending" if d in summary["pending"] else "skipped")
            rows.append((w["wave"], d, state, failed.get(d, "")))
    print(ui.table(["wave", "device", "state", "reason"], rows))
    print(f"{len(summary['succeeded'])}/{len(summary['devices'])} devices run the bundle")
