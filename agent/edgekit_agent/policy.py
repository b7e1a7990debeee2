"""Power policies: modes, and rules over sensor readings that switch between them.

A policy file (TOML, ``schema = "edgekit.policy/1"``)::

    default_mode = "performance"

    [modes.performance]          # every key optional: absent threads/variant = as configured
    threads = 4                  # in agent.toml; absent governor = leave cpufreq alone
    governor = "performance"

    [modes.eco]
    inherit = "performance"      # start from another mode, then override
    threads = 1
    max_inferences_per_s = 5.0   # token bucket on inference
    variant = "fast"             # a variant in the bundle manifest
    duty_cycle = 0.5             # run inference in the first half of every duty_period_s
    governor = "powersave"       # written to cpufreq when writable
    offload_allowed = true

    [[rules]]                    # listed first = higher priority
    name = "hot"
    metric = "temperature_c"     # see sensors.METRICS
    enter_above = 70.0           # active once above 70 for hold_s ...
    exit_below = 62.0            # ... inactive again once below 62 for exit_hold_s (hysteresis)
    hold_s = 5.0
    exit_hold_s = 10.0
    mode = "eco"

A rule uses ``enter_above``/``exit_below`` or ``enter_below``/``exit_above``. The mode is the
first active rule's, else ``default_mode``. A manual mode (the ``set_mode`` command) overrides
the rules until it expires or is cleared with mode ``auto``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .tomlfile import read_toml
from .errors import ConfigError
from .sensors import GOVERNORS, METRICS, Readings

SCHEMA = "edgekit.policy/1"
AUTO = "auto"
_MODE_KEYS = ("inherit", "threads", "max_inferences_per_s", "variant", "duty_cycle",
              "duty_period_s", "governor", "offload_allowed")
_RULE_KEYS = ("name", "metric", "mode", "enter_above", "exit_below", "enter_below", "exit_above",
              "hold_s", "exit_hold_s")
_TOP_KEYS = ("schema", "default_mode", "modes", "rules")


@dataclass(frozen=True)
class Mode:
    name: str
    threads: int | None = None
    max_inferences_per_s: float | None = None
    variant: str | None = None
    duty_cycle: float = 1.0
    duty_period_s: float = 1.0
    governor: str | None = None
    offload_allowed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "") -> "Mode":
        return _mode(str(d.get("name", "")), {k: v for k, v in d.items() if k != "name"}, source)


@dataclass(frozen=True)
class Rule:
    name: str
    metric: str
    mode: str
    enter_above: float | None = None
    exit_below: float | None = None
    enter_below: float | None = None
    exit_above: float | None = None
    hold_s: float = 0.0
    exit_hold_s: float | None = None

    @property
    def rising(self) -> bool:
        return self.enter_above is not None

    def enters(self, value: float) -> bool:
        return value > self.enter_above if self.rising else value < self.enter_below  # type: ignore[operator]

    def exits(self, value: float) -> bool:
        return value < self.exit_below if self.rising else value > self.exit_above  # type: ignore[operator]

    def describe(self, value: float, entering: bool, held_s: float) -> str:
        if entering:
            op, limit = (">", self.enter_above) if self.rising else ("<", self.enter_below)
        else:
            op, limit = ("<", self.exit_below) if self.rising else (">", self.exit_above)
        state = "" if entering else " cleared"
        return f"rule '{self.name}'{state}: {self.metric} {value:g} {op} {limit:g} for {held_s:.1f} s"

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "", index: int = 0,
                  modes: tuple[str, ...] | None = None) -> "Rule":
        return _rule(d, source, index, modes)


@dataclass(frozen=True)
class Policy:
    default_mode: str
    modes: tuple[Mode, ...]
    rules: tuple[Rule, ...] = ()
    source: str = ""

    def mode(self, name: str) -> Mode:
        for m in self.modes:
            if m.name == name:
                return m
        raise ConfigError("unknown mode", source=self.source, key="mode", value=name,
                          allowed=self.mode_names)

    @property
    def mode_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modes)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "default_mode": self.default_mode,
                "modes": {m.name: {k: v for k, v in m.to_dict().items() if k != "name" and v is not None}
                          for m in self.modes},
                "rules": [r.to_dict() for r in self.rules]}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "") -> "Policy":
        return _policy(d, source)

    @classmethod
    def load(cls, path: str | Path) -> "Policy":
        path = Path(path)
        data = read_toml(path, "policy")
        return cls.from_dict(data, source=str(path))

    @classmethod
    def single(cls, mode: Mode | None = None) -> "Policy":
        """No policy file: one mode that leaves the agent as configured."""
        mode = mode or Mode(name="normal")
        return cls(default_mode=mode.name, modes=(mode,), source="<built-in>")


# --- validation ----------------------------------------------------------------------------------

def _err(source: str, message: str, key: str, value: Any = None, allowed: Any = None) -> ConfigError:
    return ConfigError(message, source=source, key=key, value=value, allowed=allowed)


def _policy(d: dict[str, Any], source: str) -> Policy:
    if not isinstance(d, dict):
        raise _err(source, "policy must be a table", "", d)
    _only(d, _TOP_KEYS, "", source)
    if d.get("schema", SCHEMA) != SCHEMA:
        raise _err(source, "unsupported policy schema", "schema", d.get("schema"), [SCHEMA])
    raw_modes = d.get("modes")
    if not isinstance(raw_modes, dict) or not raw_modes:
        raise _err(source, "at least one [modes.NAME] table is required", "modes", raw_modes)
    modes = tuple(_mode(name, _resolve_inherit(name, raw_modes, source), source) for name in raw_modes)
    names = tuple(m.name for m in modes)
    default = d.get("default_mode", names[0])
    if default not in names:
        raise _err(source, "unknown mode", "default_mode", default, names)
    raw_rules = d.get("rules", [])
    if not isinstance(raw_rules, list):
        raise _err(source, "must be an array of [[rules]] tables", "rules", raw_rules)
    rules = tuple(_rule(r, source, i, names) for i, r in enumerate(raw_rules))
    seen: set[str] = set()
    for r in rules:
        if r.name in seen:
            raise _err(source, "duplicate rule name", "rules.name", r.name)
        seen.add(r.name)
    return Policy(default_mode=default, modes=modes, rules=rules, source=source)


def _resolve_inherit(name: str, raw: dict[str, Any], source: str, chain: tuple[str, ...] = ()) -> dict[str, Any]:
    table = raw[name]
    if not isinstance(table, dict):
        raise _err(source, "must be a table", f"modes.{name}", table)
    parent = table.get("inherit")
    if parent is None:
        return dict(table)
    if parent not in raw:
        raise _err(source, "inherits an unknown mode", f"modes.{name}.inherit", parent, list(raw))
    if parent == name or parent in chain:
        raise _err(source, "inheritance loop", f"modes.{name}.inherit", parent)
    merged = {**_resolve_inherit(parent, raw, source, (*chain, name)), **table}
    merged.pop("inherit")
    return merged


def _mode(name: str, d: dict[str, Any], source: str) -> Mode:
    if not name or not name.replace("_", "").replace("-", "").isalnum() or name == AUTO:
        raise _err(source, "mode names are letters, digits, '_' or '-' (and not 'auto')", "modes", name)
    key = f"modes.{name}"
    _only(d, _MODE_KEYS, key, source)
    threads = _number(d, "threads", key, source, lo=1, hi=256, integer=True)
    rate = _number(d, "max_inferences_per_s", key, source, lo=0.001, hi=1e6)
    duty = _number(d, "duty_cycle", key, source, lo=0.01, hi=1.0)
    period = _number(d, "duty_period_s", key, source, lo=0.01, hi=3600.0)
    variant = d.get("variant")
    if variant is not None and (not isinstance(variant, str) or not variant):
        raise _err(source, "must be a variant name", f"{key}.variant", variant)
    governor = d.get("governor")
    if governor is not None and governor not in GOVERNORS:
        raise _err(source, "unknown cpufreq governor", f"{key}.governor", governor, GOVERNORS)
    offload = d.get("offload_allowed", False)
    if not isinstance(offload, bool):
        raise _err(source, "must be true or false", f"{key}.offload_allowed", offload, [True, False])
    return Mode(name=name, threads=threads, max_inferences_per_s=rate, variant=variant,
                duty_cycle=1.0 if duty is None else duty, duty_period_s=1.0 if period is None else period,
                governor=governor, offload_allowed=offload)


def _rule(d: Any, source: str, index: int, modes: tuple[str, ...] | None) -> Rule:
    key = f"rules[{index}]"
    if not isinstance(d, dict):
        raise _err(source, "must be a table", key, d)
    _only(d, _RULE_KEYS, key, source)
    name = d.get("name", f"rule{index}")
    if not isinstance(name, str) or not name:
        raise _err(source, "must be a non-empty string", f"{key}.name", name)
    metric = d.get("metric")
    if metric not in METRICS:
        raise _err(source, "unknown metric", f"{key}.metric", metric, METRICS)
    mode = d.get("mode")
    if modes is not None and mode not in modes:
        raise _err(source, "unknown mode", f"{key}.mode", mode, modes)
    if not isinstance(mode, str):
        raise _err(source, "must be a mode name", f"{key}.mode", mode)
    t = {k: _number(d, k, key, source, lo=-1e9, hi=1e9)
         for k in ("enter_above", "exit_below", "enter_below", "exit_above")}
    rising, falling = t["enter_above"] is not None, t["enter_below"] is not None
    if rising == falling:
        raise _err(source, "give exactly one of enter_above or enter_below", f"{key}.enter_above",
                   t["enter_above"])
    if rising:
        _pair(t, "enter_above", "exit_below", "exit_above", key, source, lambda e, x: x <= e)
    else:
        _pair(t, "enter_below", "exit_above", "exit_below", key, source, lambda e, x: x >= e)
    hold = _number(d, "hold_s", key, source, lo=0.0, hi=86400.0)
    exit_hold = _number(d, "exit_hold_s", key, source, lo=0.0, hi=86400.0)
    return Rule(name=name, metric=metric, mode=mode, **t, hold_s=hold or 0.0,
                exit_hold_s=exit_hold)


def _pair(t: dict[str, float | None], enter: str, exit_: str, wrong: str, key: str, source: str,
          ok: Any) -> None:
    if t[wrong] is not None:
        raise _err(source, f"{enter} pairs with {exit_}", f"{key}.{wrong}", t[wrong], [exit_])
    if t[exit_] is None:
        t[exit_] = t[enter]  # no hysteresis asked for
    if not ok(t[enter], t[exit_]):
        side = "at or below" if enter == "enter_above" else "at or above"
        raise _err(source, f"{exit_} must be {side} {enter} ({t[enter]:g})", f"{key}.{exit_}", t[exit_])


def _number(d: dict[str, Any], name: str, key: str, source: str, *, lo: float, hi: float,
            integer: bool = False) -> Any:
    value = d.get(name)
    if value is None:
        return None
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) \
            or not lo <= value <= hi:
        what = "an integer" if integer else "a number"
        raise _err(source, f"must be {what} in {lo:g}..{hi:g}", f"{key}.{name}", value)
    return value if integer else float(value)


def _only(d: dict[str, Any], allowed: tuple[str, ...], key: str, source: str) -> None:
    for k, v in d.items():
        if k not in allowed:
            raise _err(source, "unknown key", f"{key}.{k}" if key else k, v, allowed)


# --- the engine -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModeChange:
    from_mode: str
    to_mode: str
    reason: str
    ts: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"from": self.from_mode, "to": self.to_mode, "reason": self.reason}


@dataclass
class _RuleState:
    active: bool = False
    pending_since: float | None = None


@dataclass
class PolicyEngine:
    """Turns a stream of readings into mode changes, with hold times and hysteresis per rule."""

    policy: Policy
    mode: str = ""
    _states: dict[str, _RuleState] = field(default_factory=dict)
    _override: tuple[str, float | None] | None = None

    def __post_init__(self) -> None:
        self.mode = self.mode or self.policy.default_mode
        self._states = {r.name: _RuleState() for r in self.policy.rules}

    @property
    def current(self) -> Mode:
        return self.policy.mode(self.mode)

    @property
    def active_rules(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.policy.rules if self._states[r.name].active)

    @property
    def override(self) -> str | None:
        return self._override[0] if self._override else None

    def update(self, readings: Readings, now: float) -> ModeChange | None:
        reasons = [why for rule in self.policy.rules if (why := self._step(rule, readings, now))]
        if self._override and self._override[1] is not None and now >= self._override[1]:
            self._override = None
            reasons.append("manual mode expired")
        return self._switch(self._desired(), "; ".join(reasons) or "policy", now)

    def set_override(self, mode: str, now: float, duration_s: float | None = None) -> ModeChange | None:
        """Force ``mode`` (``auto`` hands control back to the rules)."""
        if mode == AUTO:
            self._override = None
            return self._switch(self._desired(), "manual mode cleared (auto)", now)
        self.policy.mode(mode)  # raises ConfigError naming the allowed modes
        self._override = (mode, None if duration_s is None else now + duration_s)
        until = "" if duration_s is None else f" for {duration_s:g} s"
        return self._switch(mode, f"manual mode{until}", now)

    def _step(self, rule: Rule, readings: Readings, now: float) -> str | None:
        state = self._states[rule.name]
        value = readings.metric(rule.metric)
        if value is None:  # the sensor is missing this time: no evidence either way
            state.pending_since = None
            return None
        crossing = rule.exits(value) if state.active else rule.enters(value)
        if not crossing:
            state.pending_since = None
            return None
        if state.pending_since is None:
            state.pending_since = now
        held = now - state.pending_since
        hold = rule.hold_s if not state.active else (
            rule.hold_s if rule.exit_hold_s is None else rule.exit_hold_s)
        if held < hold:
            return None
        state.active, state.pending_since = not state.active, None
        return rule.describe(value, state.active, held)

    def _desired(self) -> str:
        if self._override:
            return self._override[0]
        for rule in self.policy.rules:
            if self._states[rule.name].active:
                return rule.mode
        return self.policy.default_mode

    def _switch(self, to: str, reason: str, now: float) -> ModeChange | None:
        if to == self.mode:
            return None
        change = ModeChange(from_mode=self.mode, to_mode=to, reason=reason, ts=now)
        self.mode = to
        return change


# --- energy ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PowerFigures:
    """The bundle's ``target_profile.power``: watts at idle and while running inference."""

    idle_w: float = 0.0
    active_w: float | None = None

    @classmethod
    def from_profile(cls, target_profile: dict[str, Any]) -> "PowerFigures":
        power = target_profile.get("power") or {}
        if not isinstance(power, dict):
            return cls()
        idle, active = power.get("idle_w"), power.get("active_w")
        ok = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0  # noqa: E731
        return cls(idle_w=float(idle) if ok(idle) else 0.0,
                   active_w=float(active) if ok(active) else None)


