"""The README's "what a pack looks like": one real `edgekit pack` run, its output kept verbatim.

    python tools/bench/pack_example.py [--target rpi4] [--variants 3] [--out FILE]

Runs the CLI exactly as a user would (a subprocess, the built-in digits model) twice: once for
the table a person reads, once with ``--json`` for the figures. The JSON result holds the
command, its text output and the chosen recipe; run_all.py renders it into the README, so the
example there is always what this checkout prints. The last stdout line is one JSON object with
``target``, ``chosen`` (primary first), the primary's ``size_bytes`` and ``sqnr_db``, and
``variants``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

EDGEKIT = [sys.executable, "-m", "edgekit.cli"]


def pack(target: str, variants: int, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [*EDGEKIT, "pack", "example:digits", "--target", target, "-o", str(out),
           "--variants", str(variants), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          env={**os.environ, "NO_COLOR": "1", "TERM": "dumb"})
    if proc.returncode != 0:
        sys.exit(f"edgekit pack failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    return proc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="rpi4")
    ap.add_argument("--variants", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgekit-pack-example-") as tmp:
        text = pack(args.target, args.variants, Path(tmp) / "digits.ekb").stdout
        data = json.loads(pack(args.target, args.variants, Path(tmp) / "again.ekb", "--json").stdout)
    shown = f"edgekit pack example:digits --target {args.target} -o digits.ekb --variants {args.variants}"
    result: dict[str, Any] = {"command": shown, "text": text.replace(f"{tmp}/", ""),
                              **summary(args.target, data)}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary(args.target, data)))
    return 0


def summary(target: str, data: dict[str, Any]) -> dict[str, Any]:
    chosen = list(data["chosen"])
    primary = next(c for c in data["candidates"] if c["recipe"] == chosen[0])
    return {"target": target, "chosen": chosen, "size_bytes": primary["size_bytes"],
            "sqnr_db": primary["fidelity"].get("min_sqnr_db"), "variants": len(chosen)}


if __name__ == "__main__":
    sys.exit(main())
