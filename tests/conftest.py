"""Shared fixtures: the built-in digits example, a signing key pair, a bundle factory, the CLI,
a real Mosquitto per session and agent subprocesses judged by what arrives on the broker.

Nothing here imports the host package at module level: the agent's own tests (``-m "not host"``)
run on Python 3.10-3.13 with only ``edgekit-agent`` installed. Bundles are written with the
agent's manifest and signing code (``write_test_bundle``), the same archive the host writes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from edgekit_agent.bundle import signing
from edgekit_agent.bundle.manifest import (
    Fidelity,
    Manifest,
    Member,
    ModelRef,
    OutputFidelity,
    RecipeStep,
    TargetReport,
    TensorSpec,
    Variant,
    sha256_hex,
)
from edgekit_agent.bundle.reader import MANIFEST_NAME, SIGNATURE_NAME, open_bundle
from edgekit_agent.bundle.signing import generate_keypair
from edgekit_agent.store.slots import BundleStore

REPO = Path(__file__).resolve().parents[1]
LABELS = "".join(f"{d}\n" for d in range(10)).encode()
DIGITS = REPO / "edgekit" / "examples" / "digits"
_ZIP_EPOCH = (2020, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class ExampleFiles:
    """The digits example's files, read by path (the same ones ``edgekit.examples`` ships)."""

    name: str = "digits"
    onnx: Path = DIGITS / "digits.onnx"
    tflite: Path = DIGITS / "digits.tflite"
    calib: Path = DIGITS / "calib.npz"
    eval: Path = DIGITS / "test.npz"
    labels: Path = DIGITS / "test_labels.npy"


def write_test_bundle(out: Path, manifest: Manifest, files: list[tuple[str, bytes, str]],
                      sign_key: Path | None = None) -> Path:
    """A bundle archive as ``edgekit.bundle_writer`` writes it, from agent code only."""
    members = tuple(Member(path, sha256_hex(data), len(data), role) for path, data, role in files)
    manifest = manifest.replace(members=members, created=manifest.created or "2024-01-01T00:00:00+00:00")
    body = manifest.to_json_bytes()
    entries = [(MANIFEST_NAME, body)]
    if sign_key is not None:
        entries.append((SIGNATURE_NAME, signing.sign(signing.load_private_key(sign_key), body)))
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in entries + [(path, data) for path, data, _ in files]:
            info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data, compresslevel=9)
    return out


