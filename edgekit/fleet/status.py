"""The device table: the latest status and telemetry of every device, fed by MQTT messages."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from edgekit_agent.errors import TransportError
from edgekit_agent.telemetry import schema

from ..ui import table


@dataclass
class Device:
    fleet: str
    device: str
    status: dict[str, Any] = field(default_factory=dict)
    telemetry: dict[str, Any] = field(default_factory=dict)
    seen: float = 0.0  # wall clock when the device last spoke (0: unknown)

    def row(self, now: float) -> dict[str, Any]:
        st, tm = self.status, self.telemetry
        bundle = st.get("bundle") or tm.get("bundle") or {}
        inference = tm.get("inference") or {}
        latency = inference.get("latency_ms") or {}
        sensors = tm.get("sensors") or {}
        energy = tm.get("energy") or {}
        online = st.get("state") == "online"
        return {"fleet": self.fleet, "device": self.device, "state": st.get("state", "unknown"),
                "mode": tm.get("mode") if online and tm else st.get("mode"),
                "temperature_c": sensors.get("temperature_c"),
                "battery_pct": sensors.get("battery_pct"),
                "inferences_per_s": inference.get("per_s"), "latency_p50_ms": latency.get("p50"),
                "latency_p95_ms": latency.get("p95"), "errors": inference.get("errors"),
                "energy_per_inference_j": energy.get("per_inference_j"),
                "bundle": bundle.get("name"), "bundle_version": bundle.get("version"),
                "bundle_id": bundle.get("id"), "variant": bundle.get("variant"),
                "queue_dropped_total": (tm.get("queue") or {}).get("dropped_total"),
                "last_seen_s": round(now - self.seen, 1) if self.seen else None}


class FleetView:
    """The latest status and telemetry of every device seen, fed by MQTT messages."""

    def __init__(self) -> None:
        self.devices: dict[tuple[str, str], Device] = {}
        self.ignored = 0
        self._lock = threading.Lock()

    def feed(self, topic: str, payload: bytes, now: float | None = None,
             retained: bool = False) -> None:
        try:
            fleet, device, kind = schema.parse_topic(topic)
            obj = schema.decode(payload, kind)
        except TransportError:
            self.ignored += 1
            return
        with self._lock:
            d = self.devices.setdefault((fleet, device), Device(fleet, device))
            if kind == "status":
                d.status = obj  # arrival order: the last will (seq 0) must win over an older online
            elif kind == "telemetry" and obj["seq"] >= d.telemetry.get("seq", -1):
                d.telemetry = obj  # replayed backlog must not hide the newest reading
            if obj.get("will"):
                return  # the broker speaks for a vanished device; it was composed at connect time
            # A retained message may be old: trust its own timestamp, not its arrival.
            spoke = obj["ts"] if retained else (time.time() if now is None else now)
            d.seen = max(d.seen, spoke)

    def rows(self, now: float | None = None) -> list[dict[str, Any]]:
        now = time.time() if now is None else now
        with self._lock:
            return [self.devices[k].row(now) for k in sorted(self.devices)]


COLUMNS = (("fleet", "fleet"), ("device", "device"), ("state", "state"), ("mode", "mode"),
           ("temperature_c", "temp °C"), ("battery_pct", "batt %"), ("inferences_per_s", "inf/s"),
           ("latency_p50_ms", "p50 ms"), ("latency_p95_ms", "p95 ms"), ("bundle", "bundle"),
           ("bundle_version", "version"), ("variant", "variant"), ("last_seen_s", "seen s ago"))


def render(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no devices seen"
    return table([title for _, title in COLUMNS], [[r[key] for key, _ in COLUMNS] for r in rows])
