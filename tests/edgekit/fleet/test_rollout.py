"""The rollout's pure logic: wave plans, the abort decision, device selection, options."""

from __future__ import annotations

import pytest

from edgekit.fleet.deploy.rollout import (
    FAILED,
    OFFERED,
    ROLLED_BACK,
    SUCCEEDED,
    RolloutOptions,
    decide,
    parse_selectors,
    parse_waves,
    plan_waves,
    select,
)
from edgekit_agent.errors import ConfigError


def test_waves_are_cumulative_percentages():
    names = [f"d{i:03d}" for i in range(100)]
    plan = plan_waves(reversed(names), (5, 15, 80, 100))
    assert [len(w) for w in plan] == [5, 10, 65, 20] and plan[0] == names[:5]
    assert plan_waves(["e", "a", "c", "b", "d"], (5, 15, 100)) == [["a"], ["b", "c", "d", "e"]]
    assert plan_waves(["a", "b", "c", "d", "e"], (40, 100)) == [["a", "b"], ["c", "d", "e"]]
    assert plan_waves(["only"], (5, 15, 100)) == [["only"]]
    assert plan_waves([], (100,)) == []
    assert parse_waves("5,15,100") == (5.0, 15.0, 100.0)
    for bad, fragment in (("15,5,100", "increasing"), ("5,5,100", "increasing"), ("0,100", "increasing"),
                          ("5,150", "increasing"), ("5,50", "must end at 100"), ("a,b", "comma")):
        with pytest.raises(ConfigError, match=fragment):
            parse_waves(bad)


def test_abort_counts_finished_devices_once_enough_have_finished():
    assert not decide([FAILED, OFFERED, OFFERED], 0.2, min_devices=2).halt  # 1 finished < 2
    d = decide([FAILED, SUCCEEDED, OFFERED], 0.2, min_devices=2)
    assert d.halt and (d.finished, d.failed, d.rate) == (2, 1, 0.5)
    assert d.reason == "failure rate 0.50 (1 of 2 finished) > 0.2"
    assert not decide([FAILED] + [SUCCEEDED] * 4, 0.2, 1).halt  # exactly 0.2 is not past it
    assert not decide([ROLLED_BACK, SUCCEEDED], 0.0, 1).halt  # rolled back by us, not a failure
    assert decide([FAILED], 0.0, 1).halt


def test_select_by_status_and_bundle_fields():
    statuses = {
        "a": {"device": "a", "state": "online", "mode": "eco",
              "bundle": {"name": "digits", "version": "1", "target": "rpi4"}},
        "b": {"device": "b", "state": "offline", "mode": "performance",
              "bundle": {"name": "digits", "version": "2", "target": "x86-64"}},
    }
    assert select(statuses, ()) == ["a", "b"]
    assert select(statuses, parse_selectors(["target=rpi4"])) == ["a"]
    assert select(statuses, parse_selectors(["version=2", "state=offline"])) == ["b"]
    assert select(statuses, parse_selectors(["bundle.name=digits", "mode=eco"])) == ["a"]
    assert select(statuses, parse_selectors(["family=cpu"])) == []
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_selectors(["=x"])


def test_options_round_trip_and_checks():
    opts = RolloutOptions(waves=(10.0, 100.0), selectors=(("target", "rpi4"),), health_s=3.0)
    assert RolloutOptions.from_dict(opts.to_dict()) == opts
    assert opts.health() == {"window_s": 3.0, "max_error_rate": 0.0, "max_latency_ratio": 2.0,
                             "latency_slack_ms": 5.0}
    for field, value in (("max_failure_rate", 1.5), ("min_devices", 0), ("timeout_s", 0.0),
                         ("window", 65), ("max_latency_ratio", 0.5)):
        with pytest.raises(ConfigError):
            RolloutOptions(**{field: value})
