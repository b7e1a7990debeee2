"""The rollout's pure logic: waves, device selection and the abort decision (no I/O).

Waves are cumulative percentages of the selected devices (``5,15,100``: the first 5 %, at least
one device, then up to 15 %, then everyone), in device-name order so a plan is reproducible. After
each wave the failure rate over every finished device so far is checked against
``max_failure_rate`` once ``min_devices`` have finished (AWS IoT Jobs' abort criteria); devices
that were offline do not count until they report.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from edgekit_agent.errors import ConfigError

DEFAULT_WAVES = (5.0, 15.0, 100.0)
# Device states in the rollout; FINISHED ones count in the failure rate.
PENDING, OFFERED, DEFERRED = "pending", "offered", "deferred"
SUCCEEDED, FAILED, ROLLED_BACK, SKIPPED = "succeeded", "failed", "rolled_back", "skipped"
FINISHED = (SUCCEEDED, FAILED, ROLLED_BACK)
STATES = (PENDING, OFFERED, DEFERRED, SUCCEEDED, FAILED, ROLLED_BACK, SKIPPED)


@dataclass(frozen=True)
class RolloutOptions:
    """What `edgekit deploy` was asked for; stored with the rollout so a resume uses the same."""

    waves: tuple[float, ...] = DEFAULT_WAVES
    max_failure_rate: float = 0.2
    min_devices: int = 1
    timeout_s: float = 600.0
    chunk_size: int = 64 << 10
    window: int = 16
    health_s: float = 10.0
    max_error_rate: float = 0.0
    max_latency_ratio: float = 2.0
    latency_slack_ms: float = 5.0
    selectors: tuple[tuple[str, str], ...] = ()
    allow_downgrade: bool = False  # devices accept a lower security_version (recorded there)

    def __post_init__(self) -> None:
        check_waves(self.waves)
        _check_range("--max-failure-rate", self.max_failure_rate, 0.0, 1.0)
        _check_range("--min-devices", self.min_devices, 1, 1e9)
        _check_range("--timeout", self.timeout_s, 1.0, 1e7)
        _check_range("--chunk-size", self.chunk_size, 1024, 512 << 10)
        _check_range("--window", self.window, 1, 64)
        _check_range("--health-s", self.health_s, 0.0, 86400.0)
        _check_range("--max-error-rate", self.max_error_rate, 0.0, 1.0)
        _check_range("--max-latency-ratio", self.max_latency_ratio, 1.0, 1000.0)

    def health(self) -> dict[str, float]:
        return {"window_s": self.health_s, "max_error_rate": self.max_error_rate,
                "max_latency_ratio": self.max_latency_ratio, "latency_slack_ms": self.latency_slack_ms}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["waves"], d["selectors"] = list(self.waves), [list(s) for s in self.selectors]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RolloutOptions:
        d = dict(d)
        d["waves"] = tuple(float(w) for w in d["waves"])
        d["selectors"] = tuple((str(k), str(v)) for k, v in d.get("selectors", ()))
        return cls(**d)


def _check_range(key: str, value: float, lo: float, hi: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and lo <= value <= hi):
        raise ConfigError(f"must be in {lo:g}..{hi:g}", key=key, value=value)


def parse_waves(text: str) -> tuple[float, ...]:
    """``"5,15,100"`` -> (5.0, 15.0, 100.0)."""
    try:
        waves = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise ConfigError("must be comma-separated percentages, e.g. 5,15,100", key="--waves",
                          value=text) from None
    return check_waves(waves, text)


def check_waves(waves: tuple[float, ...], shown: Any = None) -> tuple[float, ...]:
    shown = shown if shown is not None else ",".join(f"{w:g}" for w in waves)
    if not waves or any(not 0 < w <= 100 for w in waves) or list(waves) != sorted(set(waves)):
        raise ConfigError("must be increasing percentages in (0, 100]", key="--waves", value=shown)
    if waves[-1] != 100:
        raise ConfigError("must end at 100 (every selected device)", key="--waves", value=shown)
    return waves


def plan_waves(devices: Iterable[str], waves: tuple[float, ...]) -> list[list[str]]:
    """The devices of each wave (empty waves dropped): cumulative counts ceil(p % of n), >= 1."""
    ordered = sorted(set(devices))
    plan, done = [], 0
    for percent in waves:
        upto = min(len(ordered), max(1, math.ceil(len(ordered) * percent / 100 - 1e-9)))
        if upto > done:
            plan.append(ordered[done:upto])
            done = upto
    return plan


@dataclass(frozen=True)
class Decision:
    halt: bool
    finished: int
    failed: int
    rate: float
    reason: str = ""


def decide(states: Iterable[str], max_failure_rate: float, min_devices: int) -> Decision:
    """Halt when the failure rate over the finished devices passes the threshold (once enough
    have finished)."""
    states = list(states)
    finished = sum(s in FINISHED for s in states)
    failed = sum(s == FAILED for s in states)
    rate = failed / finished if finished else 0.0
    if finished < min_devices or rate <= max_failure_rate:
        return Decision(False, finished, failed, rate)
    return Decision(True, finished, failed, rate,
                    f"failure rate {rate:.2f} ({failed} of {finished} finished) > {max_failure_rate:g}")


def parse_selectors(items: Iterable[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError("must be KEY=VALUE", key="--select", value=item)
        out.append((key.strip(), value))
    return tuple(out)


def status_field(status: Mapping[str, Any], key: str) -> Any:
    """A device's ``status`` field by name: ``device``, ``state``, ``mode``, ``target``,
    ``name``/``version``/``id``/``variant`` (of the running bundle), or a dotted path."""
    bundle = status.get("bundle") or {}
    if key in status and not isinstance(status[key], dict):
        return status[key]
    if key in bundle:
        return bundle[key]
    node: Any = status
    for part in key.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def select(statuses: Mapping[str, Mapping[str, Any]],
           selectors: tuple[tuple[str, str], ...]) -> list[str]:
    """The devices whose status matches every ``key=value`` (compared as text)."""
    return sorted(d for d, st in statuses.items()
                  if all(str(status_field(st, k)) == v for k, v in selectors))
