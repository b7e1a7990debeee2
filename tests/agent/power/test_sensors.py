"""Sensor readers against fake sysfs trees and a fake vcgencmd; the simulated device's physics."""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path

import pytest

from edgekit_agent.errors import ConfigError
from edgekit_agent.power.sensors import (
    CpuFreq,
    Hwmon,
    PowerSupplies,
    SimulatedDevice,
    SysfsSensors,
    ThermalZones,
    Vcgencmd,
    decode_throttled,
    make_sensors,
)


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def pi_tree(tmp_path: Path) -> Path:
    """What a Raspberry Pi 4 on a UPS HAT exposes (values as the kernel prints them)."""
    sys_ = "sys"
    write(tmp_path, f"{sys_}/class/thermal/thermal_zone0/type", "cpu-thermal\n")
    write(tmp_path, f"{sys_}/class/thermal/thermal_zone0/temp", "61842\n")
    write(tmp_path, f"{sys_}/class/thermal/thermal_zone1/type", "gpu-thermal\n")
    write(tmp_path, f"{sys_}/class/thermal/thermal_zone1/temp", "58300\n")
    write(tmp_path, f"{sys_}/class/thermal/thermal_zone2/type", "broken\n")
    write(tmp_path, f"{sys_}/class/thermal/thermal_zone2/temp", "not-a-number\n")
    write(tmp_path, f"{sys_}/class/power_supply/BAT0/type", "Battery\n")
    write(tmp_path, f"{sys_}/class/power_supply/BAT0/capacity", "37\n")
    write(tmp_path, f"{sys_}/class/power_supply/BAT0/status", "Discharging\n")
    write(tmp_path, f"{sys_}/class/power_supply/AC/type", "Mains\n")
    write(tmp_path, f"{sys_}/class/power_supply/AC/online", "0\n")
    for cpu, khz in ((0, 1500000), (1, 1500000), (2, 600000), (3, 1800000)):
        base = f"{sys_}/devices/system/cpu/cpu{cpu}/cpufreq"
        write(tmp_path, f"{base}/scaling_governor", "ondemand\n")
        write(tmp_path, f"{base}/scaling_cur_freq", f"{khz}\n")
        write(tmp_path, f"{base}/scaling_available_governors",
              "conservative ondemand userspace powersave performance schedutil\n")
    write(tmp_path, f"{sys_}/devices/system/cpu/cpufreq/policy0/scaling_governor", "decoy\n")
    write(tmp_path, f"{sys_}/class/hwmon/hwmon0/name", "ina219\n")
    write(tmp_path, f"{sys_}/class/hwmon/hwmon0/power1_input", "4250000\n")  # µW
    write(tmp_path, f"{sys_}/class/hwmon/hwmon1/name", "cpu_thermal\n")  # no power sensor
    return tmp_path


def test_sysfs_reads_every_sensor_of_a_pi_tree(pi_tree: Path):
    r = SysfsSensors(root=pi_tree).read()
    assert r.temperature_c == pytest.approx(61.842)  # the hottest valid zone
    assert r.zones == {"cpu-thermal": pytest.approx(61.842), "gpu-thermal": pytest.approx(58.3)}
    assert r.battery_pct == 37.0 and r.charging is False
    assert r.cpu_freq_mhz == pytest.approx(1800.0)  # kHz in sysfs, the fastest core
    assert r.governor == "ondemand"
    assert r.power_w == pytest.approx(4.25)
    assert r.throttle == {}
    assert r.metric("temperature_c") == pytest.approx(61.842) and r.metric("charging") == 0.0


def test_zone_type_selects_one_zone(pi_tree: Path):
    zones = ThermalZones(pi_tree / "sys/class/thermal", zone_type="gpu-thermal")
    assert zones.temperature_c() == pytest.approx(58.3)
    assert ThermalZones(pi_tree / "sys/class/thermal", zone_type="nvme").temperature_c() is None


def test_missing_tree_reads_as_absent(tmp_path: Path):
    r = SysfsSensors(root=tmp_path / "nothing").read()
    assert (r.temperature_c, r.battery_pct, r.charging, r.power_w, r.cpu_freq_mhz, r.governor) == (
        None, None, None, None, None, None)
    assert r.metric("temperature_c") is None and r.metric("throttled") is None


