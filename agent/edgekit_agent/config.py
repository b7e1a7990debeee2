"""`agent.toml`: the device agent's configuration, strictly validated.

Layout (every section optional except the top-level ``device_id`` and ``[store] root``; see
``agent/agent.toml`` for a documented sample)::

    device_id = "pi-01"          fleet = "lab"
    [store]      root, public_key, max_failures, failure_window_s
    [runtime]    threads, variant
    [http]       enabled, host, port, max_body_bytes, token_file, header_timeout_s,
                 body_timeout_s, max_connections
    [mqtt]       enabled, host, port, tls, ca_file, cert_file, key_file, username, password_file,
                 keepalive, client_id, max_packet_bytes
    [queue]      path, max_messages
    [policy]     file
    [sensors]    kind ("sysfs" | "simulated" | "pi"), plus kind-specific keys kept in ``options``
    [telemetry]  interval_s
    [load]       rate (synthetic inferences/s for demos and tests; 0 = off), seed
    [offload]    enabled, worker, deadline_ms, max_queue, simulated_latency_ms, split,
                 split_int8, simulated_slowdown (see ``service/offload.py``, ``service/split.py``)

Relative paths are resolved against the folder of the config file. Errors name the file, the
key, the bad value and the allowed values (``ConfigError``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .defaults import (
    DEVICE_NAME_RE,
    DEVICE_NAME_RULE,
    HTTP_HOST,
    HTTP_MAX_BODY_BYTES,
    HTTP_PORT,
    MQTT_HOST,
    MQTT_MAX_PACKET_BYTES,
    MQTT_PORT,
    MQTT_PROTOCOLS,
    SENSOR_KINDS,
)
from .errors import ConfigError
from .tomlfile import read_toml
from .validate import REQUIRED, Table, invalid


@dataclass(frozen=True)
class StoreConfig:
    root: Path
    public_key: Path | None = None
    max_failures: int = 3
    failure_window_s: float = 600.0


@dataclass(frozen=True)
class RuntimeConfig:
    threads: int | None = None
    variant: str | None = None


@dataclass(frozen=True)
class HttpConfig:
    enabled: bool = True
    host: str = HTTP_HOST
    port: int = HTTP_PORT
    max_body_bytes: int = HTTP_MAX_BODY_BYTES
    token_file: Path | None = None  # bearer token (first line); required beyond loopback
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 128

    def read_token(self) -> str | None:
        """The bearer token (first line of ``token_file``), read at start so it is never logged."""
        if self.token_file is None:
            return None
        try:
            token = self.token_file.read_text(encoding="utf-8").splitlines()[0].strip()
        except (OSError, UnicodeDecodeError, IndexError) as exc:
            raise invalid("", "http.token_file", str(self.token_file),
                          f"a readable token file ({exc})") from None
        if len(token) < 16:
            raise invalid("", "http.token_file", str(self.token_file),
                          "a token of at least 16 characters")
        return token


@dataclass(frozen=True)
class MqttConfig:
    """The MQTT link's settings (the ``[mqtt]`` section); ``password`` is for use in code only:
    a config file names a ``password_file``, read when connecting so it is never logged."""

    enabled: bool = True
    host: str = MQTT_HOST
    port: int = MQTT_PORT
    tls: bool = False
    ca_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None
    keepalive: int = 30
    client_id: str | None = None
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    protocol: str = "5"  # "5" or "3.1.1"
    inflight: int = 20
    cert_file: Path | None = None  # client certificate for mTLS (with key_file)
    key_file: Path | None = None
    max_packet_bytes: int = MQTT_MAX_PACKET_BYTES  # MQTT 5 Maximum-Packet-Size asked of the broker
    password: str | None = field(default=None, repr=False)

    def read_password(self) -> str | None:
        """The password (first line of ``password_file``), read when needed so it is never logged."""
        if self.password_file is None:
            return None
        try:
            return self.password_file.read_text(encoding="utf-8").splitlines()[0].strip()
        except (OSError, UnicodeDecodeError, IndexError) as exc:
            raise invalid("", "mqtt.password_file", str(self.password_file),
                          f"a readable password file ({exc})") from None


@dataclass(frozen=True)
class QueueConfig:
    path: Path
    max_messages: int = 100_000


@dataclass(frozen=True)
class PolicyConfig:
    file: Path | None = None


@dataclass(frozen=True)
class SensorsConfig:
    kind: str = "sysfs"
    options: dict[str, Any] = field(default_factory=dict)  # kind-specific, validated by the sensor


@dataclass(frozen=True)
class TelemetryConfig:
    interval_s: float = 10.0


@dataclass(frozen=True)
class LoadConfig:
    rate: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class OffloadConfig:
    """``enabled``: send requests to a coordinator when the mode allows it; ``worker``: serve work
    offloaded by others. ``simulated_latency_ms`` is added to every inference this agent runs,
    to stand in for slower hardware in tests and demos (0 on real devices);
    ``simulated_slowdown`` makes every local inference (and split head) that many times slower.
    ``split``: use the bundle's split variants (head here, tail on a worker) when it has them;
    ``split_int8``: the cut tensor travels int8 with a per-tensor scale."""

    enabled: bool = False
    worker: bool = False
    deadline_ms: float = 1000.0
    max_queue: int = 64
    simulated_latency_ms: float = 0.0
    split: bool = True
    split_int8: bool = False
    simulated_slowdown: float = 1.0


@dataclass(frozen=True)
class AgentConfig:
    device_id: str
    store: StoreConfig
    queue: QueueConfig
    fleet: str = "default"
    runtime: RuntimeConfig = RuntimeConfig()
    http: HttpConfig = HttpConfig()
    mqtt: MqttConfig = MqttConfig()
    policy: PolicyConfig = PolicyConfig()
    sensors: SensorsConfig = SensorsConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    load: LoadConfig = LoadConfig()  # the [load] table; read a file with ``from_file``
    offload: OffloadConfig = OffloadConfig()
    source: str = ""  # the file it was read from

    @classmethod
    def from_file(cls, path: str | Path) -> AgentConfig:
        path = Path(path)
        data = read_toml(path, "config")
        return cls.from_dict(data, source=str(path), base=path.parent)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "", base: Path | None = None) -> AgentConfig:
        t = Table(d, source, base=base or Path.cwd())
        t.only(("device_id", "fleet", "store", "runtime", "http", "mqtt", "queue", "policy",
                "sensors", "telemetry", "load", "offload"))
        device_id = _name(t, "device_id")
        store = _store(t.table("store"))
        return cls(device_id=device_id, fleet=_name(t, "fleet", "default"), store=store,
                   queue=_queue(t.table("queue"), store.root), runtime=_runtime(t.table("runtime")),
                   http=_http(t.table("http")), mqtt=_mqtt(t.table("mqtt")),
                   policy=_policy(t.table("policy")), sensors=_sensors(t.table("sensors")),
                   telemetry=_telemetry(t.table("telemetry")), load=_load(t.table("load")),
                   offload=_offload(t.table("offload")), source=source)

    def to_dict(self) -> dict[str, Any]:
        """The TOML-shaped dict ``from_dict`` reads back (unset values left out, like in TOML)."""
        d = {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.name != "source"}
        d["sensors"] = {"kind": self.sensors.kind, **_plain(self.sensors.options)}
        d["mqtt"].pop("password", None)
        return d


def _plain(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: _plain(v) for f in fields(value) if (v := getattr(value, f.name)) is not None}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _name(t: Table, key: str, default: Any = REQUIRED) -> str:
    return t.string(key, default, pattern=DEVICE_NAME_RE, what=DEVICE_NAME_RULE)


def _store(t: Table) -> StoreConfig:
    t.only(("root", "public_key", "max_failures", "failure_window_s"))
    return StoreConfig(root=t.path("root"), public_key=t.path("public_key", None),
                       max_failures=t.integer("max_failures", 3, lo=1, hi=1000),
                       failure_window_s=t.number("failure_window_s", 600.0, lo=1.0))


def _runtime(t: Table) -> RuntimeConfig:
    t.only(("threads", "variant"))
    return RuntimeConfig(threads=t.integer("threads", None, lo=1, hi=256),
                         variant=t.string("variant", None) or None)


def _http(t: Table) -> HttpConfig:
    t.only(("enabled", "host", "port", "max_body_bytes", "token_file", "header_timeout_s",
            "body_timeout_s", "max_connections"))
    cfg = HttpConfig(enabled=t.boolean("enabled", True),
                     host=t.string("host", HTTP_HOST, nonempty=True),
                     port=t.integer("port", HTTP_PORT, lo=0, hi=65535),
                     max_body_bytes=t.integer("max_body_bytes", HTTP_MAX_BODY_BYTES, lo=1024,
                                              hi=1 << 30),
                     token_file=t.path("token_file", None),
                     header_timeout_s=t.number("header_timeout_s", 10.0, lo=0.1, hi=3600.0),
                     body_timeout_s=t.number("body_timeout_s", 30.0, lo=0.1, hi=3600.0),
                     max_connections=t.integer("max_connections", 128, lo=1, hi=65536))
    if cfg.enabled and cfg.token_file is None and not is_loopback(cfg.host):
        raise ConfigError(f"a bearer token is required when http.host {cfg.host!r} is beyond "
                          "loopback", source=t.source, key="http.token_file")
    return cfg


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses; a host name may resolve anywhere."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _mqtt(t: Table) -> MqttConfig:
    t.only(("enabled", "host", "port", "tls", "ca_file", "username", "password_file",
            "keepalive", "client_id", "reconnect_min_s", "reconnect_max_s", "protocol", "inflight",
            "cert_file", "key_file", "max_packet_bytes"))
    cfg = MqttConfig(enabled=t.boolean("enabled", True),
                     host=t.string("host", MQTT_HOST, nonempty=True),
                     port=t.integer("port", MQTT_PORT, lo=1, hi=65535),
                     tls=t.boolean("tls", False), ca_file=t.path("ca_file", None),
                     username=t.string("username", None) or None,
                     password_file=t.path("password_file", None),
                     keepalive=t.integer("keepalive", 30, lo=5, hi=65535),
                     client_id=t.string("client_id", None) or None,
                     reconnect_min_s=t.number("reconnect_min_s", 0.5, lo=0.01, hi=3600.0),
                     reconnect_max_s=t.number("reconnect_max_s", 30.0, lo=0.01, hi=86400.0),
                     protocol=t.choice("protocol", MQTT_PROTOCOLS, "5"),
                     inflight=t.integer("inflight", 20, lo=1, hi=65535),
                     cert_file=t.path("cert_file", None), key_file=t.path("key_file", None),
                     max_packet_bytes=t.integer("max_packet_bytes", MQTT_MAX_PACKET_BYTES,
                                                lo=1024, hi=268_435_455))
    if cfg.password_file is not None and cfg.username is None:
        raise t.fail("username", None, "optional when a password_file is set", missing=True)
    if (cfg.ca_file or cfg.cert_file or cfg.key_file) is not None and not cfg.tls:
        raise t.fail("tls", False, "false when ca_file/cert_file/key_file is set", [True])
    if (cfg.cert_file is None) != (cfg.key_file is None):
        missing = "key_file" if cfg.key_file is None else "cert_file"
        raise t.fail(missing, None, "set together with cert_file/key_file", missing=True)
    return cfg


def _queue(t: Table, store_root: Path) -> QueueConfig:
    t.only(("path", "max_messages"))
    return QueueConfig(path=t.path("path", None) or store_root / "telemetry-queue.sqlite",
                       max_messages=t.integer("max_messages", 100_000, lo=1, hi=100_000_000))


def _policy(t: Table) -> PolicyConfig:
    t.only(("file",))
    return PolicyConfig(file=t.path("file", None))


def _sensors(t: Table) -> SensorsConfig:
    kind = t.choice("kind", SENSOR_KINDS, "sysfs")
    return SensorsConfig(kind=kind, options={k: v for k, v in t.data.items() if k != "kind"})


def _telemetry(t: Table) -> TelemetryConfig:
    t.only(("interval_s",))
    return TelemetryConfig(interval_s=t.number("interval_s", 10.0, lo=0.05, hi=86400.0))


def _load(t: Table) -> LoadConfig:
    t.only(("rate", "seed"))
    return LoadConfig(rate=t.number("rate", 0.0, lo=0.0, hi=1e6),
                      seed=t.integer("seed", 0, lo=0, hi=2**32 - 1))


def _offload(t: Table) -> OffloadConfig:
    t.only(("enabled", "worker", "deadline_ms", "max_queue", "simulated_latency_ms", "split",
            "split_int8", "simulated_slowdown"))
    return OffloadConfig(enabled=t.boolean("enabled", False), worker=t.boolean("worker", False),
                         deadline_ms=t.number("deadline_ms", 1000.0, lo=10.0, hi=600_000.0),
                         max_queue=t.integer("max_queue", 64, lo=1, hi=100_000),
                         simulated_latency_ms=t.number("simulated_latency_ms", 0.0, lo=0.0,
                                                       hi=60_000.0),
                         split=t.boolean("split", True), split_int8=t.boolean("split_int8", False),
                         simulated_slowdown=t.number("simulated_slowdown", 1.0, lo=1.0,
                                                     hi=100_000.0))
