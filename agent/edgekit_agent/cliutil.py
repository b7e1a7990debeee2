"""What both CLIs (`edgekit`, `edgekit-agent`) share: dispatch, and the error contract —
`error: …` on one line and exit 1 for any EdgekitError, 2 for usage errors, no traceback."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from .errors import EdgekitError
from .validate import printable

Handler = Callable[[argparse.Namespace], int]


def dispatch(parser: argparse.ArgumentParser, commands: dict[str, Handler],
             argv: list[str] | None = None) -> int:
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return commands[args.command](args) or 0
    except EdgekitError as exc:
        print(f"error: {printable(exc)}", file=sys.stderr)  # one line, no terminal escapes
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `… | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