def test_charging_from_status_and_from_mains(tmp_path: Path):
    write(tmp_path, "BAT1/type", "Battery\n")
    write(tmp_path, "BAT1/capacity", "104\n")  # some fuel gauges overshoot: clamp
    write(tmp_path, "BAT1/status", "Charging\n")
    assert PowerSupplies(tmp_path).read() == (100.0, True)
    write(tmp_path, "BAT1/status", "Not charging\n")
    write(tmp_path, "usb/type", "USB\n")
    write(tmp_path, "usb/online", "1\n")
    assert PowerSupplies(tmp_path).read() == (100.0, True)  # full and plugged in
    write(tmp_path, "usb/online", "0\n")
    assert PowerSupplies(tmp_path).read() == (100.0, False)
    mains_only = tmp_path / "mains-only"
    write(mains_only, "AC/type", "Mains\n")
    write(mains_only, "AC/online", "1\n")
    assert PowerSupplies(mains_only).read() == (None, True)


def test_governor_write_goes_to_every_cpu(pi_tree: Path):
    cpufreq = CpuFreq(pi_tree / "sys/devices/system/cpu")
    assert cpufreq.writable()
    assert cpufreq.set_governor("powersave") is True
    files = sorted((pi_tree / "sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/scaling_governor"))
    assert len(files) == 4 and {f.read_text() for f in files} == {"powersave\n"}
    assert cpufreq.governor() == "powersave"
    assert cpufreq.set_governor("turbo") is False  # not in scaling_available_governors
    assert {f.read_text() for f in files} == {"powersave\n"}


def test_governor_not_writable_is_refused_without_change(pi_tree: Path, monkeypatch):
    cpufreq = CpuFreq(pi_tree / "sys/devices/system/cpu")
    # Root can write anything, so model a read-only sysfs the way the reader sees it: os.access.
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p).endswith("scaling_governor")
                        else real_access(p, mode))
    assert cpufreq.writable() is False
    assert cpufreq.set_governor("performance") is False
    assert cpufreq.governor() == "ondemand"


def test_hwmon_sums_power_meters(tmp_path: Path):
    write(tmp_path, "hwmon0/power1_input", "1500000\n")
    write(tmp_path, "hwmon3/power1_input", "250000\n")
    assert Hwmon(tmp_path).power_w() == pytest.approx(1.75)
    assert Hwmon(tmp_path / "none").power_w() is None


@pytest.mark.parametrize("value, now, occurred", [
    (0x0, set(), set()),
    (0x50005, {"under_voltage", "throttled"}, {"under_voltage", "throttled"}),
    (0x80008, {"soft_temp_limit"}, {"soft_temp_limit"}),
    (0x20000, set(), {"freq_capped"}),
    (0xF000F, {"under_voltage", "freq_capped", "throttled", "soft_temp_limit"},
     {"under_voltage", "freq_capped", "throttled", "soft_temp_limit"}),
])
def test_decode_throttled_bits(value, now, occurred):
    flags = decode_throttled(value)
    assert {k for k, v in flags.items() if v and not k.endswith("_occurred")} == now
    assert {k.removesuffix("_occurred") for k, v in flags.items() if v and k.endswith("_occurred")} == occurred
    assert len(flags) == 8


