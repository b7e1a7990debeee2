"""The demo's simulated devices (``edgekit-agent run`` subprocesses) and the fleet watcher.

Each device is a real agent: its own store with the rpi4 bundle installed and verified, a power
policy, simulated sensors and the local HTTP API. One of them is the "hot" board: the same
policy, but a thermal model whose temperature climbs far above the policy's threshold under a
burst of inference (and stays well below it at the demo's normal traffic). Its policy switches
it to ``eco`` by itself; nothing is commanded.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit_agent.config import AgentConfig
from edgekit_agent.errors import EdgekitError, TransportError
from edgekit_agent.store.slots import BundleStore
from edgekit_agent.telemetry import schema

from ..fleet.broker import connect
from ..fleet.status import FleetView
from .procs import Child, Supervisor

FLEET = "demo"
HOT_C = 70.0  # the policy's threshold, also printed by the demo
POLICY = f"""\
# The demo fleet's power policy: hot boards slow down and may hand work to the fleet.
default_mode = "performance"

[modes.performance]

[modes.eco]
threads = 1
max_inferences_per_s = 5.0
offload_allowed = true

[[rules]]
name = "hot"
metric = "temperature_c"
enter_above = {HOT_C}
exit_below = 55.0
hold_s = 1.0
exit_hold_s = 600.0
mode = "eco"
"""
# A cool board: the rpi4 profile's 2.2 W idle sits near 47 degC; inference adds little.
COOL_SENSORS = {"kind": "simulated", "r_th_c_per_w": 10.0, "tau_s": 60.0, "speed": 10.0}
# The hot board: 45 degC idle, +7 degC per 0.1 % of busy time, capped at 85 degC where a Pi
# throttles. The demo's normal traffic keeps a board about 0.1 % busy (near 55 degC), a burst
# about ten times that (above HOT_C); 10x simulated time gives a 6 s time constant.
HOT_SENSORS = {"kind": "simulated", "idle_w": 0.2, "active_w": 70.0, "r_th_c_per_w": 100.0,
               "tau_s": 60.0, "speed": 10.0, "battery_wh": 20.0}


@dataclass(frozen=True)
class Device:
    name: str
    config: Path
    http: str  # http://127.0.0.1:PORT
    hot: bool
    child: Child | None = None


def offload_supported() -> bool:
    """True when this build's agent has the ``[offload]`` section (the coordinator's branch)."""
    import edgekit_agent.config as agent_config

    return hasattr(agent_config, "OffloadConfig")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_device(workdir: Path, name: str, bundle: Path, public_key: Path, broker: tuple[str, int],
                 protocol: str, hot: bool, offload: bool) -> Device:
    """A device folder: store with ``bundle`` installed, policy, and a validated agent.toml."""
    root = workdir / "devices" / name
    store = root / "store"
    BundleStore(store).install(bundle, public_key)
    policy = root / "policy.toml"
    policy.write_text(POLICY, encoding="utf-8")
    port = free_port()
    sections: dict[str, Any] = {
        "device_id": name, "fleet": FLEET,
        "store": {"root": str(store), "public_key": str(public_key)},
        "http": {"host": "127.0.0.1", "port": port},
        "mqtt": {"host": broker[0], "port": broker[1], "protocol": protocol, "keepalive": 10,
                 "reconnect_min_s": 0.2, "reconnect_max_s": 2.0},
        "policy": {"file": str(policy)},
        "sensors": dict(HOT_SENSORS if hot else COOL_SENSORS),
        "telemetry": {"interval_s": 1.0}}
    if offload:
        sections["offload"] = {"enabled": True, "worker": not hot}
    config = root / "agent.toml"
    config.write_text(to_toml(sections), encoding="utf-8")
    AgentConfig.from_file(config)  # the agent's own reader: a mistake here fails before starting
    return Device(name, config, f"http://127.0.0.1:{port}", hot)


def start_device(sup: Supervisor, device: Device) -> Device:
    child = sup.spawn(device.name, [sys.executable, "-m", "edgekit_agent.cli", "run", "--config",
                                    str(device.config)])
    return Device(device.name, device.config, device.http, device.hot, child)


def to_toml(sections: dict[str, Any]) -> str:
    lines = [f"{k} = {_value(v)}" for k, v in sections.items() if not isinstance(v, dict)]
    for name, table in sections.items():
        if isinstance(table, dict):
            lines += ["", f"[{name}]", *(f"{k} = {_value(v)}" for k, v in table.items())]
    return "\n".join(lines) + "\n"


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))


class FleetWatch:
    """Everything the fleet says on the broker: the device table and the events (deduplicated)."""

    def __init__(self, broker: str, protocol: str = "auto") -> None:
        self.view = FleetView()
        self.events: list[dict[str, Any]] = []
        self._seen: set[tuple[str, int]] = set()
        self._cond = threading.Condition()
        filters = [schema.subscription(FLEET, kind) for kind in ("status", "telemetry", "event")]
        self.client = connect(broker, filters, self._on_message, protocol=protocol)

    def _on_message(self, msg: Any) -> None:
        self.view.feed(msg.topic, msg.payload, retained=msg.retain)
        if msg.topic.endswith("/event"):
            try:
                event = schema.decode(msg.payload, "event")
            except TransportError:
                return
            with self._cond:
                if (event["device"], event["seq"]) not in self._seen:  # QoS 1 may repeat
                    self._seen.add((event["device"], event["seq"]))
                    self.events.append(event)
        with self._cond:
            self._cond.notify_all()

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        with self._cond:
            return [e for e in self.events if e["kind"] == kind]

    def online(self) -> set[str]:
        return {r["device"] for r in self.view.rows() if r["state"] == "online"}

    def wait(self, predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise EdgekitError(f"timed out after {timeout:g} s waiting for {what}")
                self._cond.wait(min(left, 0.5))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
