"""The fleet registry: the latest known state of every device, from ``status`` and ``telemetry``.

Ingest is the hot path (10,000 devices at 1 Hz is 10,000 messages a second into one Python
process), so :meth:`Registry.feed` splits the topic by hand, parses the JSON once, copies the few
fields routing and the API need into a slotted record and marks it dirty. A background thread
writes dirty records to SQLite (``--state DIR``) in one transaction every ``flush_s``; a
restarted coordinator loads them and then lets the broker's retained ``status`` messages correct
them. A device's last will (``status`` ``offline``, published by the broker when the agent's
keepalive runs out) marks it offline. Messages with an implausible ``ts`` are refused and a
forged high ``seq`` cannot mask a device (``edgekit_agent.telemetry.receiver``).

For the dashboard and ``/metrics`` each accepted telemetry message also costs one append to the
device's bounded history (a deque of ``history_points``, for the first ``history_devices``
devices: memory stays bounded on a 10k fleet) and one bucket increment of the reported-latency
histogram.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from bisect import bisect_left
from collections import deque
from pathlib import Path
from typing import Any

from edgekit_agent.defaults import DEVICE_NAME_RE
from edgekit_agent.errors import ConfigError
from edgekit_agent.telemetry.receiver import Plausibility, SeqTracker

_FIELDS = ("device", "online", "mode", "bundle", "bundle_id", "bundle_version", "target",
           "temperature_c", "battery_pct", "latency_ms_p50", "inferences_per_s", "queue_depth",
           "offload_allowed", "worker", "service_ms_p50", "rtt_ms", "bandwidth_bps", "energy_j",
           "last_seen", "telemetry_seq")
HISTORY_FIELDS = ("ts", "latency_ms_p50", "temperature_c", "battery_pct", "mode")
# Upper bounds (ms) of the device-reported latency histogram; the last bucket is +Inf.
LATENCY_BUCKETS_MS = (0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0)


class DeviceRecord:
    """One device as the registry knows it (``to_dict`` is the ``/api/devices`` row)."""

    __slots__ = _FIELDS

    def __init__(self, device: str) -> None:
        for name in _FIELDS:
            setattr(self, name, None)
        self.device, self.online, self.telemetry_seq = device, False, -1

    def to_dict(self) -> dict[str, Any]:
        row = {name: getattr(self, name) for name in _FIELDS}
        bps = row["bandwidth_bps"]
        row["bandwidth_mbps"] = round(bps / 1e6, 3) if isinstance(bps, (int, float)) else None
        return row

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DeviceRecord:
        r = cls(str(d["device"]))
        for name in _FIELDS:
            if name in d:
                setattr(r, name, d[name])
        return r


class Registry:
    """Devices of one fleet, fed by MQTT messages, persisted to ``state_dir`` when given."""

    def __init__(self, fleet: str, state_dir: Path | None = None, *, flush_s: float = 0.5,
                 history_points: int = 300, history_devices: int = 1000) -> None:
        self.fleet = fleet
        self.prefix = f"edgekit/v1/{fleet}/"
        self.devices: dict[str, DeviceRecord] = {}
        self.counts = {"status": 0, "telemetry": 0, "ignored": 0, "duplicates": 0, "rejected": 0}
        self.rules = Plausibility()
        self._seq: dict[str, SeqTracker] = {}
        self.lag_ms: deque[float] = deque(maxlen=100_000)
        self.history: dict[str, deque[tuple[Any, ...]]] = {}
        self.history_points, self.history_devices = history_points, history_devices
        self.latency_counts = [0] * (len(LATENCY_BUCKETS_MS) + 1)  # per bucket, not cumulative
        self.latency_sum_ms = 0.0
        self._modes: dict[str, str] = {}  # one string object per mode, not one per point
        self._dirty: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._db_path = None if state_dir is None else _prepare_state(state_dir)
        self._flush_s = flush_s
        self._writer: threading.Thread | None = None
        if self._db_path is not None:
            self._load()

    # -- persistence --

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self._db_path), timeout=10)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE IF NOT EXISTS devices (device TEXT PRIMARY KEY, data TEXT NOT NULL)")
        return db

    def _load(self) -> None:
        db = self._connect()
        try:
            for device, data in db.execute("SELECT device, data FROM devices"):
                try:
                    self.devices[device] = DeviceRecord.from_dict(json.loads(data))
                except (ValueError, KeyError, TypeError):
                    continue  # a damaged row: the retained status will bring the device back
        finally:
            db.close()

    def start(self) -> None:
        if self._db_path is not None and self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, name="registry-writer",
                                            daemon=True)
            self._writer.start()

    def stop(self) -> None:
        self._stop.set()
        if self._writer is not None:
            self._writer.join(10)

    def _write_loop(self) -> None:
        db = self._connect()
        try:
            while not self._stop.wait(self._flush_s):
                self.flush(db)
            self.flush(db)
        finally:
            db.close()

    def flush(self, db: sqlite3.Connection) -> int:
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            snapshots = [(d, self.devices[d].to_dict()) for d in dirty]
        rows = [(d, json.dumps(snap)) for d, snap in snapshots]
        if rows:
            with db:
                db.executemany("INSERT OR REPLACE INTO devices (device, data) VALUES (?, ?)", rows)
        return len(rows)

    # -- ingest --

    def feed(self, topic: str, payload: bytes, retained: bool = False) -> str | None:
        """Take one ``status``/``telemetry`` message; returns the device it updated, if any."""
        if not topic.startswith(self.prefix):
            return self._ignore()
        device, _, kind = topic[len(self.prefix):].partition("/")
        if kind not in ("status", "telemetry") or not DEVICE_NAME_RE.match(device):
            return self._ignore()
        try:
            obj = json.loads(payload)
        except (ValueError, RecursionError):
            return self._ignore()
        if not isinstance(obj, dict) or obj.get("device") != device:
            return self._ignore()  # a payload must speak for the device of its topic
        ts = obj.get("ts")
        if not isinstance(ts, (int, float)) or self.rules.ts_problem(float(ts), time.time()):
            self.counts["rejected"] += 1  # an absurd clock must not date the device
            return None
        try:
            with self._lock:
                record = self.devices.get(device)
                if record is None:
                    record = self.devices[device] = DeviceRecord(device)
                if kind == "status":
                    changed = _status(record, obj, self.counts)
                else:
                    changed = _telemetry(record, obj, self.counts, self._tracker(record))
                    if changed:
                        self._observe(record)
                if changed:
                    self._dirty.add(device)
        except (TypeError, AttributeError, ValueError):
            return self._ignore()  # fields of the wrong type: keep what we had
        self.counts[kind] += 1
        ts = obj.get("ts")
        if not retained and changed and isinstance(ts, (int, float)):
            self.lag_ms.append((time.time() - ts) * 1e3)
        return device

    def _observe(self, r: DeviceRecord) -> None:
        """One accepted telemetry message: a history point and the latency histogram."""
        latency = r.latency_ms_p50
        if isinstance(latency, (int, float)) and not isinstance(latency, bool) and latency >= 0:
            self.latency_counts[bisect_left(LATENCY_BUCKETS_MS, latency)] += 1
            self.latency_sum_ms += latency
        points = self.history.get(r.device)
        if points is None:
            if len(self.history) >= self.history_devices:
                return
            points = self.history[r.device] = deque(maxlen=self.history_points)
        mode = r.mode
        if isinstance(mode, str):
            mode = self._modes.get(mode, mode)
            if len(self._modes) < 64:  # a fleet has a handful of modes; a forger gets no more
                self._modes.setdefault(mode, mode)
        points.append((r.last_seen, latency, r.temperature_c, r.battery_pct, mode))

    def _tracker(self, r: DeviceRecord) -> SeqTracker:
        tracker = self._seq.get(r.device)
        if tracker is None:
            last = r.telemetry_seq if isinstance(r.telemetry_seq, int) and r.telemetry_seq >= 0 else None
            tracker = self._seq[r.device] = SeqTracker(self.rules, last)
        return tracker

    def _ignore(self) -> None:
        self.counts["ignored"] += 1
        return None

    # -- queries --

    def lag(self) -> dict[str, float | None]:
        """Publish-to-registry delay of recent live messages (ms, from the payloads' ``ts``)."""
        return percentiles(self.lag_ms, "lag_ms")

    def get(self, device: str) -> DeviceRecord | None:
        return self.devices.get(device)

    def rows(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self.devices[d].to_dict() for d in sorted(self.devices)]

    def series(self, devices: list[str] | None = None) -> dict[str, dict[str, list[Any]]]:
        """Each device's history as columns (``HISTORY_FIELDS``), oldest point first."""
        with self._lock:
            names = sorted(self.history) if devices is None else [d for d in devices
                                                                  if d in self.history]
            copies = {d: list(self.history[d]) for d in names}
        return {d: dict(zip(HISTORY_FIELDS, map(list, zip(*points)))) if points
                else {f: [] for f in HISTORY_FIELDS} for d, points in copies.items()}

    def modes(self) -> dict[str, int]:
        """Online devices by their current mode."""
        out: dict[str, int] = {}
        for r in list(self.devices.values()):
            if r.online:
                key = r.mode if isinstance(r.mode, str) else "unknown"
                out[key] = out.get(key, 0) + 1
        return out

    def online_count(self) -> int:
        return sum(1 for r in list(self.devices.values()) if r.online)

    def workers(self) -> list[DeviceRecord]:
        return [r for r in list(self.devices.values()) if r.online and r.worker]


def _status(r: DeviceRecord, obj: dict[str, Any], counts: dict[str, int]) -> bool:
    r.online = obj.get("state") == "online" and not obj.get("will")
    r.mode = obj.get("mode") or r.mode
    _bundle(r, obj.get("bundle"))
    if "offload_allowed" in obj:
        r.offload_allowed = bool(obj["offload_allowed"])
    offload = obj.get("offload")
    if isinstance(offload, dict):
        r.worker = bool(offload.get("worker"))
        r.service_ms_p50 = offload.get("service_ms_p50") or r.service_ms_p50
    _link(r, obj.get("link"))
    if r.online:
        r.last_seen = obj.get("ts")
    return True


def _link(r: DeviceRecord, link: Any) -> None:
    """The device's own estimate of its link (see the agent's ``service/linkstats.py``)."""
    if isinstance(link, dict):
        for name in ("rtt_ms", "bandwidth_bps"):
            value = link.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                setattr(r, name, float(value))


def _telemetry(r: DeviceRecord, obj: dict[str, Any], counts: dict[str, int],
               tracker: SeqTracker) -> bool:
    seq = obj.get("seq")
    if not isinstance(seq, int) or seq == tracker.last or not tracker.accept(seq):
        counts["duplicates"] += 1
        return False  # a QoS 1 repeat, an older replay, or a forged jump (see SeqTracker)
    # Read everything first: a field of the wrong type raises before the record is touched.
    inference, sensors = obj.get("inference") or {}, obj.get("sensors") or {}
    offload, link = obj.get("offload") or {}, obj.get("link") or {}
    values = {"telemetry_seq": seq, "last_seen": obj.get("ts"), "mode": obj.get("mode"),
              "latency_ms_p50": (inference.get("latency_ms") or {}).get("p50"),
              "inferences_per_s": inference.get("per_s"),
              "temperature_c": sensors.get("temperature_c"), "battery_pct": sensors.get("battery_pct"),
              "offload_allowed": bool((obj.get("limits") or {}).get("offload_allowed")),
              "energy_j": (obj.get("energy") or {}).get("per_inference_j")}
    if offload:
        values.update(worker=bool(offload.get("worker")), queue_depth=offload.get("queue_depth"),
                      service_ms_p50=offload.get("service_ms_p50") or r.service_ms_p50,
                      rtt_ms=offload.get("rtt_ms_p50") or r.rtt_ms)
    if link:  # a figure not measured yet (null) keeps what we had
        values.update(rtt_ms=link.get("rtt_ms") or values.get("rtt_ms", r.rtt_ms),
                      bandwidth_bps=link.get("bandwidth_bps") or r.bandwidth_bps)
    bundle = obj.get("bundle")
    if bundle is not None and not isinstance(bundle, dict):
        raise TypeError("bundle")
    if r.online is False and r.mode is None:
        r.online = True  # telemetry before any status (a coordinator started late)
    for name, value in values.items():
        setattr(r, name, value)
    _bundle(r, bundle)
    return True


def _bundle(r: DeviceRecord, bundle: Any) -> None:
    if isinstance(bundle, dict):
        r.bundle, r.bundle_id = bundle.get("name"), bundle.get("id")
        r.bundle_version, r.target = bundle.get("version"), bundle.get("target")


def _prepare_state(state_dir: Path) -> Path:
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        probe = state_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot use the state folder: {exc.strerror or exc}", key="--state",
                          value=str(state_dir)) from None
    return state_dir / "registry.sqlite"


def percentiles(values: deque[float], prefix: str) -> dict[str, float | None]:
    data = sorted(values.copy())  # copy() is atomic; iterating a deque being appended is not
    if not data:
        return {f"{prefix}_p50": None, f"{prefix}_p99": None, f"{prefix}_n": 0}
    return {f"{prefix}_p50": round(data[len(data) // 2], 3),
            f"{prefix}_p99": round(data[min(len(data) - 1, int(len(data) * 0.99))], 3),
            f"{prefix}_n": len(data)}
