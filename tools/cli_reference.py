"""Write the README's option reference from the real argument parsers, so it cannot drift.

    python tools/cli_reference.py [--check]

Renders every subcommand of ``edgekit`` and ``edgekit-agent`` (its arguments, then each option with
its help and default) between ``<!-- cli:begin -->`` and ``<!-- cli:end -->`` in README.md.
Options that several commands share with the same help (the MQTT connection flags) are listed
once. ``--check`` exits 1 when the README is not what this would write.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from edgekit.cli import build_parser as host_parser
from edgekit_agent.cli import build_parser as agent_parser

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"<!-- cli:begin -->.*?<!-- cli:end -->", re.S)
Command = tuple[str, argparse.ArgumentParser]


def commands(parser: argparse.ArgumentParser, path: str) -> Iterator[Command]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, sub in action.choices.items():
            yield from commands(sub, f"{path} {name}")


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


def describe(action: argparse.Action) -> str:
    text = (action.help or "").replace("%(default)s", str(action.default)).replace("|", "\\|")
    if action.choices and "{" not in text:
        text += f" (one of {', '.join(map(str, action.choices))})"
    return text


def flag(action: argparse.Action) -> str:
    names = ", ".join(action.option_strings)
    takes = action.nargs != 0
    return f"`{names} {action.metavar or action.dest.upper()}`" if takes else f"`{names}`"


def usage(path: str, parser: argparse.ArgumentParser) -> str:
    required = [f"{a.option_strings[0]} {a.metavar or a.dest.upper()}" for a in options(parser)
                if a.required]
    positional = [a.metavar or a.dest for a in parser._actions if not a.option_strings]
    return " ".join([path, *positional, *required, "[options]"])


def render() -> str:
    cmds = [*commands(host_parser(), "edgekit"), *commands(agent_parser(), "edgekit-agent")]
    seen = Counter((flag(a), describe(a)) for _, p in cmds for a in options(p))
    shared = {key for key, n in seen.items() if n >= 3 and key[1]}
    parts = ["Generated from the parsers by `python tools/cli_reference.py`. Options shared by "
             "several commands are listed once at the end."]
    for path, parser in cmds:
        rows = [(flag(a), describe(a)) for a in options(parser) if (flag(a), describe(a)) not in shared]
        parts += [f"\n**`{usage(path, parser)}`**"]
        if rows:
            parts += ["", "| option | meaning |", "|---|---|", *(f"| {f} | {d} |" for f, d in rows)]
    parts += ["\n**Shared options**", "", "| option | meaning |", "|---|---|",
              *(f"| {f} | {d} |" for f, d in sorted(shared))]
    return "<!-- cli:begin -->\n" + "\n".join(parts) + "\n<!-- cli:end -->"


def undocumented() -> list[str]:
    cmds = [*commands(host_parser(), "edgekit"), *commands(agent_parser(), "edgekit-agent")]
    return [f"{path} {a.option_strings[-1]}" for path, p in cmds for a in options(p) if not a.help]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if README.md is out of date")
    args = ap.parse_args(argv)
    text = README.read_text()
    if not BLOCK.search(text):
        sys.exit("README.md has no <!-- cli:begin --> … <!-- cli:end --> block")
    new = BLOCK.sub(lambda _: render(), text)
    if args.check:
        if new != text:
            print("README.md's option reference is out of date: run python tools/cli_reference.py")
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
