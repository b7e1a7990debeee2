"""`edgekit demo [--quick] [--json] [--broker-kind auto|mosquitto|embedded] [--keep]`."""

from __future__ import annotations

import argparse
from typing import Any

from .. import ui
from .steps import BROKER_KINDS


def add_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="the whole story on this machine: pack, broker, devices, OTA, "
                       "traffic, overheat, fleet table; leaves no process behind")
    p.add_argument("--quick", action="store_true", help="shorter traffic phases (CI)")
    p.add_argument("--json", action="store_true",
                   help="narration on stderr; stdout is one JSON object (families_packed, devices, "
                   "ota_installed, mode_changes, offloaded_requests, lost_requests, seconds)")
    p.add_argument("--broker-kind", choices=BROKER_KINDS, default="auto",
                   help="auto: Mosquitto when installed, else the embedded amqtt (MQTT 3.1.1)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (configs, logs)")


def main(args: argparse.Namespace) -> int:
    from .run import DemoOptions, run_demo, summary_line
    from .steps import broker_choice

    broker_choice(args.broker_kind)  # a missing broker fails here, before packing
    result = run_demo(DemoOptions(quick=args.quick, as_json=args.json,
                                  broker_kind=args.broker_kind, keep=args.keep))
    if args.json:
        ui.print_json(result)
    else:
        print("\n" + summary_line(result))
    return 0
