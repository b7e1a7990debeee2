"""`agent.toml`: the device agent's configuration, strictly validated.

Layout (every section optional except the top-level ``device_id`` and ``[store] root``; see
``agent/agent.toml`` for a documented sample)::

    device_id = "pi-01"          fleet = "lab"
    [store]      root, public_key, max_failures, failure_window_s
    [runtime]    threads, variant
    [http]       enabled, host, port, max_body_bytes
    [mqtt]       enabled, host, port, tls, ca_file, username, password_file, keepalive, client_id
    [queue]      path, max_messages
    [policy]     file
    [sensors]    kind ("sysfs" | "simulated" | "pi"), plus kind-specific keys kept in ``options``
    [telemetry]  interval_s
    [load]       rate (synthetic inferences/s for demos and tests; 0 = off), seed

Relative paths are resolved against the folder of the config file. Errors name the file, the
key, the bad value and the allowed values (``ConfigError``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .tomlfile import read_toml
from .errors import ConfigError

SENSOR_KINDS = ("sysfs", "simulated", "pi")
_DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # one MQTT topic level, no wildcards


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
    host: str = "127.0.0.1"
    port: int = 8470
    max_body_bytes: int = 8 << 20


@dataclass(frozen=True)
class MqttConfig:
    enabled: bool = True
    host: str = "localhost"
    port: int = 1883
    tls: bool = False
    ca_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None
    keepalive: int = 30
    client_id: str | None = None
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0

    def read_password(self) -> str | None:
        """The password (first line of ``password_file``), read when needed so it is never logged."""
        if self.password_file is None:
            return None
        try:
            return self.password_file.read_text(encoding="utf-8").splitlines()[0].strip()
        except (OSError, UnicodeDecodeError, IndexError) as exc:
            raise ConfigError(f"cannot read the MQTT password file: {exc}",
                              key="mqtt.password_file", value=str(self.password_file)) from None


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
    source: str = ""  # the file it was read from

    @classmethod
    def from_file(cls, path: str | Path) -> "AgentConfig":
        path = Path(path)
        data = read_toml(path, "config")
        return cls.from_dict(data, source=str(path), base=path.parent)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "", base: Path | None = None) -> "AgentConfig":
        r = _Reader(source, base or Path.cwd())
        r.only(d, "", ("device_id", "fleet", "store", "runtime", "http", "mqtt", "queue", "policy",
                       "sensors", "telemetry", "load"))
        device_id = r.name(d, "device_id", required=True)
        store = _store(r, r.section(d, "store"))
        return cls(device_id=device_id, fleet=r.name(d, "fleet", default="default"), store=store,
                   queue=_queue(r, r.section(d, "queue"), store.root),
                   runtime=_runtime(r, r.section(d, "runtime")), http=_http(r, r.section(d, "http")),
                   mqtt=_mqtt(r, r.section(d, "mqtt")), policy=_policy(r, r.section(d, "policy")),
                   sensors=_sensors(r, r.section(d, "sensors")),
                   telemetry=_telemetry(r, r.section(d, "telemetry")),
                   load=_load(r, r.section(d, "load")), source=source)

    def to_dict(self) -> dict[str, Any]:
        """The TOML-shaped dict ``from_dict`` reads back (unset values left out, like in TOML)."""
        d = {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.name != "source"}
        d["sensors"] = {"kind": self.sensors.kind, **_plain(self.sensors.options)}
        return d


def _plain(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: _plain(v) for f in fields(value) if (v := getattr(value, f.name)) is not None}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _store(r: "_Reader", s: dict[str, Any]) -> StoreConfig:
    r.only(s, "store", ("root", "public_key", "max_failures", "failure_window_s"))
    return StoreConfig(root=r.path(s, "store.root", required=True),
                       public_key=r.path(s, "store.public_key"),
                       max_failures=r.integer(s, "store.max_failures", 3, lo=1, hi=1000),
                       failure_window_s=r.number(s, "store.failure_window_s", 600.0, lo=1.0))


def _runtime(r: "_Reader", s: dict[str, Any]) -> RuntimeConfig:
    r.only(s, "runtime", ("threads", "variant"))
    threads = r.integer(s, "runtime.threads", None, lo=1, hi=256)
    variant = r.string(s, "runtime.variant", None)
    return RuntimeConfig(threads=threads, variant=variant or None)


def _http(r: "_Reader", s: dict[str, Any]) -> HttpConfig:
    r.only(s, "http", ("enabled", "host", "port", "max_body_bytes"))
    return HttpConfig(enabled=r.boolean(s, "http.enabled", True),
                      host=r.string(s, "http.host", "127.0.0.1", nonempty=True),
                      port=r.integer(s, "http.port", 8470, lo=0, hi=65535),
                      max_body_bytes=r.integer(s, "http.max_body_bytes", 8 << 20, lo=1024, hi=1 << 30))


def _mqtt(r: "_Reader", s: dict[str, Any]) -> MqttConfig:
    r.only(s, "mqtt", ("enabled", "host", "port", "tls", "ca_file", "username", "password_file",
                       "keepalive", "client_id", "reconnect_min_s", "reconnect_max_s"))
    cfg = MqttConfig(enabled=r.boolean(s, "mqtt.enabled", True),
                     host=r.string(s, "mqtt.host", "localhost", nonempty=True),
                     port=r.integer(s, "mqtt.port", 1883, lo=1, hi=65535),
                     tls=r.boolean(s, "mqtt.tls", False), ca_file=r.path(s, "mqtt.ca_file"),
                     username=r.string(s, "mqtt.username", None) or None,
                     password_file=r.path(s, "mqtt.password_file"),
                     keepalive=r.integer(s, "mqtt.keepalive", 30, lo=5, hi=65535),
                     client_id=r.string(s, "mqtt.client_id", None) or None,
                     reconnect_min_s=r.number(s, "mqtt.reconnect_min_s", 0.5, lo=0.01, hi=3600.0),
                     reconnect_max_s=r.number(s, "mqtt.reconnect_max_s", 30.0, lo=0.01, hi=86400.0))
    if cfg.password_file is not None and cfg.username is None:
        raise ConfigError("a password file needs a username", source=r.source, key="mqtt.username")
    if cfg.ca_file is not None and not cfg.tls:
        raise ConfigError("ca_file is set but tls is off", source=r.source, key="mqtt.tls", value=False,
                          allowed=[True])
    return cfg


def _queue(r: "_Reader", s: dict[str, Any], store_root: Path) -> QueueConfig:
    r.only(s, "queue", ("path", "max_messages"))
    path = r.path(s, "queue.path") or store_root / "telemetry-queue.sqlite"
    return QueueConfig(path=path, max_messages=r.integer(s, "queue.max_messages", 100_000, lo=1,
                                                         hi=100_000_000))


def _policy(r: "_Reader", s: dict[str, Any]) -> PolicyConfig:
    r.only(s, "policy", ("file",))
    return PolicyConfig(file=r.path(s, "policy.file"))


def _sensors(r: "_Reader", s: dict[str, Any]) -> SensorsConfig:
    kind = r.string(s, "sensors.kind", "sysfs")
    if kind not in SENSOR_KINDS:
        raise ConfigError("unknown sensor kind", source=r.source, key="sensors.kind", value=kind,
                          allowed=SENSOR_KINDS)
    return SensorsConfig(kind=kind, options={k: v for k, v in s.items() if k != "kind"})


def _telemetry(r: "_Reader", s: dict[str, Any]) -> TelemetryConfig:
    r.only(s, "telemetry", ("interval_s",))
    return TelemetryConfig(interval_s=r.number(s, "telemetry.interval_s", 10.0, lo=0.05, hi=86400.0))


def _load(r: "_Reader", s: dict[str, Any]) -> LoadConfig:
    r.only(s, "load", ("rate", "seed"))
    return LoadConfig(rate=r.number(s, "load.rate", 0.0, lo=0.0, hi=1e6),
                      seed=r.integer(s, "load.seed", 0, lo=0, hi=2**32 - 1))


class _Reader:
    """Typed getters that raise ConfigError naming the file, the dotted key and the bad value."""

    def __init__(self, source: str, base: Path) -> None:
        self.source, self.base = source, base

    def _fail(self, message: str, key: str, value: Any = None, allowed: Any = None) -> ConfigError:
        return ConfigError(message, source=self.source, key=key, value=value, allowed=allowed)

    def only(self, d: dict[str, Any], section: str, allowed: tuple[str, ...]) -> None:
        for key, value in d.items():
            if key not in allowed:
                dotted = f"{section}.{key}" if section else key
                raise self._fail("unknown key", dotted, value, allowed=allowed)

    def section(self, d: dict[str, Any], name: str) -> dict[str, Any]:
        value = d.get(name, {})
        if not isinstance(value, dict):
            raise self._fail("must be a [table]", name, value)
        return value

    @staticmethod
    def _leaf(key: str) -> str:
        return key.rsplit(".", 1)[-1]

    def string(self, d: dict[str, Any], key: str, default: Any, *, nonempty: bool = False) -> Any:
        value = d.get(self._leaf(key), default)
        if value is default:
            return value
        if not isinstance(value, str) or (nonempty and not value.strip()):
            raise self._fail("must be a non-empty string" if nonempty else "must be a string", key, value)
        return value

    def name(self, d: dict[str, Any], key: str, *, required: bool = False, default: str = "") -> str:
        if key not in d:
            if required:
                raise self._fail("is required", key)
            return default
        value = d[key]
        if not isinstance(value, str) or not _DEVICE_ID_RE.match(value):
            raise self._fail("must be 1-64 characters of letters, digits, '_', '.', '-' "
                             "(it becomes an MQTT topic level)", key, value)
        return value

    def boolean(self, d: dict[str, Any], key: str, default: bool) -> bool:
        value = d.get(self._leaf(key), default)
        if not isinstance(value, bool):
            raise self._fail("must be true or false", key, value, allowed=[True, False])
        return value

    def integer(self, d: dict[str, Any], key: str, default: int | None, *, lo: int, hi: int) -> Any:
        value = d.get(self._leaf(key), default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self._fail(f"must be an integer in {lo}..{hi}", key, value)
        return value

    def number(self, d: dict[str, Any], key: str, default: float, *, lo: float,
               hi: float = float("inf")) -> float:
        value = d.get(self._leaf(key), default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
            raise self._fail(f"must be a number in {lo}..{hi}", key, value)
        return float(value)

    def path(self, d: dict[str, Any], key: str, *, required: bool = False) -> Path | None:
        leaf = self._leaf(key)
        if leaf not in d:
            if required:
                raise self._fail("is required", key)
            return None
        value = d[leaf]
        if not isinstance(value, str) or not value.strip():
            raise self._fail("must be a non-empty path string", key, value)
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.base / p)
