"""An embedded MQTT 3.1.1 broker (``amqtt``, pure Python) for machines without Mosquitto.

    python -m edgekit.fleet.embedded --bind 127.0.0.1:1883

The first stdout line is ``embedded MQTT 3.1.1 broker on HOST:PORT`` once the port is open; it
serves until SIGTERM/SIGINT. amqtt speaks MQTT 3.1.1 only (it answers an MQTT 5 CONNECT with
"unsupported protocol version") and is about 14x slower than Mosquitto: a zero-setup default
for the demo and a laptop, not the broker of a fleet. Anonymous clients are allowed: bind it to
loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any

from edgekit_agent.cliutil import parse_broker
from edgekit_agent.errors import EdgekitError


def broker_config(host: str, port: int) -> dict[str, Any]:
    """amqtt's configuration: one TCP listener, anonymous clients, no $SYS or packet logging."""
    return {"listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                        {"allow_anonymous": True}}}


async def serve(host: str, port: int, stop: asyncio.Event) -> None:
    from amqtt.broker import Broker

    broker = Broker(broker_config(host, port))
    await broker.start()
    print(f"embedded MQTT 3.1.1 broker on {host}:{port}", flush=True)
    await stop.wait()
    await broker.shutdown()


async def _main(host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(host, port, stop)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgekit.fleet.embedded",
                                description="embedded MQTT 3.1.1 broker (amqtt)")
    p.add_argument("--bind", default="127.0.0.1:1883", metavar="HOST:PORT")
    args = p.parse_args(argv)
    try:
        host, port = parse_broker(args.bind, "--bind")
    except EdgekitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    # amqtt logs every refused client (e.g. an MQTT 5 probe) as a warning: keep stderr for errors.
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    try:
        asyncio.run(_main(host, port))
    except OSError as exc:
        print(f"error: cannot serve MQTT on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
