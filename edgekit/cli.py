"""`edgekit` command line. Every EdgekitError becomes `error: …` and exit 1; usage errors exit 2.

The handlers of ``pack``, ``recipes`` and ``targets`` (and ``--preprocess`` parsing) import the
packer, the targets and the dataset when they run: those pull in LiteRT and flatbuffers (+0.08 s
of 0.48 s measured for `edgekit --help`; onnx, TensorFlow, onnx2tf, ai-edge-quantizer and Vela
stay deferred further down), and `edgekit --help` must not pay for them. With ``edgekit.pack``
in ``__init__`` these are the package's only deferred project imports; nothing below imports
this module, so they cannot close a cycle.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from edgekit_agent.bundle.reader import open_bundle
from edgekit_agent.bundle.signing import generate_keypair
from edgekit_agent.cliutil import Handler, dispatch
from edgekit_agent.validate import printable

from . import __version__, ui
from .defaults import RUNTIME_CHOICES
from .demo import cli as demo_cli
from .errors import CalibrationError, ConfigError
from .examples import EXAMPLES
from .flash import cli as flash_cli
from .fleet import cli as fleet_cli
from .fleet.coordinator import cli as coordinator_cli
from .fleet.deploy import cli as deploy_cli
from .report import render_manifest

_SHAPE_ARG = re.compile(r"^([^:]+):(\d+(?:,\d+)*)$")

COMMANDS: dict[str, Handler] = {}


def main(argv: list[str] | None = None) -> int:
    return dispatch(build_parser(), COMMANDS, argv)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgekit", description="Pack ML models into signed, "
                                "measured bundles for CPU, Edge TPU, Ethos-U NPU and MCU targets.")
    p.add_argument("--version", action="version", version=f"edgekit {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for register in (_pack, _recipes, _inspect, _verify, _targets, _keygen, _examples, _fleet,
                     _flash, _deploy, coordinator_cli.add_parser, _demo):
        register(sub)
    return p


def command(fn: Handler) -> Handler:
    COMMANDS[fn.__name__.removeprefix("cmd_")] = fn
    return fn


# --- pack -------------------------------------------------------------------------------------

def _pack(sub: Any) -> None:
    p = sub.add_parser(
        "pack",
        help="compress, quantize and fit a model to a target; write a bundle",
        description="Search recipes and keep the least lossy one that fits the target's "
        "budgets (ties within 0.5 dB: smaller, then faster; on CPU targets a candidate "
        "predicted <= 0.8x as slow wins). MODEL is a .onnx/.tflite file or example:NAME.",
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--target", required=True, help="target profile name (see `edgekit targets`)")
    p.add_argument("-o", "--out", required=True, type=Path, help="bundle to write (.ekb)")
    p.add_argument("--calib", help="calibration data: .npz, .npy, or a folder of .npy/.npz/images")
    p.add_argument("--eval", dest="eval_data",
                   help="held-out evaluation data (default: part of --calib)")
    p.add_argument("--labels", help="labels (.npy/.txt) for the evaluation data")
    p.add_argument("--max-drop", type=float,
                   help="max accuracy drop as a fraction (0.01 = 1 point)")
    p.add_argument("--min-sqnr", type=float, help="min SQNR in dB vs the float model")
    p.add_argument("--recipe", help="force one recipe (see `edgekit recipes`)")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME:D0,D1,...",
                   help="freeze a dynamic input shape (repeatable)")
    p.add_argument("--input-value", action="append", default=[], metavar="NAME=VALUE",
                   help="freeze an input to a constant, e.g. a sample rate sr=16000 (repeatable)")
    p.add_argument("--state", action="append", default=[], metavar="IN=OUT",
                   help="recurrent state: output OUT is fed back as input IN across samples "
                        "(default: obvious pairs such as state/stateN)")
    p.add_argument("--profile-on", metavar="ssh://[user@]host[:port]",
                   help="time the candidates on that board with its edgekit-agent")
    p.add_argument("--ssh-option", action="append", default=[], metavar="OPT",
                   help="extra ssh -o option for --profile-on (repeatable)")
    p.add_argument("--agent-cmd", default="edgekit-agent",
                   help="the agent command on the --profile-on board")
    p.add_argument("--synthetic-calib", action="store_true",
                   help="allow calibration on generated data (flagged in the report)")
    p.add_argument("--preprocess", metavar="SPEC", help="for image folders: "
                   "size=HxW,mean=a/b/c,std=a/b/c,layout=nhwc|nchw,gray")
    p.add_argument("--variants", type=int, default=1, help="keep the best N fitting candidates")
    p.add_argument("--split", action="store_true",
                   help="also ship head/tail variants per cut (ONNX), for split execution")
    p.add_argument("--runtime", choices=RUNTIME_CHOICES, default="auto",
                   help="CPU targets with ONNX input: auto measures both (needs the convert extra)")
    p.add_argument("--name", help="bundle name (default: the model file's stem)")
    p.add_argument("--version", dest="bundle_version", default="1", help="bundle version string")
    p.add_argument("--security-version", type=int, metavar="N",
                   help="anti-rollback counter: a device refuses bundles below the highest it "
                        "installed (default: the current Unix time, so a newer pack is larger)")
    p.add_argument("--sign", metavar="KEY", help="ed25519 private key (from `edgekit keygen`)")
    p.add_argument("--targets-dir", action="append", default=[],
                   help="extra folder of target profiles")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


@command
def cmd_pack(args: argparse.Namespace) -> int:
    from .packer import PackOptions, pack  # deferred (LiteRT): see the module docstring

    opts = PackOptions(model=args.model, target=args.target, out=args.out, calib=args.calib,
                       eval_data=args.eval_data, labels=args.labels, max_drop=args.max_drop,
                       min_sqnr=args.min_sqnr, recipe=args.recipe,
                       input_shapes=parse_input_shapes(args.input_shape),
                       input_values=parse_input_values(args.input_value),
                       states=parse_states(args.state), profile_on=args.profile_on,
                       ssh_options=tuple(args.ssh_option), agent_cmd=args.agent_cmd,
                       synthetic_calib=args.synthetic_calib,
                       variants=args.variants, split=args.split, sign_key=args.sign,
                       preprocess=parse_preprocess(args.preprocess),
                       name=args.name, version=args.bundle_version, runtime=args.runtime,
                       security_version=args.security_version,
                       targets_dirs=tuple(args.targets_dir), show_progress=not args.json)
    result = pack(opts)
    if args.json:
        ui.print_json(result.to_dict())
    else:
        print(result.render())
    return 0


def parse_input_shapes(items: list[str]) -> dict[str, tuple[int, ...]]:
    """``--input-shape`` values (repeatable), ``["NAME:1,3,224,224", ...]``, as
    ``{NAME: (1, 3, 224, 224)}``."""
    shapes = {}
    for item in items:
        m = _SHAPE_ARG.match(item.strip())
        if not m:
            raise ConfigError("expected NAME:D0,D1,...", key="--input-shape", value=item)
        shapes[m.group(1)] = tuple(int(d) for d in m.group(2).split(","))
    return shapes


def parse_preprocess(text: str | None) -> Any:
    """``--preprocess size=224x224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225,layout=nchw,gray``
    as a :class:`edgekit.dataset.Preprocess` (None when not given)."""
    from .dataset import Preprocess

    if text is None:
        return None
    kwargs: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        try:
            kwargs.update(_preprocess_item(key, value))
        except ValueError:
            raise CalibrationError(f"bad --preprocess item {part!r} (keys: size=HxW, "
                                   "mean=a/b/c, std=a/b/c, layout=nhwc|nchw, gray)") from None
    return Preprocess(**kwargs)


def _preprocess_item(key: str, value: str) -> dict[str, Any]:
    if key == "size":
        h, w = value.lower().split("x")
        return {"size": (int(h), int(w))}
    if key in ("mean", "std"):
        return {key: tuple(float(v) for v in value.split("/"))}
    if key == "layout" and value in ("nhwc", "nchw"):
        return {"layout": value}
    if key == "gray" and not value:
        return {"grayscale": True}
    raise ValueError(key)


def parse_input_values(items: list[str]) -> dict[str, int | float]:
    """``--input-value`` values, ``["sr=16000", "gain=0.5"]``, as ``{"sr": 16000, "gain": 0.5}``."""
    values: dict[str, int | float] = {}
    for item in items:
        name, sep, text = item.partition("=")
        try:
            if not (sep and name.strip()):
                raise ValueError
            number = float(text)
        except ValueError:
            raise ConfigError("expected NAME=NUMBER", key="--input-value", value=item) from None
        values[name.strip()] = int(number) if number.is_integer() and "." not in text else number
    return values


def parse_states(items: list[str]) -> tuple[tuple[str, str], ...]:
    """``--state`` values, ``["state=stateN"]``, as ``(("state", "stateN"),)``."""
    pairs = []
    for item in items:
        src, sep, dst = (part.strip() for part in item.partition("="))
        if not (sep and src and dst):
            raise ConfigError("expected INPUT=OUTPUT", key="--state", value=item)
        pairs.append((src, dst))
    return tuple(pairs)


def _recipes(sub: Any) -> None:
    p = sub.add_parser("recipes",
                       help="list the recipe ladder the packer searches, least lossy first")
    p.add_argument("--json", action="store_true", help="print the ladder as JSON")


@command
def cmd_recipes(args: argparse.Namespace) -> int:
    from .packer import LADDER

    if args.json:
        ui.print_json([r.to_dict() for r in LADDER])
    else:
        print(ui.table(["recipe", "description"], [(r.name, r.description) for r in LADDER]))
    return 0


# --- inspect / verify -------------------------------------------------------------------------

def _inspect(sub: Any) -> None:
    p = sub.add_parser("inspect", help="show a bundle's manifest and evidence")
    p.add_argument("bundle", type=Path)
    p.add_argument("--key", help="also check the signature with this public key")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")


@command
def cmd_inspect(args: argparse.Namespace) -> int:
    bundle = open_bundle(args.bundle, args.key)
    if args.json:
        ui.print_json(bundle.manifest.to_dict())
    else:
        print("\n".join(printable(line) for line in render_manifest(bundle).split("\n")))
    return 0


def _verify(sub: Any) -> None:
    p = sub.add_parser("verify", help="check a bundle's signature and every member's hash")
    p.add_argument("bundle", type=Path)
    p.add_argument("--key", help="ed25519 public key; without it only hashes are checked")


@command
def cmd_verify(args: argparse.Namespace) -> int:
    b = open_bundle(args.bundle, args.key)
    sig = (f"signature OK (key {b.key_id})" if b.signature_checked
           else "signed, signature not checked (no --key)" if b.signed else "unsigned")
    print(f"OK {args.bundle}: {len(b.manifest.members)} members, hashes OK, {sig}")
    return 0


# --- targets / keygen / examples --------------------------------------------------------------

def _targets(sub: Any) -> None:
    p = sub.add_parser("targets", help="list target profiles and their budgets")
    p.add_argument("--targets-dir", action="append", default=[], help="extra folder of profiles")
    p.add_argument("--json", action="store_true", help="print the profiles as JSON")


@command
def cmd_targets(args: argparse.Namespace) -> int:
    from .targets import load_profiles

    profiles = load_profiles(args.targets_dir)
    if args.json:
        ui.print_json([p.to_dict() for p in profiles.values()])
        return 0
    rows = [(p.name, p.family, p.runtime, p.accelerator or p.cpu, ui.human_bytes(p.flash_bytes),
             ui.human_bytes(p.ram_bytes), ",".join(p.dtypes), p.power.active_w)
            for p in profiles.values()]
    print(ui.table(["target", "family", "runtime", "accelerator/cpu", "flash", "ram", "dtypes",
                    "active W"], rows))
    return 0


def _keygen(sub: Any) -> None:
    p = sub.add_parser("keygen", help="make an ed25519 key pair: PREFIX.key and PREFIX.pub")
    p.add_argument("--out", required=True, metavar="PREFIX", help="write PREFIX.key and PREFIX.pub")


@command
def cmd_keygen(args: argparse.Namespace) -> int:
    key, pub = generate_keypair(args.out)
    print(f"wrote {key} (private, keep secret) and {pub} (public, give to devices)")
    return 0


def _examples(sub: Any) -> None:
    p = sub.add_parser("examples", help="list the built-in example models and their data files")
    p.add_argument("--json", action="store_true", help="print the examples as JSON")


@command
def cmd_examples(args: argparse.Namespace) -> int:
    if args.json:
        ui.print_json([e.to_dict() for e in EXAMPLES.values()])
        return 0
    for e in EXAMPLES.values():
        print(f"{e.name}: {e.description}")
        for key in ("onnx", "tflite", "calib", "eval", "labels"):
            print(f"  {key:7s} {getattr(e, key)}")
    return 0


# --- fleet ----------------------------------------------------------------------------------------

def _fleet(sub: Any) -> None:
    fleet_cli.add_parser(sub)


@command
def cmd_fleet(args: argparse.Namespace) -> int:
    return fleet_cli.main(args)


@command
def cmd_coordinator(args: argparse.Namespace) -> int:
    return coordinator_cli.main(args)


# --- flash ----------------------------------------------------------------------------------------

def _flash(sub: Any) -> None:
    flash_cli.add_parser(sub)


@command
def cmd_flash(args: argparse.Namespace) -> int:
    return flash_cli.main(args)


# --- deploy ---------------------------------------------------------------------------------------

def _deploy(sub: Any) -> None:
    deploy_cli.add_parser(sub)


@command
def cmd_deploy(args: argparse.Namespace) -> int:
    return deploy_cli.main(args)


# --- demo -----------------------------------------------------------------------------------------

def _demo(sub: Any) -> None:
    demo_cli.add_parser(sub)


@command
def cmd_demo(args: argparse.Namespace) -> int:
    return demo_cli.main(args)


if __name__ == "__main__":
    sys.exit(main())
