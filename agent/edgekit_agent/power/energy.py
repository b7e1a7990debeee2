"""The energy model: watts from the target profile (or a power meter) times measured busy time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PowerFigures:
    """Watts at idle, while running inference and drawn by an accelerator: a target profile's
    ``[power]`` table (the host's ``Profile.power``) and the bundle's ``target_profile.power``."""

    idle_w: float = 0.0
    active_w: float | None = None
    accelerator_w: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"idle_w": self.idle_w, "active_w": self.active_w,
                "accelerator_w": self.accelerator_w}

    @classmethod
    def from_profile(cls, target_profile: dict[str, Any]) -> PowerFigures:
        power = target_profile.get("power") or {}
        if not isinstance(power, dict):
            return cls()
        idle, active, accel = (power.get(k) for k in ("idle_w", "active_w", "accelerator_w"))
        ok = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0  # noqa: E731
        return cls(idle_w=float(idle) if ok(idle) else 0.0,
                   active_w=float(active) if ok(active) else None,
                   accelerator_w=float(accel) if ok(accel) else 0.0)


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
