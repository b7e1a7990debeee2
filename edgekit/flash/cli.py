"""`edgekit flash`: the argparse part (edgekit/cli.py registers it)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from edgekit_agent.bundle.reader import open_bundle

from .. import ui
from ..errors import FlashError
from . import esp
from .ssh import DEFAULT_AGENT_CMD, SSH_ENV
from .uri import DEFAULT_BAUD, DEFAULT_TIMEOUT_S, SCHEMES, FlashOptions, flash, parse_uri


def add_parser(sub: Any) -> None:
    examples = "\n".join(f"  {s.example:<48} {', '.join(s.families)} bundles" for s in SCHEMES.values())
    p = sub.add_parser(
        "flash", help="put a bundle on a device (ssh://, dir://, serial://)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Copy a bundle to a device and have the device's own agent install it "
                    "(verify, A/B slot, self-test, rollback).\n\nTargets:\n" + examples
                    + f"\n\n{SSH_ENV} replaces the ssh command (like RSYNC_RSH).")
    p.add_argument("bundle", nargs="?", type=Path, metavar="BUNDLE")
    p.add_argument("--to", required=True, metavar="URI", help="where to flash (see above)")
    p.add_argument("--key", type=Path, metavar="PUB", help="ed25519 public key: the signature "
                   "is checked here and again by the device")
    p.add_argument("--firmware", type=Path, metavar="IMAGE",
                   help="ESP32 boards: write this firmware image with esptool first")
    p.add_argument("--firmware-address", type=lambda s: int(s, 0), default=esp.DEFAULT_ADDRESS,
                   metavar="ADDR", help="flash offset of --firmware (default 0x0: a merged image)")
    p.add_argument("--ssh-option", action="append", default=[], metavar="OPT",
                   help="extra `ssh -o OPT` (repeatable), e.g. IdentityFile=~/.ssh/pi")
    p.add_argument("--agent-cmd", default=DEFAULT_AGENT_CMD, metavar="CMD",
                   help="the agent command on the device (default: edgekit-agent on its PATH)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                   help="seconds to wait for the device to answer")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")


def main(args: argparse.Namespace) -> int:
    if args.bundle is None and args.firmware is None:
        raise FlashError("give a BUNDLE to flash, --firmware IMAGE, or both")
    if args.timeout <= 0:
        raise FlashError(f"--timeout must be > 0 seconds, not {args.timeout:g}")
    show = args.progress if args.progress is not None else sys.stderr.isatty() and not args.json
    out: dict[str, Any] = {}
    lines = []
    if args.firmware is not None:
        out["firmware"] = _firmware(args, show)
        fw = out["firmware"]
        lines.append(f"wrote {args.firmware} ({fw['bytes']} B) to {fw['chip']} on {fw['port']} "
                     f"at {fw['address']:#x}")
    if args.bundle is not None:
        with ui.byte_progress(f"flash {args.bundle.name}", show) as bar:
            opts = FlashOptions(key=args.key, ssh_options=tuple(args.ssh_option),
                                agent_cmd=args.agent_cmd, timeout_s=args.timeout, progress=bar)
            result = flash(args.bundle, args.to, opts)
        out.update(result.to_dict())
        lines.append(result.render())
    if args.json:
        ui.print_json(out)
    else:
        print("\n".join(lines))
    return 0


def _firmware(args: argparse.Namespace, show: bool) -> dict[str, Any]:
    uri = parse_uri(args.to)
    if uri.scheme != "serial":
        raise FlashError(f"--firmware writes over serial:// (esptool); got {uri.scheme}://")
    board = open_bundle(args.bundle).manifest.target if args.bundle is not None else None
    plan = esp.plan_firmware(args.firmware, uri.path, baud=int(uri.params.get("baud", DEFAULT_BAUD)),
                             timeout_s=args.timeout, address=args.firmware_address, board=board)
    with ui.byte_progress(f"esptool {args.firmware.name}", show) as bar:
        return esp.flash_firmware(plan, bar)
