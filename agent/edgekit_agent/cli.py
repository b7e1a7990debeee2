"""`edgekit-agent` command line. Every EdgekitError becomes `error: …` and exit 1; usage errors exit 2.

    edgekit-agent init --device NAME [--fleet F] [--store DIR] [--broker HOST:PORT] [--key PUB] [-o FILE]
    edgekit-agent install BUNDLE (--store DIR | --config FILE) [--key PUB] [--allow-downgrade] [--json]
    edgekit-agent rollback --store DIR [--json]
    edgekit-agent status --store DIR [--json]
    edgekit-agent infer --store DIR --input FILE.npy|NAME=FILE.npy|FILE.npz [--variant V] [--json]
    edgekit-agent bench MODEL [--runs N] [--threads N] [--json]   (warm latency on this device)
    edgekit-agent serve --config FILE        (local HTTP API only)
    edgekit-agent run --config FILE          (the daemon: HTTP, power policy, MQTT telemetry)
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .cliutil import Handler, dispatch, parse_broker
from .config import AgentConfig
from .defaults import HTTP_PORT, SENSOR_KINDS
from .errors import ConfigError, InputError
from .init_config import InitOptions, write_config
from .service import daemon
from .service.agent import Agent
from .service.http_api import HttpApi
from .store.slots import BundleStore
from .validate import printable

DEFAULT_CONFIG = Path("/etc/edgekit/agent.toml")  # where the systemd unit reads it

COMMANDS: dict[str, Handler] = {}


def main(argv: list[str] | None = None) -> int:
    return dispatch(build_parser(), COMMANDS, argv)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgekit-agent", description="Run verified edgekit bundles on "
                                "this device: A/B bundle store, local inference API, telemetry.")
    p.add_argument("--version", action="version", version=f"edgekit-agent {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("init", help="write a first, working agent.toml for this device")
    s.add_argument("--device", required=True, help="this device's name (one MQTT topic level)")
    s.add_argument("--fleet", default="default", help="fleet name (default: default)")
    s.add_argument("--store", type=Path, default=Path("/var/lib/edgekit/store"),
                   help="bundle store folder, created (default /var/lib/edgekit/store)")
    s.add_argument("--broker", metavar="HOST:PORT", help="MQTT broker (default: MQTT off)")
    s.add_argument("--key", type=Path, help="fleet ed25519 public key: only signed bundles run")
    s.add_argument("--policy", type=Path, help="power policy TOML (default: none)")
    s.add_argument("--sensors", choices=SENSOR_KINDS, help="sensor kind (default: detected)")
    s.add_argument("--http-port", type=int, default=HTTP_PORT, help=f"default {HTTP_PORT}")
    s.add_argument("-o", "--out", type=Path, default=Path("agent.toml"), help="default agent.toml")
    s.add_argument("--force", action="store_true", help="replace an existing file")
    s = sub.add_parser("install", help="verify, self-test and activate a bundle (previous one kept)")
    s.add_argument("bundle", type=Path)
    _store_args(s, key=True, config=True)
    s.add_argument("--allow-downgrade", action="store_true",
                   help="install although its security_version is below the highest installed "
                        "(recorded in the install event)")
    s = sub.add_parser("rollback", help="make the previous bundle active again")
    _store_args(s)
    s = sub.add_parser("status", help="show the active and previous bundles")
    _store_args(s)
    s = sub.add_parser("infer", help="run the active bundle once on arrays from files")
    _store_args(s, key=True)
    s.add_argument("--input", action="append", required=True, metavar="FILE|NAME=FILE",
                   help=".npy (repeat in input order, or NAME=FILE) or one .npz keyed by input name")
    s.add_argument("--variant", help="model variant to run (default: the primary)")
    s.add_argument("--threads", type=int, help="interpreter threads")
    s = sub.add_parser("bench", help="time a model file on this device (warm p50/p95)")
    s.add_argument("model", type=Path, help=".tflite or .onnx file")
    s.add_argument("--runs", type=int, default=50, help="timed runs after a warm-up")
    s.add_argument("--threads", type=int, help="interpreter threads")
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    for name, text in (("serve", "serve the local HTTP inference API"),
                       ("run", "run the agent daemon (HTTP API, power policy, MQTT telemetry)")):
        s = sub.add_parser(name, help=text)
        s.add_argument("--config", required=True, type=Path, help="agent.toml")
    return p


def _store_args(p: argparse.ArgumentParser, key: bool = False, config: bool = False) -> None:
    p.add_argument("--store", required=not config, type=Path, help="bundle store folder")
    if config:
        p.add_argument("--config", type=Path, help="agent.toml: its [store] root and public_key "
                       f"(default: {DEFAULT_CONFIG} when it names the same store)")
    if key:
        p.add_argument("--key", type=Path, help="ed25519 public key; a valid signature is then required")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def command(fn: Handler) -> Handler:
    COMMANDS[fn.__name__.removeprefix("cmd_")] = fn
    return fn


def _print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def _store_and_key(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """--store/--key, completed from agent.toml: the device's configured key is never ignored."""
    config_path = args.config
    if config_path is None and DEFAULT_CONFIG.is_file() and args.key is None:
        config_path = DEFAULT_CONFIG
    if config_path is None:
        if args.store is None:
            raise ConfigError("give --store DIR or --config agent.toml")
        return args.store, args.key
    store = AgentConfig.from_file(config_path).store
    if args.store is not None and args.config is None and args.store.resolve() != store.root.resolve():
        return args.store, args.key  # the default config describes another store
    return args.store or store.root, args.key or store.public_key