def fake_vcgencmd(tmp_path: Path, throttled: str, temp: str, rc: int = 0) -> Path:
    script = tmp_path / "vcgencmd"
    script.write_text("#!/bin/sh\n"
                      f'case "$1" in\n get_throttled) echo "{throttled}";;\n'
                      f' measure_temp) echo "{temp}";;\n *) echo "bad command" >&2; exit 2;;\nesac\n'
                      f"exit {rc}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def test_vcgencmd_is_run_and_parsed(tmp_path: Path):
    vc = Vcgencmd(str(fake_vcgencmd(tmp_path, "throttled=0x50005", "temp=71.4'C")))
    assert vc.temperature_c() == pytest.approx(71.4)
    flags = vc.throttled()
    assert flags["under_voltage"] and flags["throttled"] and not flags["freq_capped"]
    # No thermal zones in the tree: the firmware's temperature is used, and throttling is a metric.
    r = SysfsSensors(root=tmp_path / "empty", vcgencmd=vc).read()
    assert r.temperature_c == pytest.approx(71.4)
    assert r.metric("throttled") == 1.0 and r.metric("under_voltage") == 1.0


@pytest.mark.parametrize("throttled, temp, rc", [
    ("garbage", "temp=abc'C", 0), ("throttled=0x5", "temp=50.0'C", 1)])
def test_vcgencmd_bad_output_or_failure_reads_absent(tmp_path: Path, throttled, temp, rc):
    vc = Vcgencmd(str(fake_vcgencmd(tmp_path, throttled, temp, rc)))
    assert vc.throttled() is None and vc.temperature_c() is None
    assert Vcgencmd(str(tmp_path / "no-such-binary")).throttled() is None


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_simulated_thermal_rc_matches_the_exact_solution():
    clock = FakeClock()
    sim = SimulatedDevice(idle_w=2.0, active_w=6.0, ambient_c=25.0, r_th_c_per_w=10.0, tau_s=60.0,
                          battery_wh=None, clock=clock)
    # Idle for 60 s: T -> 25 + 2*10 = 45 with one time constant elapsed.
    clock.t += 60
    assert sim.read().temperature_c == pytest.approx(45 - 20 * math.exp(-1), abs=1e-3)
    idle = sim.temperature_c  # unrounded
    # Fully busy for 120 s in many small steps: same as one exact step (steady state 85 °C).
    for _ in range(120):
        sim.add_busy(1.0)
        clock.t += 1.0
        sim.step()
    expected = 85 + (idle - 85) * math.exp(-2)
    assert sim.temperature_c == pytest.approx(expected, abs=1e-6)
    # Idle again: it cools toward 45, never below.
    clock.t += 600
    assert 45.0 < sim.read().temperature_c < 45.1


def test_simulated_temperature_stops_where_a_soc_throttles():
    clock = FakeClock()
    sim = SimulatedDevice(idle_w=2.0, active_w=20.0, r_th_c_per_w=10.0, battery_wh=None,
                          clock=clock, start_c=40.0)
    for _ in range(600):  # steady state would be 225 degC
        sim.add_busy(1.0)
        clock.t += 1.0
        sim.step()
    assert sim.temperature_c == 85.0
    hot = make_sensors("simulated", {"throttle_c": 70.0, "active_w": 20.0, "start_c": 69.0})
    hot.add_busy(1e6)
    assert hot.read().temperature_c <= 70.0


def test_simulated_battery_drains_with_energy_and_speed():
    clock = FakeClock()
    sim = SimulatedDevice(idle_w=1.0, active_w=5.0, battery_wh=10.0, battery_start_pct=50.0,
                          speed=60.0, clock=clock)
    sim.add_busy(30.0)  # half of one wall minute busy -> 3 W average
    clock.t += 60.0     # = one simulated hour
    r = sim.read()
    assert sim.energy_j == pytest.approx(3.0 * 3600, rel=1e-9)
    assert r.battery_pct == pytest.approx(50.0 - 30.0)  # 3 Wh of a 10 Wh battery
    assert r.charging is False and r.power_w is None
    clock.t += 600.0
    assert sim.read().battery_pct == 0.0  # empty, not negative


def test_simulated_heats_more_under_more_load():
    temps = []
    for busy_fraction in (0.0, 0.25, 1.0):
        clock = FakeClock()
        sim = SimulatedDevice(clock=clock, tau_s=10.0)
        for _ in range(100):
            sim.add_busy(busy_fraction)
            clock.t += 1.0
            sim.step()
        temps.append(sim.temperature_c)
    assert temps[0] < temps[1] < temps[2]
    assert temps[2] == pytest.approx(25 + 5.4 * 10, abs=0.01)  # steady state at active_w


def test_make_sensors_validates_options(tmp_path: Path):
    sim = make_sensors("simulated", {"speed": 5, "ambient_c": 30}, power={"idle_w": 1.0, "active_w": 3.0})
    assert isinstance(sim, SimulatedDevice) and (sim.idle_w, sim.active_w, sim.speed) == (1.0, 3.0, 5.0)
    with pytest.raises(ConfigError, match=r"agent.toml: sensors.sped: 5 is not a known key \(allowed: "):
        make_sensors("simulated", {"sped": 5}, source="agent.toml")
    with pytest.raises(ConfigError, match=r"sensors.tau_s: 0.0 is not a number > 0"):
        make_sensors("simulated", {"tau_s": 0})
    with pytest.raises(ConfigError, match=r"sensors.report_power: 'yes' is not true or false"):
        make_sensors("simulated", {"report_power": "yes"})
    sysfs = make_sensors("sysfs", {"root": "tree"}, base=tmp_path)
    assert isinstance(sysfs, SysfsSensors) and sysfs.root == tmp_path / "tree"
    pi = make_sensors("pi", {"vcgencmd": "/opt/vc/bin/vcgencmd"})
    assert pi.vcgencmd == Vcgencmd("/opt/vc/bin/vcgencmd")
    with pytest.raises(ConfigError, match="allowed: pi, simulated, sysfs"):
        make_sensors("lidar", {})
