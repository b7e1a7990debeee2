"""Policy files (strict validation, inherit, round trip) and the engine's holds and hysteresis."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgekit_agent.errors import ConfigError
from edgekit_agent.power.energy import PowerFigures, estimate_energy
from edgekit_agent.power.policy import Mode, Policy, PolicyEngine, Rule
from edgekit_agent.power.sensors import Readings

REPO = Path(__file__).resolve().parents[3]

HOT = """
default_mode = "performance"
[modes.performance]
threads = 4
[modes.eco]
inherit = "performance"
max_inferences_per_s = 5.0
duty_cycle = 0.5
governor = "powersave"
[modes.critical]
inherit = "eco"
max_inferences_per_s = 1
[[rules]]
name = "too-hot"
metric = "temperature_c"
enter_above = 85.0
exit_below = 80.0
mode = "critical"
[[rules]]
name = "hot"
metric = "temperature_c"
enter_above = 70.0
exit_below = 62.0
hold_s = 5.0
exit_hold_s = 10.0
mode = "eco"
[[rules]]
name = "battery-low"
metric = "battery_pct"
enter_below = 20.0
exit_above = 30.0
hold_s = 2.0
mode = "eco"
"""


def load(tmp_path: Path, text: str) -> Policy:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return Policy.load(path)


def temp(t: float, battery: float | None = None) -> Readings:
    return Readings(ts=0.0, temperature_c=t, battery_pct=battery)


def test_sample_policy_in_the_repo_loads_and_round_trips():
    policy = Policy.load(REPO / "agent" / "policies" / "default.toml")
    assert policy.default_mode == "performance"
    assert policy.mode("critical").duty_cycle == 0.2 and policy.mode("critical").threads == 1  # inherited
    again = Policy.from_dict(policy.to_dict(), source=policy.source)
    assert again == policy


def test_inherit_merges_and_to_dict_round_trips(tmp_path: Path):
    policy = load(tmp_path, HOT)
    critical = policy.mode("critical")
    assert critical == Mode(name="critical", threads=4, max_inferences_per_s=1.0, duty_cycle=0.5,
                            governor="powersave")
    assert Policy.from_dict(policy.to_dict(), source=policy.source) == policy
    assert Rule.from_dict(policy.rules[1].to_dict()) == policy.rules[1]
    assert Mode.from_dict(critical.to_dict()) == critical


@pytest.mark.parametrize("text, fragments", [
    ('[modes.a]\nthreads = 0', ["modes.a.threads: 0 is not an integer in 1..256"]),
    ('[modes.a]\nthreads = 2.5', ["modes.a.threads: 2.5 is not an integer"]),
    ('[modes.a]\nturbo = true', ["modes.a.turbo: True is not a known key", "allowed: ", "duty_cycle"]),
    ('[modes.a]\ngovernor = "fast"', ["modes.a.governor: 'fast' is not", "allowed: conservative, ondemand"]),
    ('[modes.a]\nduty_cycle = 1.5', ["modes.a.duty_cycle: 1.5 is not a number in 0.01..1"]),
    ('[modes.a]\noffload_allowed = "yes"', ["modes.a.offload_allowed: 'yes' is not true or false"]),
    ('[modes.a]\ninherit = "b"', ["modes.a.inherit: 'b' is not a mode", "allowed: a"]),
    ('[modes.a]\ninherit = "b"\n[modes.b]\ninherit = "a"',
     ["modes.b.inherit: 'a' is not a mode outside its own inheritance chain (loop)"]),
    ('default_mode = "x"\n[modes.a]', ["default_mode: 'x' is not", "allowed: a"]),
    ('schema = "edgekit.policy/9"\n[modes.a]', ["schema: 'edgekit.policy/9' is not", "allowed: edgekit.policy/1"]),
    ('rules = 3\n[modes.a]', ["rules: 3 is not a list"]),
    ('[modes.auto]', ["not 'auto'"]),
    ('[modes.a]\n[[rules]]\nmetric = "humidity"\nenter_above = 1\nmode = "a"',
     ["rules[0].metric: 'humidity' is not", "allowed: ", "temperature_c"]),
    ('[modes.a]\n[[rules]]\nmetric = "temperature_c"\nenter_above = 1\nmode = "b"',
     ["rules[0].mode: 'b' is not", "allowed: a"]),
    ('[modes.a]\n[[rules]]\nmetric = "temperature_c"\nmode = "a"',
     ["rules[0].enter_above: missing", "exactly one of them"]),
    ('[modes.a]\n[[rules]]\nmetric = "temperature_c"\nenter_above = 70\nexit_below = 75\nmode = "a"',
     ["rules[0].exit_below: 75.0 is not at or below enter_above (70)"]),
    ('[modes.a]\n[[rules]]\nmetric = "battery_pct"\nenter_below = 20\nexit_below = 30\nmode = "a"',
     ["rules[0].exit_below: 30.0 is not a key that pairs with enter_below", "allowed: exit_above"]),
    ('[modes.a]\n[[rules]]\nmetric = "battery_pct"\nenter_below = 20\nhold_s = -1\nmode = "a"',
     ["rules[0].hold_s: -1 is not a number in 0..86400"]),
    ('[modes.a]\n[[rules]]\nname = "x"\nmetric = "battery_pct"\nenter_below = 2\nmode = "a"\n'
     '[[rules]]\nname = "x"\nmetric = "battery_pct"\nenter_below = 3\nmode = "a"',
     ["rules[1].name: 'x' is not a unique rule name"]),
    ('[modes.a]\n[[rules]]\nmetric = "battery_pct"\nenter_below = 2\nmode = "a"\nsince = 3',
     ["rules[0].since: 3 is not a known key"]),
    ('[modes', ["not valid TOML"]),
])
def test_bad_policy_files_name_file_key_value_and_allowed(tmp_path: Path, text, fragments):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    message = str(info.value)
    assert message.startswith(str(tmp_path / "policy.toml") + ": ")
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_missing_policy_file(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"nope.toml: cannot read policy"):
        Policy.load(tmp_path / "nope.toml")


def test_rising_rule_hold_and_hysteresis(tmp_path: Path):
    engine = PolicyEngine(load(tmp_path, HOT))
    assert engine.mode == "performance"
    # Above 70 but not for 5 s yet; a dip below resets the hold.
    assert engine.update(temp(71), 0.0) is None
    assert engine.update(temp(72), 4.9) is None
    assert engine.update(temp(69.9), 5.0) is None
    assert engine.update(temp(71), 6.0) is None
    assert engine.update(temp(71), 10.9) is None
    change = engine.update(temp(70.5), 11.0)
    assert (change.from_mode, change.to_mode) == ("performance", "eco")
    assert change.reason == "rule 'hot': temperature_c 70.5 > 70 for 5.0 s"
    assert change.to_dict() == {"from": "performance", "to": "eco", "reason": change.reason}
    # Inside the hysteresis band (62..70) nothing changes, however long.
    for t in range(12, 200, 7):
        assert engine.update(temp(65), float(t)) is None
    assert engine.mode == "eco" and engine.active_rules == ("hot",)
    # Below 62 for exit_hold_s (10 s) -> back, with the reason.
    assert engine.update(temp(61), 200.0) is None
    assert engine.update(temp(61.5), 209.0) is None
    change = engine.update(temp(60), 210.0)
    assert (change.from_mode, change.to_mode) == ("eco", "performance")
    assert change.reason == "rule 'hot' cleared: temperature_c 60 < 62 for 10.0 s"


def test_oscillating_signal_does_not_flap(tmp_path: Path):
    """A reading that wobbles ±3 °C around 68 crosses neither 70 for 5 s nor 62: no change at all."""
    engine = PolicyEngine(load(tmp_path, HOT))
    changes = [engine.update(temp(68 + (3 if i % 2 else -3)), i * 1.0) for i in range(300)]
    assert [c for c in changes if c] == []
    # The same wobble around the threshold without hysteresis would switch every second:
    plain = Policy.from_dict({"modes": {"a": {}, "b": {}}, "rules": [
        {"name": "r", "metric": "temperature_c", "enter_above": 68.0, "mode": "b"}]})
    engine = PolicyEngine(plain)
    flips = [engine.update(temp(68 + (3 if i % 2 else -3)), i * 1.0) for i in range(300)]
    assert sum(1 for c in flips if c) == 299


def test_priority_first_rule_wins_and_falling_rule(tmp_path: Path):
    engine = PolicyEngine(load(tmp_path, HOT))
    assert engine.update(temp(50, battery=19.0), 0.0) is None
    change = engine.update(temp(50, battery=19.0), 2.0)
    assert change.to_mode == "eco" and "battery_pct 19 < 20 for 2.0 s" in change.reason
    change = engine.update(temp(86, battery=19.0), 3.0)  # too-hot has no hold and is listed first
    assert change.to_mode == "critical" and change.reason.startswith("rule 'too-hot'")
    assert engine.active_rules == ("too-hot", "battery-low")
    change = engine.update(temp(79, battery=19.0), 4.0)  # too-hot clears; battery-low still holds
    assert (change.from_mode, change.to_mode) == ("critical", "eco")
    assert engine.update(temp(50, battery=25.0), 5.0) is None  # in the battery band
    assert engine.update(temp(50, battery=31.0), 6.0) is None  # exit hold defaults to hold_s (2 s)
    assert engine.update(temp(50, battery=31.0), 8.0).to_mode == "performance"


def test_missing_reading_keeps_state(tmp_path: Path):
    engine = PolicyEngine(load(tmp_path, HOT))
    engine.update(temp(90), 0.0)
    assert engine.mode == "critical"
    for t in range(1, 50):
        assert engine.update(Readings(ts=0.0), float(t)) is None
    assert engine.mode == "critical"


def test_manual_override_wins_until_cleared_or_expired(tmp_path: Path):
    engine = PolicyEngine(load(tmp_path, HOT))
    change = engine.set_override("eco", 0.0)
    assert (change.to_mode, change.reason) == ("eco", "manual mode")
    assert engine.update(temp(90), 1.0) is None  # rules are overruled
    assert engine.active_rules == ("too-hot",)
    change = engine.set_override("auto", 2.0)
    assert change.to_mode == "critical" and "auto" in change.reason
    engine.update(temp(50), 3.0)
    assert engine.mode == "performance"
    engine.set_override("critical", 4.0, duration_s=10.0)
    assert engine.update(temp(50), 13.9) is None
    change = engine.update(temp(50), 14.0)
    assert change.to_mode == "performance" and "manual mode expired" in change.reason
    with pytest.raises(ConfigError, match=r"mode: 'turbo' is not a mode of this policy "
                                          r"\(allowed: critical, eco, performance\)"):
        engine.set_override("turbo", 20.0)


def test_builtin_single_mode_policy_never_changes():
    engine = PolicyEngine(Policy.single())
    assert engine.mode == "normal" and engine.current.max_inferences_per_s is None
    assert all(engine.update(temp(t), float(t)) is None for t in range(0, 200, 10))


def test_energy_from_profile_and_from_hwmon():
    figures = PowerFigures.from_profile({"power": {"idle_w": 2.2, "active_w": 5.4}})
    e = estimate_energy(figures, elapsed_s=10.0, busy_s=2.5, count=500)
    assert e.source == "profile"
    assert e.energy_j == pytest.approx(2.2 * 7.5 + 5.4 * 2.5)
    assert e.per_inference_j == pytest.approx((2.2 * 7.5 + 5.4 * 2.5) / 500)
    assert e.power_w == pytest.approx(e.energy_j / 10.0)
    measured = estimate_energy(figures, elapsed_s=10.0, busy_s=2.5, count=500, measured_power_w=4.0)
    assert measured.source == "hwmon" and measured.per_inference_j == pytest.approx(0.08)
    assert estimate_energy(figures, elapsed_s=10.0, busy_s=0.0, count=0).per_inference_j is None
    assert estimate_energy(PowerFigures.from_profile({}), elapsed_s=1.0, busy_s=0.5, count=5) is None
    assert PowerFigures.from_profile({"power": {"active_w": True}}).active_w is None
    assert PowerFigures.from_profile({"power": {"active_w": 0.6}}) == PowerFigures(0.0, 0.6)
