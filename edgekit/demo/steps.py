"""The demo's steps, each a function the runner (:mod:`.run`) calls in order.

Steps that need a part this build may lack (the coordinator, ``edgekit deploy``) check for it
first and return ``None`` / a result with ``available=False``; the runner then says "not
available in this build" and counts 0.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit_agent.errors import EdgekitError

from .devices import FLEET, FleetWatch, free_port
from .procs import Supervisor, _die_with_parent
from .traffic import Traffic

BROKER_KINDS = ("auto", "mosquitto", "embedded")


@dataclass(frozen=True)
class BrokerInfo:
    kind: str  # "mosquitto" or "amqtt"
    host: str
    port: int
    protocol: str  # what clients should speak: "5" or "3.1.1"

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class OtaResult:
    available: bool
    installed: int = 0
    summary: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def coordinator_available() -> bool:
    return has_module("edgekit.fleet.coordinator")


def deploy_available() -> bool:
    return has_module("edgekit.fleet.deploy")


def mosquitto_path() -> str | None:
    return shutil.which("mosquitto")


def broker_choice(kind: str = "auto") -> str:
    """"mosquitto" or "amqtt" for ``--broker-kind``; checked before anything starts."""
    if kind not in BROKER_KINDS:
        raise EdgekitError(f"unknown broker kind {kind!r} (allowed: {', '.join(BROKER_KINDS)})")
    if kind == "mosquitto" and mosquitto_path() is None:
        raise EdgekitError("--broker-kind mosquitto: no mosquitto on PATH "
                           "(apt-get install mosquitto, or use --broker-kind embedded)")
    if kind == "mosquitto" or (kind == "auto" and mosquitto_path() is not None):
        return "mosquitto"
    if not has_module("amqtt"):
        raise EdgekitError("no MQTT broker: mosquitto is not on PATH and the embedded broker's "
                           "package is missing (pip install amqtt, or apt-get install mosquitto)")
    return "amqtt"


def start_broker(sup: Supervisor, kind: str = "auto") -> BrokerInfo:
    """Mosquitto when on PATH (or asked for), else the embedded amqtt broker (MQTT 3.1.1)."""
    port = free_port()
    binary = mosquitto_path()
    if broker_choice(kind) == "mosquitto" and binary is not None:
        conf = sup.workdir / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                        + ("user root\n" if os.geteuid() == 0 else ""), encoding="utf-8")
        child = sup.spawn("mosquitto", [binary, "-c", str(conf)])
        _wait_port("127.0.0.1", port, child, 10.0)
        return BrokerInfo("mosquitto", "127.0.0.1", port, "5")
    child = sup.spawn("amqtt", [sys.executable, "-m", "edgekit.fleet.embedded", "--bind",
                                f"127.0.0.1:{port}"], pipe_stdout=True)
    child.wait_line("embedded MQTT", 30.0)
    return BrokerInfo("amqtt", "127.0.0.1", port, "3.1.1")


def _wait_port(host: str, port: int, child: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise EdgekitError(f"{child.name} exited at start: {child.tail(3)!r}")
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise EdgekitError(f"{child.name} did not open {host}:{port} in {timeout:g} s")


def start_coordinator(sup: Supervisor, broker: BrokerInfo) -> str | None:
    """``edgekit coordinator run`` (dashboard URL), or None when this build has no coordinator."""
    if not coordinator_available():
        return None
    child = sup.spawn("coordinator", [sys.executable, "-m", "edgekit.cli", "coordinator", "run",
                                      "--broker", broker.url, "--fleet", FLEET, "--http",
                                      "127.0.0.1:0", "--state", str(sup.workdir / "coordinator"),
                                      "--name", "demo-coordinator"], pipe_stdout=True)
    line = child.wait_line("coordinator ", 60.0)
    return line.rsplit(" ", 1)[-1]


def deploy_ota(sup: Supervisor, bundle: Path, broker: BrokerInfo, key: Path, watch: FleetWatch,
               devices: list[str], version: str, timeout: float = 120.0) -> OtaResult:
    """``edgekit deploy BUNDLE`` to the fleet; installed = devices that then report ``version``."""
    if not deploy_available():
        return OtaResult(False)
    t0 = time.monotonic()
    argv = [sys.executable, "-m", "edgekit.cli", "deploy", str(bundle), "--fleet", FLEET,
            "--broker", broker.url, "--key", str(key), "--waves", "34,100", "--health-s", "2",
            "--timeout", "60", "--state", str(sup.workdir / "deploy"), "--json"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=timeout, cwd=sup.workdir,
                              preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    except subprocess.TimeoutExpired:
        raise EdgekitError(f"edgekit deploy did not finish in {timeout:g} s") from None
    (sup.workdir / "logs" / "deploy.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    summary = last_json_object(proc.stdout)
    try:
        watch.wait(lambda: len(running_version(watch, devices, version)) == len(devices), 15.0,
                   f"every device to report version {version}")
    except EdgekitError:
        pass  # the count below says how many did
    return OtaResult(True, len(running_version(watch, devices, version)), summary,
                     time.monotonic() - t0)


def running_version(watch: FleetWatch, devices: list[str], version: str) -> list[str]:
    return [r["device"] for r in watch.view.rows()
            if r["device"] in devices and r["state"] == "online" and r["bundle_version"] == version]


def last_json_object(text: str) -> dict[str, Any]:
    """The last top-level JSON object in ``text`` (commands end their output with one)."""
    start = text.rfind("\n{")
    start = 0 if start < 0 and text.startswith("{") else start + 1
    try:
        obj = json.loads(text[start:]) if start >= 0 else {}
    except ValueError:
        return {}
    return obj if isinstance(obj, dict) else {}


def overheat(traffic: Traffic, watch: FleetWatch, hot: str, timeout: float) -> dict[str, Any]:
    """A burst of requests heats ``hot`` until its policy leaves ``performance`` by itself."""
    before = len([e for e in watch.of_kind("mode_change") if e["device"] == hot])
    traffic.set_rate(hot, None)  # as fast as it answers
    try:
        watch.wait(lambda: len([e for e in watch.of_kind("mode_change")
                                if e["device"] == hot]) > before, timeout,
                   f"{hot} to change mode (its simulated temperature should pass the threshold)")
    finally:
        traffic.set_rate(hot, 0.0)
    return [e for e in watch.of_kind("mode_change") if e["device"] == hot][-1]


def dashboard_rows(url: str) -> list[dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"{url}/api/devices", timeout=5) as resp:
            rows = json.loads(resp.read())
    except (OSError, ValueError) as exc:
        raise EdgekitError(f"the coordinator at {url} did not answer /api/devices: {exc}") from None
    return rows if isinstance(rows, list) else []


def stop_devices(sup: Supervisor, children: list[Any]) -> list[int | None]:
    """SIGTERM every agent at once (each publishes ``offline`` and flushes), then wait."""
    for c in children:
        if c.alive():
            c.proc.send_signal(signal.SIGTERM)
    return [sup.stop(c, grace_s=15.0, signalled=True) for c in children]
