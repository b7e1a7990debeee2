"""Target profiles: TOML files (one per board/accelerator) with ``inherit``, validated strictly.

Built-in profiles live in ``firmware_targets/``; more folders come from ``--targets-dir`` or
the ``EDGEKIT_TARGETS_DIR`` environment variable (``os.pathsep``-separated). A later folder's
profile replaces a built-in one of the same name.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

from edgekit_agent.power.energy import PowerFigures
from edgekit_agent.tomlfile import read_toml
from edgekit_agent.validate import Table, invalid

from ..errors import ConfigError
from .base import Profile
from .ethos_u import ACCELERATOR_CONFIGS
from .families import FAMILY_REGISTRY

FAMILIES = tuple(FAMILY_REGISTRY)
RUNTIMES = ("litert", "onnxruntime", "edgetpu", "tflm")
DTYPES = ("float32", "float16", "int16", "int8", "uint8", "int4")
ENV_VAR = "EDGEKIT_TARGETS_DIR"

_KEYS = ("family", "description", "runtime", "arch", "flash_bytes", "ram_bytes", "dtypes", "cpu",
         "clock_mhz", "cores", "accelerator", "default_input_batch", "power", "options",
         "latency")
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
        raise invalid(str(path), "inherit", parent, "a known profile", list(raw))
    if parent in chain or parent == name:
        raise invalid(str(path), "inherit", parent, "a profile outside an inheritance loop")
    base, base_path = _merged(parent, raw, (*chain, name))
    _validate(parent, base, base_path)  # a broken parent is reported against its own file
    for table in ("power", "options", "latency"):  # tables merge key by key; scalars replace
        if table in data and isinstance(base.get(table), dict) and isinstance(data[table], dict):
            data = {**data, table: {**base[table], **data[table]}}
    merged = {**base, **data}
    merged.pop("inherit")
    return merged, path


def _validate(name: str, d: dict[str, Any], path: Path) -> Profile:
    t = Table(d, str(path))
    t.only(_KEYS)
    family = t.choice("family", FAMILIES)
    # Vela accepts only its own accelerator configs
    accelerator = (t.choice("accelerator", ACCELERATOR_CONFIGS) if family == "ethos-u"
                   else t.get("accelerator", str, ""))
    return Profile(name=name, family=family, description=t.get("description", str),
                   runtime=t.choice("runtime", RUNTIMES), arch=t.get("arch", str),
                   flash_bytes=t.integer("flash_bytes", lo=1), ram_bytes=t.integer("ram_bytes", lo=1),
                   dtypes=t.items("dtypes", str, allowed=DTYPES), power=_power(t.table("power")),
                   cpu=t.get("cpu", str, ""), clock_mhz=t.integer("clock_mhz", 0, lo=0),
                   cores=t.integer("cores", 1, lo=1), accelerator=accelerator,
                   default_input_batch=t.integer("default_input_batch", 1, lo=1),
                   options=_family_options(t.table("options"), family), source=str(path),
                   latency=_latency(t.table("latency")))


def _power(t: Table) -> PowerFigures:
    t.only(_POWER_KEYS)
    return PowerFigures(idle_w=t.number("idle_w", lo=0.0), active_w=t.number("active_w", lo=0.0),
                        accelerator_w=t.number("accelerator_w", 0.0, lo=0.0))


def _latency(t: Table) -> dict[str, float]:
    t.only(LATENCY_KEYS)
    return {key: t.number(key, lo=1e-9) for key in t.data}


def _family_options(t: Table, family: str) -> dict[str, Any]:
    spec = FAMILY_REGISTRY[family].OPTIONS
    t.only(tuple(spec))
    for key in FAMILY_REGISTRY[family].REQUIRED_OPTIONS:
        t.get(key, spec[key][0])
    for key, (kind, allowed) in spec.items():
        if allowed:
            t.choice(key, allowed, None)
        else:
            t.get(key, kind, None)
    return dict(t.data)
