"""Target profiles: TOML files (one per board/accelerator) with ``inherit``, validated strictly.

Built-in profiles live in ``firmware_targets/``; more folders come from ``--targets-dir`` or
the ``EDGEKIT_TARGETS_DIR`` environment variable (``os.pathsep``-separated). A later folder's
profile replaces a built-in one of the same name.
"""

from __future__ import annotations

import math
import os
from importlib import resources
from pathlib import Path
from typing import Any

from edgekit_agent.tomlfile import read_toml

from ..errors import ConfigError
from .base import Power, Profile
from .ethos_u import ACCELERATOR_CONFIGS
from .families import FAMILY_REGISTRY

FAMILIES = tuple(FAMILY_REGISTRY)
RUNTIMES = ("litert", "onnxruntime", "edgetpu", "tflm")
DTYPES = ("float32", "float16", "int16", "int8", "uint8", "int4")
ENV_VAR = "EDGEKIT_TARGETS_DIR"

_REQUIRED = {"family": str, "description": str, "runtime": str, "arch": str,
             "flash_bytes": int, "ram_bytes": int, "dtypes": list}
_OPTIONAL = {"cpu": str, "clock_mhz": int, "cores": int, "accelerator": str,
             "default_input_batch": int, "power": dict, "options": dict, "inherit": str,
             "latency": dict}
# the cost model's throughput figures (edgekit.packer.latency_model documents them)
LATENCY_KEYS = ("fp32_gmacs", "fp16_gmacs", "int8_gmacs", "fp32_cycles_per_mac",
                "int8_cycles_per_mac", "op_overhead_cycles", "mem_gbps", "op_overhead_us",
                "accelerator_int8_gmacs", "link_gbps")
_POWER_KEYS = ("idle_w", "active_w", "accelerator_w")


def builtin_dir() -> Path:
    # the firmware_targets/ folder, packaged as edgekit.firmware_targets (data, not code)
    return Path(str(resources.files("edgekit.firmware_targets")))


def search_dirs(extra: list[str | Path] | None = None) -> list[Path]:
    dirs = [builtin_dir()]
    env = os.environ.get(ENV_VAR, "")
    dirs += [Path(p) for p in env.split(os.pathsep) if p]
    dirs += [Path(p) for p in extra or []]
    for d in dirs[1:]:
        if not d.is_dir():
            raise ConfigError(f"targets folder {d} does not exist")
    return dirs


def load_profiles(extra_dirs: list[str | Path] | None = None) -> dict[str, Profile]:
    raw: dict[str, tuple[Path, dict[str, Any]]] = {}
    for d in search_dirs(extra_dirs):
        for path in sorted(d.glob("*.toml")):
            raw[path.stem] = (path, read_toml(path, "profile"))
    return {name: _resolve(name, raw, ()) for name in sorted(raw)}


def get_profile(name: str, extra_dirs: list[str | Path] | None = None) -> Profile:
    profiles = load_profiles(extra_dirs)
    if name not in profiles:
        raise ConfigError(f"unknown target {name!r}", key="--target", value=name,
                          allowed=list(profiles))
    return profiles[name]


def _resolve(name: str, raw: dict[str, tuple[Path, dict[str, Any]]],
             chain: tuple[str, ...]) -> Profile:
    merged, path = _merged(name, raw, chain)
    return _validate(name, merged, path)


def _merged(name: str, raw: dict[str, tuple[Path, dict[str, Any]]],
            chain: tuple[str, ...]) -> tuple[dict[str, Any], Path]:
    path, data = raw[name]
    parent = data.get("inherit")
    if parent is None:
        return dict(data), path
    if not isinstance(parent, str) or parent not in raw:
        raise ConfigError("inherits an unknown profile", source=str(path), key="inherit",
                          value=parent, allowed=list(raw))
    if parent in chain or parent == name:
        raise ConfigError("inheritance loop", source=str(path), key="inherit", value=parent)
    base, base_path = _merged(parent, raw, (*chain, name))
    _validate(parent, base, base_path)  # a broken parent is reported against its own file
    for table in ("power", "options", "latency"):  # tables merge key by key; scalars replace
        if table in data and isinstance(base.get(table), dict) and isinstance(data[table], dict):
            data = {**data, table: {**base[table], **data[table]}}
    merged = {**base, **data}
    merged.pop("inherit")
    return merged, path


