"""The device table: the latest status and telemetry of every device, fed by MQTT messages.

Messages with an implausible ``ts`` or ``seq`` are refused and counted (``rejected``), and a
retained ``online`` nothing confirms turns ``stale``: :mod:`edgekit_agent.telemetry.receiver`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from edgekit_agent.errors import TransportError
from edgekit_agent.telemetry import schema
from edgekit_agent.telemetry.receiver import Plausibility, SeqTracker

from ..ui import table

DEFAULT_RULES = Plausibility()


@dataclass
class Device:
    fleet: str
    device: str
    status: dict[str, Any] = field(default_factory=dict)
    telemetry: dict[str, Any] = field(default_factory=dict)
    seen: float = 0.0  # wall clock when the device last spoke (0: unknown)
    seq: SeqTracker = field(default_factory=SeqTracker)

    def state(self, now: float, rules: Plausibility) -> str:
        state = self.status.get("state", "unknown")
        if state == "online" and now - self.seen > rules.stale_after_s:
            return "stale"  # retained online, and nothing live for several refresh periods
        return state

    def row(self, now: float, rules: Plausibility = DEFAULT_RULES) -> dict[str, Any]:
        st, tm = self.status, self.telemetry
        bundle = st.get("bundle") or tm.get("bundle") or {}
        inference = tm.get("inference") or {}
        latency = inference.get("latency_ms") or {}
        sensors = tm.get("sensors") or {}
        energy = tm.get("energy") or {}
        online = st.get("state") == "online"
        return {"fleet": self.fleet, "device": self.device, "state": self.state(now, rules),
                "mode": tm.get("mode") if online and tm else st.get("mode"),
                "temperature_c": sensors.get("temperature_c"),
                "battery_pct": sensors.get("battery_pct"),
                "inferences_per_s": inference.get("per_s"), "latency_p50_ms": latency.get("p50"),
                "latency_p95_ms": latency.get("p95"), "errors": inference.get("errors"),
                "energy_per_inference_j": energy.get("per_inference_j"),
                "bundle": bundle.get("name"), "bundle_version": bundle.get("version"),
                "bundle_id": bundle.get("id"), "variant": bundle.get("variant"),
                "queue_dropped_total": (tm.get("queue") or {}).get("dropped_total"),
                "last_seen_s": round(max(now - self.seen, 0.0), 1) if self.seen else None}


class FleetView:
    """The latest status and telemetry of every device seen, fed by MQTT messages."""

    def __init__(self, rules: Plausibility | None = None) -> None:
        self.devices: dict[tuple[str, str], Device] = {}
        self.rules = rules or Plausibility()
        self.ignored = 0  # malformed
        self.rejected = 0  # well-formed but implausible ts/seq
        self._lock = threading.Lock()

    def feed(self, topic: str, payload: bytes, now: float | None = None,
             retained: bool = False) -> None:
        now = time.time() if now is None else now
        try:
            fleet, device, kind = schema.parse_topic(topic)
            obj = schema.decode(payload, kind)
        except TransportError:
            self.ignored += 1
            return
        if kind not in ("status", "telemetry"):
            return
        if obj.get("device") != device or self.rules.ts_problem(float(obj["ts"]), now):
            self.rejected += 1  # a payload naming another device, or an absurd clock
            return
        with self._lock:
            self._apply(self.devices.setdefault((fleet, device), Device(fleet, device)), kind, obj,
                        now, retained)

    def _apply(self, d: Device, kind: str, obj: dict[str, Any], now: float, retained: bool) -> None:
        if kind == "status":
            d.status = obj  # arrival order: the last will (seq 0) must win over an older online
            if d.seq.last is None and obj["seq"] > 0:
                d.seq.last = obj["seq"]  # one counter for all topics: telemetry continues from here
        elif obj["seq"] == d.seq.last:
            return  # a QoS 1 repeat
        elif d.seq.accept(obj["seq"]):
            d.telemetry = obj  # repeats, replays and absurd jumps do not replace the reading
        else:
            self.rejected += 1
            return
        if obj.get("will"):
            return  # the broker speaks for a vanished device; it was composed at connect time
        # A retained message may be old: trust its own (plausible) timestamp, not its arrival.
        spoke = min(float(obj["ts"]), now) if retained else now
        d.seen = max(d.seen, spoke)

    def rows(self, now: float | None = None) -> list[dict[str, Any]]:
        now = time.time() if now is None else now
        with self._lock:
            return [self.devices[k].row(now, self.rules) for k in sorted(self.devices)]


COLUMNS = (("fleet", "fleet"), ("device", "device"), ("state", "state"), ("mode", "mode"),
           ("temperature_c", "temp °C"), ("battery_pct", "batt %"), ("inferences_per_s", "inf/s"),
           ("latency_p50_ms", "p50 ms"), ("latency_p95_ms", "p95 ms"), ("bundle", "bundle"),
           ("bundle_version", "version"), ("variant", "variant"), ("last_seen_s", "seen s ago"))


def render(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no devices seen"
    return table([title for _, title in COLUMNS], [[r[key] for key, _ in COLUMNS] for r in rows])