@dataclass(frozen=True)
class EnergyReport:
    energy_j: float
    power_w: float
    per_inference_j: float | None
    source: str  # "profile" | "hwmon"

    def to_dict(self) -> dict[str, Any]:
        return {"energy_j": round(self.energy_j, 6), "power_w": round(self.power_w, 4),
                "per_inference_j": None if self.per_inference_j is None else round(self.per_inference_j, 9),
                "source": self.source}


def estimate_energy(figures: PowerFigures, *, elapsed_s: float, busy_s: float, count: int,
                    measured_power_w: float | None = None) -> EnergyReport | None:
    """Energy drawn over an interval and per inference in it.

    With a power meter (hwmon) its mean reading is used; otherwise the profile's idle watts for
    the idle time plus active watts for the measured busy time.
    """
    if elapsed_s <= 0:
        return None
    if measured_power_w is not None:
        energy, source = measured_power_w * elapsed_s, "hwmon"
    elif figures.active_w is not None:
        busy = min(max(busy_s, 0.0), elapsed_s)
        energy, source = figures.idle_w * (elapsed_s - busy) + figures.active_w * busy, "profile"
    else:
        return None
    return EnergyReport(energy_j=energy, power_w=energy / elapsed_s,
                        per_inference_j=energy / count if count > 0 else None, source=source)
