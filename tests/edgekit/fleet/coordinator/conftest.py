"""A test fleet: agent subprocesses with simulated hardware and coordinator subprocesses, on the
session's real Mosquitto. Each test gets a fleet name of its own, so retained messages of other
tests never show up in its registry."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgekit_agent.store.slots import BundleStore

# Service time each class of device adds to every inference (the digits model itself runs in
# ~0.05 ms here, so these dominate): a Coral-class accelerator, a Pi 4 CPU, an MCU.
HARDWARE_MS = {"coral": 2.0, "pi4": 20.0, "mcu": 150.0}

HOT_OFFLOAD_POLICY = """
default_mode = "performance"
[modes.performance]
[modes.hot]
threads = 1
offload_allowed = true
[[rules]]
name = "hot"
metric = "temperature_c"
enter_above = 60.0
exit_below = 40.0
hold_s = 0.5
exit_hold_s = 600.0
mode = "hot"
"""
# Starts at 75 °C and settles at 47 °C, cooling with a 60 s time constant: hot for minutes.
HOT = {"kind": "simulated", "start_c": 75.0, "idle_w": 2.2, "active_w": 5.4, "r_th_c_per_w": 10.0}
COOL = {"kind": "simulated", "start_c": 30.0, "idle_w": 0.5, "active_w": 1.0, "r_th_c_per_w": 10.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_toml(path: Path, sections: dict[str, Any]) -> Path:
    """Flat tables of numbers, booleans and strings: all an agent.toml here needs."""
    def value(v: Any) -> str:
        return ("true" if v else "false") if isinstance(v, bool) else (
            repr(v) if isinstance(v, (int, float)) else json.dumps(str(v)))
    lines = [f"{k} = {value(v)}" for k, v in sections.items() if not isinstance(v, dict)]
    for name, table in sections.items():
        if isinstance(table, dict):
            lines += [f"\n[{name}]", *(f"{k} = {value(v)}" for k, v in table.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class FleetAgent:
    name: str
    process: Any  # tests/conftest.py AgentProcess
    http_port: int

    def infer(self, image: list, timeout: float = 10.0) -> dict[str, Any]:
        body = json.dumps({"inputs": {"image": image}}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}/v1/infer", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())


@dataclass
class CoordinatorProcess:
    proc: subprocess.Popen
    url: str

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=5) as resp:
            body = resp.read()
        return json.loads(body) if path.startswith("/api/") else body.decode()

    def devices(self) -> dict[str, dict[str, Any]]:
        return {row["device"]: row for row in self.get("/api/devices")}

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@pytest.fixture
def fleet_name() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def fleet_agent(tmp_path, keypair, power_bundle, broker, fleet_name, start_agent):
    """fleet_agent(name, hardware, sensors=COOL, policy=None, **offload) -> FleetAgent."""

    def make(name: str, hardware: str, sensors: dict[str, Any] = COOL, policy: str | None = None,
             load_rate: float = 0.0, **offload: Any) -> FleetAgent:
        home = tmp_path / name
        home.mkdir()
        BundleStore(home / "store").install(power_bundle, keypair[1])
        port = free_port()
        config: dict[str, Any] = {
            "device_id": name, "fleet": fleet_name,
            "store": {"root": str(home / "store"), "public_key": str(keypair[1])},
            "http": {"port": port},
            "mqtt": {"host": broker.host, "port": broker.port, "reconnect_min_s": 0.2,
                     "reconnect_max_s": 1.0, "keepalive": 5},
            "queue": {"path": str(home / "queue.sqlite")}, "sensors": dict(sensors),
            "telemetry": {"interval_s": 0.5}, "load": {"rate": load_rate},
            "offload": {"worker": True, "simulated_latency_ms": HARDWARE_MS[hardware], **offload}}
        if policy is not None:
            (home / "policy.toml").write_text(policy)
            config["policy"] = {"file": str(home / "policy.toml")}
        agent = start_agent(write_toml(home / "agent.toml", config))
        return FleetAgent(name, agent, port)

    return make


@pytest.fixture
def start_coordinator(tmp_path, broker, fleet_name):
    """start_coordinator(state=None, name=None, broker_=None, *extra_args) -> CoordinatorProcess
    serving on a free port."""
    started: list[CoordinatorProcess] = []

    def start(state: Path | None = None, name: str | None = None,
              broker_: Any = None, *extra: str) -> CoordinatorProcess:
        b = broker_ or broker
        args = [sys.executable, "-m", "edgekit.cli", "coordinator", "run", "--broker", b.url,
                "--fleet", fleet_name, "--http", "127.0.0.1:0", *extra]
        if state is not None:
            args += ["--state", str(state)]
        if name is not None:
            args += ["--name", name]
        log = (tmp_path / f"coordinator-{len(started)}.log").open("wb")
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        line = proc.stdout.readline().decode().strip()
        assert line.startswith("coordinator "), (line, proc.poll())
        c = CoordinatorProcess(proc, line.rsplit(" ", 1)[-1])
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop(signal.SIGKILL)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except OSError:
            last = None
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class FakeDevice:
    """A device as the coordinator sees it: agent-shaped ``status`` and ``telemetry`` JSON that
    the test writes itself (paho, QoS 1), so every figure the coordinator reports is known."""

    def __init__(self, broker: Any, fleet: str, name: str) -> None:
        import paho.mqtt.client as mqtt

        self.base, self.name, self.seq = f"edgekit/v1/{fleet}/{name}", name, 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def _publish(self, kind: str, body: dict[str, Any], retain: bool = False) -> None:
        self.seq += 1
        payload = {"schema": f"edgekit.{kind}/1", "device": self.name, "seq": self.seq,
                   "ts": round(time.time(), 6), **body}
        self.client.publish(f"{self.base}/{kind}", json.dumps(payload), qos=1,
                            retain=retain).wait_for_publish(5)

    def status(self, state: str = "online", mode: str = "performance",
               bundle: dict[str, Any] | None = None) -> None:
        self._publish("status", {"state": state, "mode": mode, "bundle": bundle,
                                 "offload_allowed": False, "offload": None}, retain=True)

    def telemetry(self, latency_ms: float, temperature_c: float = 40.0, battery_pct: float = 80.0,
                  mode: str = "performance") -> float:
        self._publish("telemetry", {"interval_s": 1.0, "mode": mode,
                                    "inference": {"count": 10, "errors": 0, "per_s": 10.0,
                                                  "latency_ms": {"p50": latency_ms}},
                                    "limits": {"offload_allowed": False},
                                    "sensors": {"temperature_c": temperature_c,
                                                "battery_pct": battery_pct}})
        return latency_ms

    def close(self) -> None:
        self.client.publish(f"{self.base}/status", b"", qos=1, retain=True).wait_for_publish(5)
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def fake_device(broker, fleet_name):
    """fake_device(name) -> FakeDevice on the session broker (its retained status is cleared
    afterwards)."""
    made: list[FakeDevice] = []

    def make(name: str) -> FakeDevice:
        made.append(FakeDevice(broker, fleet_name, name))
        return made[-1]

    yield make
    for d in made:
        d.close()