def _validate(name: str, d: dict[str, Any], path: Path) -> Profile:
    src = str(path)
    for key in d:
        if key not in _REQUIRED and key not in _OPTIONAL:
            raise ConfigError("unknown key", source=src, key=key, value=d[key],
                              allowed=[*_REQUIRED, *_OPTIONAL])
    for key in _REQUIRED:
        if key not in d:
            raise ConfigError("missing required key", source=src, key=key)
    for key, typ in {**_REQUIRED, **_OPTIONAL}.items():
        if key in d and (not isinstance(d[key], typ) or isinstance(d[key], bool)):
            raise ConfigError(f"must be a {typ.__name__}", source=src, key=key, value=d[key])
    _choice(src, "family", d["family"], FAMILIES)
    _choice(src, "runtime", d["runtime"], RUNTIMES)
    if d["family"] == "ethos-u":  # Vela accepts only its own accelerator configs
        _choice(src, "accelerator", d.get("accelerator", ""), ACCELERATOR_CONFIGS)
    for dt in d["dtypes"]:
        _choice(src, "dtypes", dt, DTYPES)
    for key in ("flash_bytes", "ram_bytes", "clock_mhz", "cores", "default_input_batch"):
        if key in d and d[key] < (0 if key == "clock_mhz" else 1):
            raise ConfigError("must be positive", source=src, key=key, value=d[key])
    power = _power(src, d.get("power", {}))
    options = _family_options(src, d["family"], d.get("options", {}))
    return Profile(name=name, family=d["family"], description=d["description"],
                   runtime=d["runtime"], arch=d["arch"], flash_bytes=d["flash_bytes"],
                   ram_bytes=d["ram_bytes"], dtypes=tuple(d["dtypes"]), power=power,
                   cpu=d.get("cpu", ""), clock_mhz=d.get("clock_mhz", 0), cores=d.get("cores", 1),
                   accelerator=d.get("accelerator", ""),
                   default_input_batch=d.get("default_input_batch", 1), options=options, source=src,
                   latency=_latency(src, d.get("latency", {})))


def _choice(src: str, key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError("invalid value", source=src, key=key, value=value, allowed=list(allowed))


def _power(src: str, d: dict[str, Any]) -> Power:
    for key, value in d.items():
        if key not in _POWER_KEYS:
            raise ConfigError("unknown key", source=src, key=f"power.{key}", value=value,
                              allowed=list(_POWER_KEYS))
        if (not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0
                or not math.isfinite(value)):
            raise ConfigError("must be a non-negative number of watts", source=src,
                              key=f"power.{key}", value=value)
    for key in ("idle_w", "active_w"):
        if key not in d:
            raise ConfigError("missing required key", source=src, key=f"power.{key}")
    return Power(**{k: float(v) for k, v in d.items()})


def _latency(src: str, table: dict[str, Any]) -> dict[str, float]:
    for key, value in table.items():
        if key not in LATENCY_KEYS:
            raise ConfigError("unknown key", source=src, key=f"latency.{key}", value=value,
                              allowed=list(LATENCY_KEYS))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigError("must be a positive number", source=src, key=f"latency.{key}",
                              value=value)
    return {k: float(v) for k, v in table.items()}


def _family_options(src: str, family: str, d: dict[str, Any]) -> dict[str, Any]:
    spec = FAMILY_REGISTRY[family].OPTIONS
    for key, value in d.items():
        if key not in spec:
            raise ConfigError(f"unknown option for family {family!r}", source=src,
                              key=f"options.{key}", value=value, allowed=list(spec))
        typ, allowed = spec[key]
        if not isinstance(value, typ) or isinstance(value, bool):
            raise ConfigError(f"must be a {typ.__name__}", source=src,
                              key=f"options.{key}", value=value)
        if allowed and value not in allowed:
            raise ConfigError("invalid value", source=src, key=f"options.{key}", value=value,
                              allowed=list(allowed))
    missing = [k for k in FAMILY_REGISTRY[family].REQUIRED_OPTIONS if k not in d]
    if missing:
        raise ConfigError("missing required option", source=src, key=f"options.{missing[0]}")
    return dict(d)
