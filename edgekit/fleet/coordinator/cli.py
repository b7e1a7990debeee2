"""`edgekit coordinator run`: registry, routing and the HTTP API until SIGTERM/SIGINT.

    edgekit coordinator run --broker HOST:PORT --fleet NAME --http HOST:PORT [--state DIR]
        [--name NAME] [--group NAME] [--energy-weight MS_PER_J] [--tls] [--ca-file F]
        [--username U] [--password-file F] [--rollouts DIR]

The first stdout line is ``coordinator NAME serving http://HOST:PORT`` (the real port when
``--http`` asks for port 0). Several coordinators of one ``--group`` share the offload
requests through an MQTT shared subscription; each keeps a full registry.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

from edgekit_agent.errors import ConfigError
from edgekit_agent.telemetry.schema import check_name

from ...defaults import DEFAULT_BROKER
from ..broker import add_auth_args
from ..deploy.state import default_state_dir
from .registry import Registry
from .routing import CostModel
from .server import CoordinatorHttp, parse_listen
from .service import Connection, Coordinator


def add_parser(sub: Any) -> None:
    p = sub.add_parser("coordinator", help="fleet registry, offload routing, /api and /metrics")
    csub = p.add_subparsers(dest="coordinator_command", metavar="SUBCOMMAND", required=True)
    r = csub.add_parser("run", help="run the coordinator until interrupted")
    r.add_argument("--broker", default=DEFAULT_BROKER, metavar="HOST:PORT",
                   help=f"MQTT broker (default {DEFAULT_BROKER})")
    r.add_argument("--fleet", required=True, help="fleet name")
    r.add_argument("--http", default="127.0.0.1:8480", metavar="HOST:PORT",
                   help="where to serve the dashboard (/), /api/... and /metrics "
                   "(default 127.0.0.1:8480)")
    r.add_argument("--state", type=Path, metavar="DIR", help="keep the registry in DIR (SQLite)")
    r.add_argument("--rollouts", type=Path, metavar="DIR",
                   help="show the rollouts `edgekit deploy --state DIR` keeps (default: deploy's "
                   "default state folder)")
    r.add_argument("--name", help="this coordinator's name (default: coordinator-<random>)")
    r.add_argument("--group", default="edgekit",
                   help="shared-subscription group of the coordinators that split requests")
    r.add_argument("--energy-weight", type=float, default=0.0, metavar="MS_PER_J",
                   help="add this many ms to a worker's cost per joule it spends an inference "
                   "(from its telemetry); 0 = route by latency only")
    add_auth_args(r)


def main(args: argparse.Namespace) -> int:
    fleet = check_name(args.fleet, "--fleet")
    # The ingest thread is busy most of the time on a big fleet; with the default 5 ms GIL
    # switch interval an offload request would wait that long for the routing thread to run.
    sys.setswitchinterval(0.0005)
    host, port = parse_listen(args.http)
    registry = Registry(fleet, args.state)
    name = args.name or f"coordinator-{uuid.uuid4().hex[:8]}"
    coordinator = Coordinator(registry, Connection(args.broker, args.tls, args.ca_file,
                                                   args.username, args.password_file),
                              name=name, group=args.group,
                              model=CostModel(energy_weight_ms_per_j=_weight(args.energy_weight)))
    http = CoordinatorHttp(coordinator, host, port, args.rollouts or default_state_dir())
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    coordinator.start()
    try:
        http.start()
        print(f"coordinator {name} serving {http.url}", flush=True)
        stop.wait()
    finally:
        http.stop()
        coordinator.stop()
    return 0


def _weight(value: float) -> float:
    if not 0.0 <= value <= 1e6:
        raise ConfigError("must be a number of ms per joule in 0..1e6", key="--energy-weight",
                          value=value)
    return value
