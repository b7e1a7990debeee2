"""Sensors the power policy reads: Linux sysfs, a Raspberry Pi's ``vcgencmd``, or a simulation.

Every reader takes the root of the tree it reads, so tests (and containers with a bind-mounted
``/sys``) point it anywhere. A sensor source returns one :class:`Readings` per call; a value
the device does not have is ``None``, never a guess.

Metrics (the names policy rules refer to): ``temperature_c``, ``battery_pct``, ``charging``
(1/0), ``power_w`` (hwmon ``power1_input``), ``cpu_freq_mhz``, ``throttled``, ``under_voltage``
(Pi, 1/0, "now" bits of ``get_throttled``).

``SimulatedDevice`` is a first-order thermal RC model plus a battery, driven by the busy time
the agent reports; its clock is injectable and can run faster than wall time (``speed``).
"""

from __future__ import annotations

import glob
import math
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..defaults import SENSOR_KINDS
from ..validate import Table, invalid

METRICS = ("temperature_c", "battery_pct", "charging", "power_w", "cpu_freq_mhz", "throttled",
           "under_voltage")
GOVERNORS = ("performance", "powersave", "ondemand", "conservative", "schedutil", "userspace")
THROTTLE_BITS = {0: "under_voltage", 1: "freq_capped", 2: "throttled", 3: "soft_temp_limit"}
_THROTTLE_OCCURRED_SHIFT = 16


@dataclass(frozen=True)
class Readings:
    """One sample of every sensor the device has (``None`` where it has none)."""

    ts: float
    temperature_c: float | None = None
    battery_pct: float | None = None
    charging: bool | None = None
    power_w: float | None = None
    cpu_freq_mhz: float | None = None
    governor: str | None = None
    throttle: dict[str, bool] = field(default_factory=dict)
    zones: dict[str, float] = field(default_factory=dict)

    def metric(self, name: str) -> float | None:
        """A rule's view of the sample: numbers only, booleans as 1.0/0.0."""
        if name == "throttled":
            return _flag(self.throttle.get("throttled"))
        if name == "under_voltage":
            return _flag(self.throttle.get("under_voltage"))
        if name not in METRICS:
            raise KeyError(name)
        value = getattr(self, name)
        return _flag(value) if isinstance(value, bool) else value

    def to_dict(self) -> dict[str, Any]:
        return {"ts": self.ts, "temperature_c": self.temperature_c, "battery_pct": self.battery_pct,
                "charging": self.charging, "power_w": self.power_w,
                "cpu_freq_mhz": self.cpu_freq_mhz, "governor": self.governor,
                "throttle": dict(self.throttle), "zones": dict(self.zones)}


def _flag(value: bool | None) -> float | None:
    return None if value is None else float(bool(value))


class SensorSource(Protocol):
    def read(self) -> Readings: ...

    def set_governor(self, governor: str) -> bool: ...

    def add_busy(self, seconds: float) -> None: ...


# --- sysfs readers ----------------------------------------------------------------------------

def _read_text(path: str | Path) -> str | None:
    try:
        return Path(path).read_text(encoding="ascii", errors="replace").strip()
    except OSError:  # absent, or a driver that refuses the read (EIO/ENODATA happen on real boards)
        return None


