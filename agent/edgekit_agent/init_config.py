"""`edgekit-agent init`: write a first, working ``agent.toml`` for this device.

The file is rendered from the options, read back through ``AgentConfig`` (so it is exactly what
``run`` will accept) and only then written, atomically; an existing file is kept unless
``force``. The store folder is created so ``install`` can follow at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .config import AgentConfig
from .defaults import HTTP_HOST, HTTP_PORT, MQTT_PORT
from .errors import ConfigError, EdgekitError
from .tomlfile import parse_toml


@dataclass(frozen=True)
class InitOptions:
    device_id: str
    out: Path
    store: Path
    fleet: str = "default"
    broker: tuple[str, int] | None = None  # None: MQTT off until a broker is configured
    public_key: Path | None = None
    sensors: str = ""  # "" = detect
    policy: Path | None = None
    http_port: int = HTTP_PORT
    force: bool = False


def detect_sensors(root: Path = Path("/")) -> str:
    """"pi" with the Pi firmware's vcgencmd, "sysfs" with a thermal zone, else "simulated"."""
    if (root / "usr/bin/vcgencmd").exists():
        return "pi"
    if any((root / "sys/class/thermal").glob("thermal_zone*")):
        return "sysfs"
    return "simulated"


def render(opts: InitOptions) -> str:
    def q(value: object) -> str:  # a TOML basic string
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'

    key = (f"public_key = {q(opts.public_key.resolve())}" if opts.public_key else
           "# public_key = \"/etc/edgekit/fleet.pub\"   # set it: only signed bundles then run")
    host, port = opts.broker or ("localhost", MQTT_PORT)
    policy = (f"file = {q(opts.policy.resolve())}" if opts.policy else
              "# file = \"/etc/edgekit/policy.toml\"   # modes and rules; none: the default mode")
    return f"""\
# edgekit-agent configuration written by `edgekit-agent init`; agent/agent.toml documents every key.
device_id = {q(opts.device_id)}
fleet = {q(opts.fleet)}

[store]
root = {q(opts.store.resolve())}
{key}

[http]
host = {q(HTTP_HOST)}
port = {opts.http_port}

[mqtt]
enabled = {"true" if opts.broker else "false"}
host = {q(host)}
port = {port}

[policy]
{policy}

[sensors]
kind = {q(opts.sensors or detect_sensors())}
"""


def write_config(opts: InitOptions) -> AgentConfig:
    if opts.out.exists() and not opts.force:
        raise ConfigError(f"{opts.out} already exists (--force replaces it)")
    if opts.public_key is not None and not opts.public_key.is_file():
        raise ConfigError(f"public key {opts.public_key} not found (make one with `edgekit keygen`)")
    text = render(opts)
    config = AgentConfig.from_dict(parse_toml(text, str(opts.out)), source=str(opts.out),
                                   base=opts.out.parent)
    try:
        opts.store.mkdir(parents=True, exist_ok=True)
        opts.out.parent.mkdir(parents=True, exist_ok=True)
        staged = opts.out.with_name(f".{opts.out.name}.{os.getpid()}.tmp")
        staged.write_text(text, encoding="utf-8")
        os.replace(staged, opts.out)
    except OSError as exc:
        raise EdgekitError(f"cannot write {exc.filename}: {exc.strerror}") from None
    return config
