"""The daemon in-process (MQTT off): modes enforced on the real Agent, HTTP, cpufreq, duty cycle."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from edgekit_agent.bundle.signing import load_private_key
from edgekit_agent.config import AgentConfig
from edgekit_agent.errors import ConfigError
from edgekit_agent.power import rate as rate_module
from edgekit_agent.power.policy import Mode
from edgekit_agent.power.rate import ModeGate, TokenBucket
from edgekit_agent.service.daemon import Daemon
from edgekit_agent.store.slots import BundleStore
from edgekit_agent.telemetry.schema import sign_command

POLICY = """
default_mode = "normal"
[modes.normal]
governor = "performance"
[modes.limited]
threads = 2
max_inferences_per_s = 30.0
governor = "powersave"
offload_allowed = true
[modes.duty]
duty_cycle = 0.4
duty_period_s = 0.25
"""


class _Clock:
    """time.monotonic for the rate module, moved by the test: the bucket's arithmetic, not the
    scheduler (a process descheduled on 2 shared cores polls less, whatever the bucket does)."""

    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now


def test_token_bucket_holds_its_rate_on_a_controlled_clock(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(rate_module, "time", clock)
    bucket = TokenBucket(50.0)
    taken = 0
    for _ in range(1000):  # one simulated second, polled every millisecond
        clock.now += 0.001
        taken += bucket.try_take()
    assert taken in (50, 51)  # 50/s plus the one saved-up token (float rounding on the last)
    clock.now += 10.0  # idle for 10 s: a bucket of one saves one token, not 500
    assert [bucket.try_take() for _ in range(3)] == [True, False, False]
    assert bucket.wait_s() == pytest.approx(1 / 50)


def test_token_bucket_rate_and_duty_gate():
    bucket = TokenBucket(50.0)
    t0, taken = time.monotonic(), 0
    while time.monotonic() - t0 < 1.0:
        taken += bucket.try_take()
    # On the real clock only the ceiling is the bucket's (a descheduled poller takes fewer): never
    # more than 50/s plus the one saved-up token. The floor is checked on a controlled clock above.
    assert 1 <= taken <= 51
    gate = ModeGate()
    gate.apply(Mode(name="d", duty_cycle=0.25, duty_period_s=1.0))
    assert gate.duty_wait_s(now=100.1) == 0.0 and gate.duty_wait_s(now=100.5) == pytest.approx(0.5)
    gate.apply(Mode(name="r", max_inferences_per_s=1.0))
    assert gate.try_enter() is None  # the saved-up token
    assert gate.try_enter() == "rate limit of 1 inferences/s reached"


@pytest.fixture
def cpu_tree(tmp_path: Path) -> Path:
    for cpu in (0, 1):
        d = tmp_path / f"sys/devices/system/cpu/cpu{cpu}/cpufreq"
        d.mkdir(parents=True)
        (d / "scaling_governor").write_text("ondemand\n")
        (d / "scaling_cur_freq").write_text("1200000\n")
    zone = tmp_path / "sys/class/thermal/thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text("45000\n")
    return tmp_path


def governors(tree: Path) -> set[str]:
    return {p.read_text().strip() for p in tree.glob("sys/devices/system/cpu/cpu*/cpufreq/scaling_governor")}


@pytest.fixture
def daemon(tmp_path, cpu_tree, keypair, power_bundle):
    BundleStore(tmp_path / "store").install(power_bundle, keypair[1])
    (tmp_path / "policy.toml").write_text(POLICY)
    config = AgentConfig.from_dict({
        "device_id": "dev1", "store": {"root": "store", "public_key": str(keypair[1])},
        "mqtt": {"enabled": False}, "http": {"port": 0}, "policy": {"file": "policy.toml"},
        "sensors": {"kind": "sysfs", "root": str(cpu_tree)}, "load": {"rate": 200.0}},
        source=str(tmp_path / "agent.toml"), base=tmp_path)
    d = Daemon(config)
    d.start()
    yield d
    d.close()


def post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def count_over(daemon: Daemon, seconds: float) -> float:
    c0, t0 = daemon.agent.stats()["count"], time.monotonic()
    time.sleep(seconds)
    return (daemon.agent.stats()["count"] - c0) / (time.monotonic() - t0)


def set_mode(daemon: Daemon, keypair, mode: str) -> None:
    daemon.handle_command(sign_command(load_private_key(keypair[0]), "dev1", "set_mode", {"mode": mode}))


def test_modes_are_enforced_on_the_running_agent(daemon, keypair, cpu_tree, caplog, digits):
    caplog.set_level(logging.INFO, logger="edgekit_agent")
    assert governors(cpu_tree) == {"performance"}  # the initial mode, written to cpufreq
    image = np.load(digits.calib)["image"][:1].tolist()
    status, body = post(f"{daemon.http.url}/v1/infer", {"inputs": {"image": image}})
    assert status == 200 and len(body["outputs"]["logits"][0]) == 10
    free_rate = count_over(daemon, 1.0)
    assert free_rate >= 60.0, free_rate  # the 200/s synthetic load, unthrottled (2x the limit below)

    set_mode(daemon, keypair, "limited")
    assert daemon.engine.mode == "limited" and daemon.agent.threads == 2
    assert governors(cpu_tree) == {"powersave"}
    assert "mode normal -> limited: manual mode" in caplog.text
    limited_rate = count_over(daemon, 2.0)
    assert 20.0 <= limited_rate <= 31.5, limited_rate
    # HTTP clients share the mode's budget with the load: most requests are turned away now.
    answers = [post(f"{daemon.http.url}/v1/infer", {"inputs": {"image": image}}) for _ in range(20)]
    refused = [b for s, b in answers if s == 503]
    assert len(refused) >= 10 and "rate limit of 30 inferences/s reached" in refused[0]["error"]

    set_mode(daemon, keypair, "duty")
    assert governors(cpu_tree) == {"powersave"}  # the duty mode leaves the governor alone
    assert daemon.agent.threads is None
    samples = []
    t_end = time.monotonic() + 2.0
    while time.monotonic() < t_end:
        samples.append((time.monotonic(), daemon.agent.stats()["count"]))
        time.sleep(0.002)
    on, off = 0, 0
    for (t0, c0), (t1, c1) in zip(samples, samples[1:]):
        phases = (t0 % 0.25, t1 % 0.25)
        if c1 > c0 and phases[0] <= phases[1]:  # the interval does not wrap a period boundary
            if phases[0] >= 0.13 and phases[1] <= 0.245:
                off += c1 - c0  # finished in the pause (allowing 30 ms for one to complete)
            elif phases[1] <= 0.1:
                on += c1 - c0
    assert off == 0 and on >= 40, (on, off)
    duty_rate = (samples[-1][1] - samples[0][1]) / (samples[-1][0] - samples[0][0])
    assert 30.0 <= duty_rate <= 90.0, duty_rate  # 200/s during 40 % of the time = 80/s at most

    print(f"\nfree {free_rate:.1f}/s, limited(30) {limited_rate:.1f}/s, duty(0.4 of 200/s) "
          f"{duty_rate:.1f}/s with {on} completions in the on-window and {off} in the pause")
    daemon.handle_command(b"{broken")
    set_mode(daemon, keypair, "warp")
    assert "cmd_error" in caplog.text and "mode: 'warp' is not a mode of this policy" in caplog.text
    assert daemon.engine.mode == "duty"


def test_bad_sensor_options_and_policy_are_config_errors(tmp_path, keypair, power_bundle):
    BundleStore(tmp_path / "store").install(power_bundle, keypair[1])
    base = {"device_id": "dev1", "store": {"root": str(tmp_path / "store")}, "mqtt": {"enabled": False},
            "http": {"enabled": False}}
    bad_sensor = AgentConfig.from_dict({**base, "sensors": {"kind": "simulated", "tau": 5}},
                                       source="agent.toml")
    with pytest.raises(ConfigError, match=r"agent.toml: sensors.tau: 5 is not a known key"):
        Daemon(bad_sensor)
    missing_policy = AgentConfig.from_dict({**base, "policy": {"file": "nope.toml"}}, base=tmp_path)
    with pytest.raises(ConfigError, match="nope.toml: cannot read policy"):
        Daemon(missing_policy)


def test_run_with_a_bad_config_is_a_one_line_error(tmp_path, keypair, power_bundle, cli_error):
    BundleStore(tmp_path / "store").install(power_bundle, keypair[1])
    (tmp_path / "policy.toml").write_text('[modes.a]\nduty_cycle = 2.0\n')
    config = tmp_path / "agent.toml"
    config.write_text('device_id = "d"\n[store]\nroot = "store"\n[mqtt]\nenabled = false\n'
                      '[http]\nenabled = false\n[policy]\nfile = "policy.toml"\n')
    proc = subprocess.run([sys.executable, "-m", "edgekit_agent.cli", "run", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    cli_error(proc, str(tmp_path / "policy.toml"), "modes.a.duty_cycle: 2.0 is not a number in 0.01..1")