def _read_int(path: str | Path) -> int | None:
    text = _read_text(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _sorted_glob(pattern: str) -> list[str]:
    return sorted(glob.glob(pattern), key=lambda p: [int(t) if t.isdigit() else t
                                                     for t in re.split(r"(\d+)", p)])


@dataclass(frozen=True)
class ThermalZones:
    """``<root>/thermal_zone*/temp`` in milli-°C; the hottest zone (or one named ``zone_type``)."""

    root: Path = Path("/sys/class/thermal")
    zone_type: str | None = None

    def read_all(self) -> dict[str, float]:
        zones: dict[str, float] = {}
        for zone in _sorted_glob(str(self.root / "thermal_zone*")):
            milli = _read_int(Path(zone) / "temp")
            if milli is None:
                continue
            name = _read_text(Path(zone) / "type") or Path(zone).name
            key = name if name not in zones else f"{name}:{Path(zone).name}"
            zones[key] = milli / 1000.0
        return zones

    def temperature_c(self, zones: dict[str, float] | None = None) -> float | None:
        zones = self.read_all() if zones is None else zones
        if self.zone_type is not None:
            zones = {k: v for k, v in zones.items() if k.split(":")[0] == self.zone_type}
        return max(zones.values()) if zones else None


@dataclass(frozen=True)
class PowerSupplies:
    """``<root>/*/{type,capacity,status,online}``: battery percent and whether it charges."""

    root: Path = Path("/sys/class/power_supply")

    def read(self) -> tuple[float | None, bool | None]:
        capacity: float | None = None
        status: str | None = None
        mains_online = False
        for supply in _sorted_glob(str(self.root / "*")):
            kind = _read_text(Path(supply) / "type")
            if kind == "Battery" and capacity is None:
                cap = _read_int(Path(supply) / "capacity")
                if cap is not None:
                    capacity = float(max(0, min(100, cap)))
                    status = _read_text(Path(supply) / "status")
            elif kind in ("Mains", "USB", "USB_PD", "USB_C") and _read_int(Path(supply) / "online") == 1:
                mains_online = True
        if capacity is None:
            return None, (True if mains_online else None)
        charging = status in ("Charging", "Full") or (status == "Not charging" and mains_online)
        return capacity, charging


@dataclass(frozen=True)
class CpuFreq:
    """``<root>/cpu*/cpufreq/{scaling_governor,scaling_cur_freq}``; the governor is writable as root."""

    root: Path = Path("/sys/devices/system/cpu")

    def _policies(self) -> list[Path]:
        return [Path(p) for p in _sorted_glob(str(self.root / "cpu[0-9]*" / "cpufreq"))]

    def governor(self) -> str | None:
        for p in self._policies():
            gov = _read_text(p / "scaling_governor")
            if gov:
                return gov
        return None

    def cur_freq_mhz(self) -> float | None:
        freqs = [f for p in self._policies() if (f := _read_int(p / "scaling_cur_freq")) is not None]
        return max(freqs) / 1000.0 if freqs else None  # sysfs reports kHz

    def available_governors(self) -> tuple[str, ...]:
        for p in self._policies():
            text = _read_text(p / "scaling_available_governors")
            if text:
                return tuple(text.split())
        return ()

    def writable(self) -> bool:
        paths = [p / "scaling_governor" for p in self._policies()]
        return bool(paths) and all(os.access(p, os.W_OK) for p in paths)

    def set_governor(self, governor: str) -> bool:
        """Write ``governor`` to every CPU; False (nothing changed) when not allowed or unknown."""
        available = self.available_governors()
        if (available and governor not in available) or not self.writable():
            return False
        try:
            for p in self._policies():
                (p / "scaling_governor").write_text(governor + "\n", encoding="ascii")
        except OSError:
            return False
        return True


@dataclass(frozen=True)
class Hwmon:
    """``<root>/hwmon*/power1_input`` in µW: the board's own power meter, when it has one."""

    root: Path = Path("/sys/class/hwmon")

    def power_w(self) -> float | None:
        total, found = 0.0, False
        for path in _sorted_glob(str(self.root / "hwmon*" / "power1_input")):
            micro = _read_int(path)
            if micro is not None:
                total, found = total + micro / 1e6, True
        return total if found else None


# --- Raspberry Pi ------------------------------------------------------------------------------

def decode_throttled(value: int) -> dict[str, bool]:
    """``vcgencmd get_throttled`` bits 0-3 ("now") and 16-19 ("has occurred since boot")."""
    flags = {name: bool(value >> bit & 1) for bit, name in THROTTLE_BITS.items()}
    flags.update({f"{name}_occurred": bool(value >> (bit + _THROTTLE_OCCURRED_SHIFT) & 1)
                  for bit, name in THROTTLE_BITS.items()})
    return flags


_THROTTLED_RE = re.compile(r"^throttled=(0x[0-9a-fA-F]+|\d+)$")
_TEMP_RE = re.compile(r"^temp=(-?\d+(?:\.\d+)?)'C$")


@dataclass(frozen=True)
class Vcgencmd:
    """The Pi firmware's ``vcgencmd``; output that does not parse is treated as absent."""

    command: str = "vcgencmd"
    timeout_s: float = 2.0

    def _run(self, *args: str) -> str | None:
        try:
            out = subprocess.run([self.command, *args], capture_output=True, text=True,
                                 timeout=self.timeout_s, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    def throttled(self) -> dict[str, bool] | None:
        m = _THROTTLED_RE.match(self._run("get_throttled") or "")
        return decode_throttled(int(m.group(1), 0)) if m else None

    def temperature_c(self) -> float | None:
        m = _TEMP_RE.match(self._run("measure_temp") or "")
        return float(m.group(1)) if m else None


# --- composite sources -------------------------------------------------------------------------

@dataclass
class SysfsSensors:
    """Everything a Linux board exposes under ``root`` (``/`` on a device, a tmp tree in tests)."""

    root: Path = Path("/")
    zone_type: str | None = None
    vcgencmd: Vcgencmd | None = None
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        sys_root = Path(self.root) / "sys"
        self.thermal = ThermalZones(sys_root / "class" / "thermal", self.zone_type)
        self.supplies = PowerSupplies(sys_root / "class" / "power_supply")
        self.cpufreq = CpuFreq(sys_root / "devices" / "system" / "cpu")
        self.hwmon = Hwmon(sys_root / "class" / "hwmon")

    def read(self) -> Readings:
        zones = self.thermal.read_all()
        temperature = self.thermal.temperature_c(zones)
        throttle: dict[str, bool] = {}
        if self.vcgencmd is not None:
            throttle = self.vcgencmd.throttled() or {}
            if temperature is None:
                temperature = self.vcgencmd.temperature_c()
        battery, charging = self.supplies.read()
        return Readings(ts=self.clock(), temperature_c=temperature, battery_pct=battery,
                        charging=charging, power_w=self.hwmon.power_w(),
                        cpu_freq_mhz=self.cpufreq.cur_freq_mhz(), governor=self.cpufreq.governor(),
                        throttle=throttle, zones=zones)

    def set_governor(self, governor: str) -> bool:
        return self.cpufreq.set_governor(governor)

    def add_busy(self, seconds: float) -> None:
        """Real hardware heats up by itself."""


# --- simulation ----------------------------------------------------------------------------------

@dataclass
class SimulatedDevice:
    """A board in a box: first-order thermal RC model and a battery, both driven by inference load.

    Power is ``idle_w + (active_w - idle_w) * utilisation``, where utilisation is the busy time
    reported through :meth:`add_busy` divided by the wall time since the last step. Temperature
    relaxes towards ``ambient_c + power * r_th_c_per_w`` with time constant ``tau_s`` (solved
    exactly per step, so step size does not matter). The battery drains by the energy used.
    Simulated time runs ``speed`` times faster than ``clock``.
    """

    idle_w: float = 2.2
    active_w: float = 5.4
    ambient_c: float = 25.0
    r_th_c_per_w: float = 10.0
    tau_s: float = 60.0
    start_c: float | None = None
    battery_wh: float | None = 10.0
    battery_start_pct: float = 100.0
    speed: float = 1.0
    report_power: bool = False
    throttle_c: float = 85.0  # a real SoC throttles here (Pi 4 firmware: 85 degC): it reads no higher
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.temperature_c = self.ambient_c if self.start_c is None else self.start_c
        self.energy_j = 0.0
        self.governor: str | None = "ondemand"
        self._busy_pending = 0.0
        self._last = self.clock()
        self._last_power = self.idle_w

    def add_busy(self, seconds: float) -> None:
        with self._lock:
            self._busy_pending += max(0.0, seconds)

    def step(self) -> None:
        with self._lock:
            now = self.clock()
            wall_dt = now - self._last
            if wall_dt <= 0:
                return
            utilisation = min(1.0, self._busy_pending / wall_dt)
            self._busy_pending, self._last = 0.0, now
            power = self.idle_w + (self.active_w - self.idle_w) * utilisation
            dt = wall_dt * self.speed
            steady = self.ambient_c + power * self.r_th_c_per_w
            relaxed = steady + (self.temperature_c - steady) * math.exp(-dt / self.tau_s)
            self.temperature_c = min(relaxed, self.throttle_c)
            self.energy_j += power * dt
            self._last_power = power

    @property
    def battery_pct(self) -> float | None:
        if self.battery_wh is None:
            return None
        left = self.battery_wh * self.battery_start_pct / 100.0 - self.energy_j / 3600.0
        return max(0.0, 100.0 * left / self.battery_wh)

    def read(self) -> Readings:
        self.step()
        return Readings(ts=self._last, temperature_c=round(self.temperature_c, 3),
                        battery_pct=None if self.battery_pct is None else round(self.battery_pct, 3),
                        charging=None if self.battery_wh is None else False,
                        power_w=round(self._last_power, 4) if self.report_power else None,
                        governor=self.governor, zones={"sim": round(self.temperature_c, 3)})

    def set_governor(self, governor: str) -> bool:
        self.governor = governor
        return True


_SIM_KEYS = ("idle_w", "active_w", "ambient_c", "r_th_c_per_w", "tau_s", "start_c", "battery_wh",
             "battery_start_pct", "speed", "report_power", "throttle_c")
_POSITIVE = ("idle_w", "active_w", "tau_s", "r_th_c_per_w", "speed", "battery_wh")
_SYSFS_KEYS = ("root", "zone_type", "vcgencmd")


def make_sensors(kind: str, options: dict[str, Any], *, power: dict[str, float] | None = None,
                 source: str = "", base: Path | None = None) -> SensorSource:
    """The sensor source for ``[sensors] kind`` and its options (validated here).

    ``power`` is the bundle's ``target_profile.power``: the simulation's default idle/active watts.
    """
    t = Table(options, source, "sensors")
    if kind == "simulated":
        return SimulatedDevice(**_simulated(t, power or {}))
    if kind in ("sysfs", "pi"):
        t.only(_SYSFS_KEYS)
        root = Path(t.string("root", "/"))
        if not root.is_absolute() and base is not None:
            root = base / root
        vcgencmd = None
        if kind == "pi":
            cmd = t.string("vcgencmd", None) or shutil.which("vcgencmd") or "vcgencmd"
            vcgencmd = Vcgencmd(cmd)
        return SysfsSensors(root=root, zone_type=t.string("zone_type", None), vcgencmd=vcgencmd)
    raise invalid(source, "sensors.kind", kind, "a sensor kind", SENSOR_KINDS)


def _simulated(t: Table, power: dict[str, float]) -> dict[str, Any]:
    t.only(_SIM_KEYS)
    opts: dict[str, Any] = {k: float(v) for k, v in power.items() if k in ("idle_w", "active_w")}
    for key in _SIM_KEYS:
        if key == "report_power":
            value = t.boolean(key, None)
        else:
            value = t.number(key, None)
        if value is not None and key in _POSITIVE and not value > 0:
            raise t.fail(key, value, "a number > 0")
        if value is not None:
            opts[key] = value
    return opts