@pytest.fixture(scope="session")
def write_bundle_file():
    """write_bundle_file(out, manifest, [(path, data, role), ...], sign_key=None) -> out."""
    return write_test_bundle


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Conversions are cached by content hash; tests use their own cache (CLI subprocesses too)."""
    os.environ["EDGEKIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def digits() -> ExampleFiles:
    return ExampleFiles()


@pytest.fixture(scope="session")
def keypair(tmp_path_factory) -> tuple[Path, Path]:
    """(private key path, public key path), made by the real keygen."""
    return generate_keypair(tmp_path_factory.mktemp("keys") / "signer")


def _digits_manifest(model: bytes, model_path: str = "model.tflite") -> Manifest:
    """A hand-built manifest for the float digits TFLite model with every contract field."""
    ref = ModelRef(path=model_path, format="tflite", sha256=sha256_hex(model),
                   size_bytes=len(model))
    primary = Variant(
        name="float", model=ref,
        inputs=(TensorSpec("image", (1, 8, 8, 1), "float32"),),
        outputs=(TensorSpec("logits", (1, 10), "float32"),),
        recipe=(RecipeStep("none"),),
        fidelity=Fidelity(outputs={"logits": OutputFidelity(sqnr_db=99.0, cosine=1.0)},
                          top1_agreement=1.0, samples=16, synthetic=False),
        latency_ms=0.05,
        target_report=TargetReport(family="cpu", flash_bytes=len(model), ops_on_cpu=("CONV_2D",)))
    return Manifest(name="digits", version="1", target="x86-64", family="cpu", primary=primary,
                    members=(), source={"format": "tflite", "size_bytes": len(model),
                                        "latency_ms": 0.05},
                    extras={"labels": "labels.txt"}, created="2024-01-01T00:00:00+00:00")


@pytest.fixture(scope="session")
def make_bundle(tmp_path_factory, digits, keypair):
    """make_bundle(sign=True, model=None) -> path of a fresh valid bundle (digits TFLite + labels)."""

    def make(sign: bool = True, model: bytes | None = None) -> Path:
        model = digits.tflite.read_bytes() if model is None else model
        files = [("model.tflite", model, "model"), ("labels.txt", LABELS, "labels")]
        out = tmp_path_factory.mktemp("bundle") / "digits.ekb"
        return write_test_bundle(out, _digits_manifest(model), files, keypair[0] if sign else None)

    return make


def _run_edgekit(*args: str, cwd: Path | None = None, env: dict | None = None,
                 ) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess (stdin closed), text output."""
    return subprocess.run([sys.executable, "-m", "edgekit.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)


def _assert_cli_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 1, one `error: …` line on stderr naming every fragment, no traceback."""
    err = proc.stderr.strip()
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


@pytest.fixture(scope="session")
def digits_manifest():
    return _digits_manifest


@pytest.fixture(scope="session")
def edgekit_cli():
    """edgekit_cli(*args, cwd=None, env=None) -> CompletedProcess of `python -m edgekit.cli`."""
    return _run_edgekit


@pytest.fixture(scope="session")
def cli_error():
    """cli_error(proc, *fragments): assert exit 1 and one `error:` line naming each fragment."""
    return _assert_cli_error


# --- MQTT: a real Mosquitto, collectors, agent processes -----------------------------------------

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _BrokerProcess:
    """A broker subprocess on a loopback port: ``start`` is the broker's own, ``stop`` and
    ``url`` are shared."""

    host = "127.0.0.1"
    port: int
    proc: subprocess.Popen | None = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"


class Broker(_BrokerProcess):
    """mosquitto on a loopback port with persistence, so sessions survive a restart."""

    def __init__(self, workdir: Path, port: int | None = None, *, listener: str = "",
                 security: str = "allow_anonymous true\n", config: Path | None = None) -> None:
        """``listener``: lines for the listener (TLS files); ``security``: who may connect.

        ``config``: a complete mosquitto.conf (e.g. from ``edgekit fleet broker-config``, whose
        listener must be on ``port``) used as it is, plus logging and ``user root``."""
        self.dir, self.port = workdir, port or free_port()
        self.host = "127.0.0.1"
        self.proc: subprocess.Popen | None = None
        self.conf = self.dir / "mosquitto.conf"
        if config is not None:
            self.conf = self.dir / "mosquitto-run.conf"
            self.conf.write_text(f"user root\nlog_dest file {self.dir}/mosquitto.log\n"
                                 "log_type error\nlog_type warning\nlog_type notice\n"
                                 "log_type information\n" + config.read_text())
            return
        self.conf.write_text(
            f"listener {self.port} {self.host}\n{listener}{security}user root\n"
            f"persistence true\npersistence_location {self.dir}/\nautosave_interval 0\n"
            f"max_queued_messages 100000\nset_tcp_nodelay true\n"
            f"log_dest file {self.dir}/mosquitto.log\n"
            "log_type error\nlog_type warning\nlog_type notice\n")

    def start(self) -> None:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.proc.stderr.read().decode()[-500:]}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not open its port in 10 s")


def _serving(b: _BrokerProcess) -> Iterator[_BrokerProcess]:
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    yield from _serving(Broker(tmp_path_factory.mktemp("mosquitto")))


@pytest.fixture
def own_broker(tmp_path):
    """A broker of the test's own, for tests that stop and restart it."""
    d = tmp_path / "mosquitto"
    d.mkdir()
    yield from _serving(Broker(d))


class EmbeddedBroker(_BrokerProcess):
    """The embedded amqtt broker (MQTT 3.1.1 only) that `edgekit demo` uses without Mosquitto,
    as a subprocess of ``python -m edgekit.fleet.embedded``; the same surface as ``Broker``.
    Tests using it need the host package (mark them ``host``)."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.dir, self.port, self.host = workdir, port or free_port(), "127.0.0.1"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "edgekit.fleet.embedded", "--bind",
                                      f"{self.host}:{self.port}"], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()  # printed once the port is open
        if not line.startswith("embedded MQTT 3.1.1 broker on"):
            self.stop()
            raise RuntimeError(f"amqtt did not start: {line!r}")


@pytest.fixture(scope="session")
def amqtt_broker(tmp_path_factory):
    yield from _serving(EmbeddedBroker(tmp_path_factory.mktemp("amqtt")))


@dataclass
class Message:
    topic: str
    payload: dict[str, Any] | None
    raw: bytes
    retain: bool
    at: float


@dataclass
class Collector:
    """A paho client that records every message on its filters (persistent session, QoS 1)."""

    broker: Broker
    filters: tuple[str, ...]
    client_id: str = ""
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    messages: list[Message] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        self.client_id = self.client_id or f"collector-{os.getpid()}-{id(self)}"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                  protocol=mqtt.MQTTv311, clean_session=False)
        self.subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in self.filters])
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)
        if self.username:
            self.client.username_pw_set(self.username, self.password)
        if self.ca_file:
            self.client.tls_set(ca_certs=str(self.ca_file),
                                certfile=str(self.cert_file) if self.cert_file else None,
                                keyfile=str(self.key_file) if self.key_file else None)
        self.client.connect(self.broker.host, self.broker.port, keepalive=10)
        self.client.loop_start()
        assert self.subscribed.wait(10), "collector could not subscribe"

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            payload = json.loads(msg.payload)
        except ValueError:
            payload = None
        with self._cond:
            self.messages.append(Message(msg.topic, payload, bytes(msg.payload), msg.retain,
                                         time.monotonic()))
            self._cond.notify_all()

    def mark(self) -> int:
        """An index for ``wait_for(since=...)``: only messages arriving after now."""
        with self._cond:
            return len(self.messages)

    def wait_for(self, predicate: Callable[[Message], bool], timeout: float, what: str = "",
                 since: int = 0) -> Message:
        deadline = time.monotonic() + timeout
        seen = since
        with self._cond:
            while True:
                for m in self.messages[seen:]:
                    if predicate(m):
                        return m
                seen = len(self.messages)
                left = deadline - time.monotonic()
                if left <= 0:
                    kinds = [m.topic.rsplit("/", 1)[-1] for m in self.messages[-20:]]
                    raise AssertionError(f"timed out after {timeout} s waiting for {what}; "
                                         f"last topics: {kinds}")
                self._cond.wait(left)

    def of(self, kind: str) -> list[Message]:
        with self._cond:
            return [m for m in self.messages if m.topic.endswith("/" + kind)]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def collect():
    made: list[Collector] = []

    def make(broker: Broker, *filters: str, **options: Any) -> Collector:
        c = Collector(broker, filters, **options)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


# --- bundle and agent process ------------------------------------------------------------------

POWER = {"idle_w": 2.2, "active_w": 5.4}


@pytest.fixture(scope="session")
def power_bundle(tmp_path_factory, digits, keypair, digits_manifest):
    """A signed digits bundle whose target profile has power figures, plus an ONNX 'onnx' variant."""
    tflite, onnx = digits.tflite.read_bytes(), digits.onnx.read_bytes()
    manifest = digits_manifest(tflite)
    alt = manifest.primary.__class__(
        name="onnx", model=ModelRef("model.onnx", "onnx", sha256_hex(onnx), len(onnx)),
        inputs=manifest.primary.inputs, outputs=manifest.primary.outputs)
    manifest = manifest.replace(variants=(alt,), target="rpi4",
                                target_profile={"name": "rpi4", "family": "cpu", "power": POWER})
    files = [("model.tflite", tflite, "model"), ("model.onnx", onnx, "variant"),
             ("labels.txt", LABELS, "labels")]
    out = tmp_path_factory.mktemp("power-bundle") / "digits-power.ekb"
    return write_test_bundle(out, manifest, files, keypair[0])


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))
    raise TypeError(value)


def write_toml(path: Path, sections: dict[str, Any]) -> Path:
    lines = [f"{k} = {toml_value(v)}" for k, v in sections.items() if not isinstance(v, dict)]
    for name, table in sections.items():
        if isinstance(table, dict):
            lines.append(f"\n[{name}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class AgentProcess:
    proc: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@pytest.fixture
def start_agent():
    """start_agent(config_path) -> AgentProcess running `python -m edgekit_agent.cli run --config`."""
    started: list[AgentProcess] = []

    def start(config: Path) -> AgentProcess:
        log = config.with_suffix(".log")
        out = log.open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "edgekit_agent.cli", "run", "--config",
                                 str(config)], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=env)
        agent = AgentProcess(proc, log)
        started.append(agent)
        return agent

    yield start
    for a in started:
        a.stop(signal.SIGKILL, timeout=5)


@pytest.fixture(scope="session")
def power_bundle_v2(tmp_path_factory, power_bundle, keypair):
    """The same model as version 2 (a different bundle id), to have something to roll back from."""
    b = open_bundle(power_bundle)
    files = [(m.path, b.read(m.path), m.role) for m in b.manifest.members]
    out = tmp_path_factory.mktemp("power-bundle-v2") / "digits-power-v2.ekb"
    return write_test_bundle(out, b.manifest.replace(version="2"), files, keypair[0])


HOT_POLICY = """
default_mode = "performance"
[modes.performance]
[modes.eco]
threads = 1
max_inferences_per_s = 20.0
variant = "onnx"
[[rules]]
name = "hot"
metric = "temperature_c"
enter_above = 40.0
exit_below = 35.0
hold_s = 2.0
exit_hold_s = 600.0
mode = "eco"
"""

# A small board with a hot accelerator: idles at 29 °C, heads for ~90 °C at 1 % busy time, and
# at 10x speed the thermal time constant is 6 s of wall time.
HOT_SIM = {"kind": "simulated", "idle_w": 0.02, "active_w": 30.0, "r_th_c_per_w": 200.0,
           "tau_s": 60.0, "speed": 10.0, "battery_wh": 2.0}


@pytest.fixture
def agent_config(tmp_path, keypair, power_bundle):
    """agent_config(broker, policy=HOT_POLICY, bundles=(power_bundle,), **sections) -> agent.toml path.

    The store is filled by the real ``BundleStore.install``; sections override the defaults.
    """
    def make(broker: Broker, policy: str = HOT_POLICY, bundles: tuple[Path, ...] | None = None,
             **sections: dict[str, Any]) -> Path:
        store = tmp_path / "store"
        for b in bundles or (power_bundle,):
            BundleStore(store).install(b, keypair[1])
        policy_file = tmp_path / "policy.toml"
        policy_file.write_text(policy)
        config = {"device_id": "dev1", "fleet": "lab",
                  "store": {"root": str(store), "public_key": str(keypair[1])},
                  "http": {"port": 0},
                  "mqtt": {"host": broker.host, "port": broker.port, "reconnect_min_s": 0.2,
                           "reconnect_max_s": 1.0, "keepalive": 5},
                  "queue": {"path": str(tmp_path / "queue.sqlite")},
                  "policy": {"file": str(policy_file)}, "sensors": dict(HOT_SIM),
                  "telemetry": {"interval_s": 1.0}, "load": {"rate": 300.0}}
        for name, values in sections.items():
            config[name] = {**config.get(name, {}), **values}
        return write_toml(tmp_path / "agent.toml", config)

    return make


@pytest.fixture(scope="session")
def free_tcp_port() -> Callable[[], int]:
    """free_tcp_port() -> a loopback port nobody listens on now."""
    return free_port


@pytest.fixture(scope="session")
def broker_class() -> type[Broker]:
    """``Broker(workdir, listener=..., security=...)`` for tests that configure their own."""
    return Broker


@pytest.fixture(scope="session")
def dedupe() -> Callable[[list[Message]], list[Message]]:
    """dedupe(messages) -> the messages with repeated ``seq`` (QoS 1 redeliveries) dropped."""
    return by_seq


def by_seq(messages: list[Message]) -> list[Message]:
    """Dedupe by seq (QoS 1 may deliver twice), keeping the first arrival."""
    seen: set[int] = set()
    out = []
    for m in messages:
        if m.payload["seq"] not in seen:
            seen.add(m.payload["seq"])
            out.append(m)
    return out
