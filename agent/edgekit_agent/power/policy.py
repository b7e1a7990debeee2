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

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..tomlfile import read_toml
from ..validate import Table, invalid
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
    def from_dict(cls, d: dict[str, Any], source: str = "") -> Mode:
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
                  modes: tuple[str, ...] | None = None) -> Rule:
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
        raise invalid(self.source, "mode", name, "a mode of this policy", self.mode_names)

    @property
    def mode_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modes)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "default_mode": self.default_mode,
                "modes": {m.name: {k: v for k, v in m.to_dict().items() if k != "name" and v is not None}
                          for m in self.modes},
                "rules": [r.to_dict() for r in self.rules]}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "") -> Policy:
        return _policy(d, source)

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        path = Path(path)
        data = read_toml(path, "policy")
        return cls.from_dict(data, source=str(path))

    @classmethod
    def single(cls, mode: Mode | None = None) -> Policy:
        """No policy file: one mode that leaves the agent as configured."""
        mode = mode or Mode(name="normal")
        return cls(default_mode=mode.name, modes=(mode,), source="<built-in>")


# --- reading a policy file ----------------------------------------------------------------------------------

def _policy(d: dict[str, Any], source: str) -> Policy:
    t = Table(d, source)
    t.only(_TOP_KEYS)
    t.choice("schema", (SCHEMA,), SCHEMA)
    raw_modes = t.get("modes", dict)
    if not raw_modes:
        raise t.fail("modes", raw_modes, "at least one [modes.NAME] table")
    modes = tuple(_mode(name, _resolve_inherit(name, t.table("modes")), source) for name in raw_modes)
    names = tuple(m.name for m in modes)
    default = t.choice("default_mode", names, names[0])
    raw_rules = t.get("rules", list, [])
    rules = tuple(_rule(r, source, i, names) for i, r in enumerate(raw_rules))
    seen: set[str] = set()
    for i, r in enumerate(rules):
        if r.name in seen:
            raise t.fail(f"rules[{i}].name", r.name, "a unique rule name")
        seen.add(r.name)
    return Policy(default_mode=default, modes=modes, rules=rules, source=source)


def _resolve_inherit(name: str, modes: Table, chain: tuple[str, ...] = ()) -> dict[str, Any]:
    table = modes.table(name)
    parent = table.data.get("inherit")
    if parent is None:
        return dict(table.data)
    if parent not in modes.data:
        raise table.fail("inherit", parent, "a mode", list(modes.data))
    if parent == name or parent in chain:
        raise table.fail("inherit", parent, "a mode outside its own inheritance chain (loop)")
    merged = {**_resolve_inherit(parent, modes, (*chain, name)), **table.data}
    merged.pop("inherit")
    return merged


def _mode(name: str, d: dict[str, Any], source: str) -> Mode:
    if not name or not name.replace("_", "").replace("-", "").isalnum() or name == AUTO:
        raise invalid(source, "modes", name, "a mode name of letters, digits, '_' or '-' (not 'auto')")
    t = Table(d, source, f"modes.{name}")
    t.only(_MODE_KEYS)
    variant = t.get("variant", str, None)
    if variant == "":
        raise t.fail("variant", variant, "a variant name")
    return Mode(name=name, threads=t.integer("threads", None, lo=1, hi=256),
                max_inferences_per_s=t.number("max_inferences_per_s", None, lo=0.001, hi=1e6),
                variant=variant, duty_cycle=t.number("duty_cycle", 1.0, lo=0.01, hi=1.0),
                duty_period_s=t.number("duty_period_s", 1.0, lo=0.01, hi=3600.0),
                governor=t.choice("governor", GOVERNORS, None),
                offload_allowed=t.boolean("offload_allowed", False))


def _rule(d: Any, source: str, index: int, modes: tuple[str, ...] | None) -> Rule:
    t = Table(d, source, f"rules[{index}]")
    t.only(_RULE_KEYS)
    name = t.string("name", f"rule{index}", nonempty=True)
    metric = t.choice("metric", METRICS)
    mode = t.choice("mode", modes) if modes is not None else t.string("mode", what="a mode name")
    bounds = {k: t.number(k, None, lo=-1e9, hi=1e9)
              for k in ("enter_above", "exit_below", "enter_below", "exit_above")}
    rising, falling = bounds["enter_above"] is not None, bounds["enter_below"] is not None
    if rising == falling:
        raise t.fail("enter_above", bounds["enter_above"],
                     "given together with enter_below (give exactly one of them)" if rising
                     else "optional when enter_below is absent (give exactly one of them)",
                     missing=not rising)
    if rising:
        _pair(t, bounds, "enter_above", "exit_below", "exit_above", lambda e, x: x <= e)
    else:
        _pair(t, bounds, "enter_below", "exit_above", "exit_below", lambda e, x: x >= e)
    return Rule(name=name, metric=metric, mode=mode, **bounds,
                hold_s=t.number("hold_s", 0.0, lo=0.0, hi=86400.0),
                exit_hold_s=t.number("exit_hold_s", None, lo=0.0, hi=86400.0))


def _pair(t: Table, bounds: dict[str, float | None], enter: str, exit_: str, wrong: str,
          ok: Callable[[float, float], bool]) -> None:
    if bounds[wrong] is not None:
        raise t.fail(wrong, bounds[wrong], f"a key that pairs with {enter}", [exit_])
    if bounds[exit_] is None:
        bounds[exit_] = bounds[enter]  # no hysteresis asked for
    if not ok(bounds[enter], bounds[exit_]):  # type: ignore[arg-type]
        side = "at or below" if enter == "enter_above" else "at or above"
        raise t.fail(exit_, bounds[exit_], f"{side} {enter} ({bounds[enter]:g})")


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
