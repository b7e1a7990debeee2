"""What both CLIs (`edgekit`, `edgekit-agent`) share: dispatch, and the error contract —
`error: …` on one line and exit 1 for any EdgekitError, 2 for usage errors, no traceback."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from .defaults import MQTT_PORT
from .errors import ConfigError, EdgekitError
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


def parse_broker(text: str, key: str = "--broker") -> tuple[str, int]:
    """``HOST[:PORT]`` (IPv6 in brackets) -> (host, port); the port defaults to MQTT's."""
    host, sep, port = text.rpartition(":")
    if not sep or host.endswith(":") or (host.count(":") and not host.startswith("[")):
        host, port = text, str(MQTT_PORT)
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not host or not 0 < number < 65536:
        raise ConfigError("must be HOST:PORT", key=key, value=text)
    return host.strip("[]"), number