@command
def cmd_init(args: argparse.Namespace) -> int:
    config = write_config(InitOptions(
        device_id=args.device, fleet=args.fleet, out=args.out, store=args.store,
        broker=parse_broker(args.broker) if args.broker else None, public_key=args.key,
        sensors=args.sensors or "", policy=args.policy, http_port=args.http_port,
        force=args.force))
    mqtt = f"{config.mqtt.host}:{config.mqtt.port}" if config.mqtt.enabled else "off"
    print(f"wrote {args.out}: device {config.device_id}, fleet {config.fleet}, store "
          f"{config.store.root}, MQTT {mqtt}, sensors {config.sensors.kind}\n"
          f"next: edgekit-agent install BUNDLE --config {args.out} && "
          f"edgekit-agent run --config {args.out}")
    return 0


@command
def cmd_install(args: argparse.Namespace) -> int:
    root, key = _store_and_key(args)
    result = BundleStore(root).install(args.bundle, key, allow_downgrade=args.allow_downgrade)
    if args.json:
        _print_json(result.to_dict())
        return 0
    st = result.selftest
    check = (f"{st.vectors} self-test vector(s), max error {st.max_abs_error:.3g}"
             if st.kind == "vectors" else "smoke test on zeros")
    signature = f"checked, key {result.key_id}" if result.signature_checked else "not checked"
    print(printable(f"installed {result.name} {result.version} ({result.bundle_id}) in slot "
                    f"{result.slot}: {check}; signature {signature}; "
                    f"previous {result.previous_bundle_id or 'none'}"))
    return 0


@command
def cmd_rollback(args: argparse.Namespace) -> int:
    store = BundleStore(args.store)
    active = store.rollback("manual (edgekit-agent rollback)")
    if args.json:
        _print_json(store.status().to_dict())
    else:
        print(printable(f"rolled back: {active} is active"))
    return 0


@command
def cmd_status(args: argparse.Namespace) -> int:
    status = BundleStore(args.store).status()
    if args.json:
        _print_json(status.to_dict())
        return 0
    lines = [f"store     {status.root}"]
    for label, slot in (("active", status.active), ("previous", status.previous)):
        if slot is None:
            lines.append(f"{label:<9} none")
        elif slot.error:
            lines.append(f"{label:<9} slot {slot.slot}: unusable ({slot.error})")
        else:
            lines.append(f"{label:<9} slot {slot.slot}: {slot.name} {slot.version} ({slot.bundle_id})")
    lines.append(f"failures  {status.recent_failures} of {status.max_failures} within "
                 f"{status.failure_window_s:g} s")
    if status.last_event:
        ev = status.last_event
        lines.append(f"last      {ev.get('event')} of {ev.get('bundle_id')}"
                     + (f" ({ev['reason']})" if ev.get("reason") else ""))
    print("\n".join(printable(line) for line in lines))
    return 0


@command
def cmd_infer(args: argparse.Namespace) -> int:
    inputs = _read_inputs(args.input)
    with Agent(args.store, public_key=args.key, threads=args.threads, variant=args.variant) as agent:
        outputs = agent.infer(inputs)
        bid = agent.bundle_id
    if args.json:
        _print_json({"bundle_id": bid, "outputs": {k: v.tolist() for k, v in outputs.items()}})
        return 0
    for name, value in outputs.items():
        top = int(np.argmax(value.reshape(value.shape[0], -1)[0])) if value.size else None
        shown = np.array2string(value.ravel()[:10], precision=4, separator=", ")
        print(f"{name} {list(value.shape)} argmax={top} {shown}{' …' if value.size > 10 else ''}")
    return 0


def _read_inputs(specs: list[str]) -> dict[str, np.ndarray] | list[np.ndarray]:
    if len(specs) == 1 and specs[0].endswith(".npz") and "=" not in specs[0]:
        return dict(_load_array_file(specs[0], npz=True))
    named = [s.split("=", 1) for s in specs if "=" in s]
    if named and len(named) != len(specs):
        raise InputError("give every --input as NAME=FILE, or none of them")
    if named:
        return {name: _load_array_file(path) for name, path in named}
    return [_load_array_file(path) for path in specs]


def _load_array_file(path: str, npz: bool = False) -> Any:
    try:
        data = np.load(path, allow_pickle=False)
        if npz:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise InputError(f"{path}: not an .npz archive")
            with data:
                return {k: data[k] for k in data.files}
        if not isinstance(data, np.ndarray):
            raise InputError(f"{path}: an .npz needs to be the only --input")
        return data
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, EOFError) as exc:
        raise InputError(f"{path}: not a numpy array file ({exc})") from None


@command
def cmd_bench(args: argparse.Namespace) -> int:
    from .runtime.bench import bench_file

    result = bench_file(args.model, args.runs, args.threads)
    if args.json:
        _print_json(result.to_dict())
    else:
        print(f"{args.model}: {result.format} on {result.runtime} ({result.machine}), "
              f"{result.runs} runs: p50 {result.p50_ms:.3f} ms, p95 {result.p95_ms:.3f} ms")
    return 0


@command
def cmd_serve(args: argparse.Namespace) -> int:
    config = AgentConfig.from_file(args.config)
    stop = _stop_on_signal()  # before anything is served: a client may stop us at once
    with Agent.from_config(config) as agent:
        api = HttpApi.from_config(agent, config).start()
        print(printable(f"edgekit-agent: serving {agent.manifest.name} {agent.manifest.version} "
                        f"({agent.bundle_id}) on {api.url}"), file=sys.stderr, flush=True)
        while not stop.wait(3600):
            pass
        api.stop()
    return 0


def _stop_on_signal() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


@command
def cmd_run(args: argparse.Namespace) -> int:
    return daemon.run(AgentConfig.from_file(args.config)) or 0


if __name__ == "__main__":
    sys.exit(main())
