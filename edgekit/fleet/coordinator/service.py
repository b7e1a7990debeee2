"""The coordinator's MQTT side: registry ingest and offload routing.

Subscriptions (fleet ``F``, share group ``G``)::

    edgekit/v1/F/+/status, edgekit/v1/F/+/telemetry     every coordinator: its own registry
    $share/G/edgekit/v1/F/+/offload/req                  one coordinator of the group per request
    edgekit/v1/F/+/offload/resp                          to see work finish (others' are ignored)

A request is checked (header schema, tensor blob header, ``device`` = the topic's device,
``reply_to`` = that device's own ``offload/resp``: a forged request cannot aim answers at
another device), then routed by :mod:`.routing` to the cheapest online worker running the same
bundle, as ``offload/work`` on that worker's topic; the tensors are forwarded, not decoded.
The worker answers the requester directly. Work that stays unanswered past a few times its
expected cost, or whose worker goes offline, is sent to the next worker (that worker is a
suspect for a while); when none is left the requester is told ``run_local`` at once instead
of waiting for its deadline. A malformed request gets an ``error`` answer when it names a
correlation id, is dropped otherwise, and is counted either way.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit_agent.cliutil import parse_broker
from edgekit_agent.errors import TransportError
from edgekit_agent.telemetry import offload_schema, tensorwire
from edgekit_agent.telemetry.schema import SCHEMAS, check_name

from ..broker import connect, read_password
from .ingest import IngestLink
from .registry import DeviceRecord, Registry, percentiles
from .routing import Choice, CostModel, Link, WorkerView, choose

log = logging.getLogger("edgekit.coordinator")
QOS = 1
SUSPECT_S = 5.0


@dataclass
class _Pending:
    cid: str
    origin: str
    header: dict[str, Any]
    blob: bytes
    deadline: float
    worker: str = ""
    expected_ms: float = 0.0
    dispatched: float = 0.0
    tried: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Connection:
    """How to reach the broker (the fleet CLI's options)."""

    broker: str
    tls: bool = False
    ca_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None


class Coordinator:
    """Registry ingest plus offload routing for one fleet (see the module docstring)."""

    def __init__(self, registry: Registry, connection: Connection, *, name: str = "coordinator",
                 group: str = "edgekit", model: CostModel | None = None) -> None:
        self.registry, self.connection = registry, connection
        self.name, self.group = check_name(name, "--name"), check_name(group, "--group")
        self.model = model or CostModel()
        self.prefix = registry.prefix
        self.counts = {"requests": 0, "dispatched": 0, "redispatched": 0, "run_local": 0,
                       "completed": 0, "worker_errors": 0, "duplicates": 0, "rejected": 0,
                       "error_replies": 0}
        self.rejected_by_reason: dict[str, int] = {}
        self.overhead_ms: deque[float] = deque(maxlen=100_000)
        self._pending: dict[str, _Pending] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._inflight: dict[str, int] = {}
        self._suspects: dict[str, float] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._seq = 0
        self._client: Any = None
        self._ingest: IngestLink | None = None
        self._sweeper = threading.Thread(target=self._sweep_loop, name="coordinator-sweep",
                                         daemon=True)

    # -- lifecycle --

    def filters(self) -> list[str]:
        """The offload filters (paho); the registry's go through :mod:`.ingest`."""
        base = self.prefix
        return [f"$share/{self.group}/{base}+/offload/req", f"{base}+/offload/resp"]

    def start(self) -> None:
        self.registry.start()
        c = self.connection
        self._client = connect(c.broker, self.filters(), self.on_message, tls=c.tls,
                               ca_file=c.ca_file, username=c.username, password_file=c.password_file)
        host, port = parse_broker(c.broker)
        tls = ssl.create_default_context(cafile=str(c.ca_file) if c.ca_file else None) if c.tls else None
        self._ingest = IngestLink(host, port, [(f"{self.prefix}+/status", 1),
                                               (f"{self.prefix}+/telemetry", 0)],
                                  self.on_registry_message, client_id=f"{self.name}-registry",
                                  username=c.username, password=read_password(c.password_file),
                                  tls=tls)
        self._ingest.start()
        self._sweeper.start()

    def stop(self) -> None:
        self._stop.set()
        if self._ingest is not None:
            self._ingest.stop()
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
        if self._sweeper.is_alive():
            self._sweeper.join(5)
        self.registry.stop()

    # -- inbound --

    def on_message(self, msg: Any) -> None:
        topic = msg.topic
        try:
            if topic.endswith("/offload/req"):
                self._request(topic, msg.payload)
            elif topic.endswith("/offload/resp"):
                self._response(msg.payload)
        except Exception:  # a bug on one message must not stop the coordinator
            log.exception("message on %s failed", topic)

    def on_registry_message(self, topic: str, payload: bytes, retained: bool) -> None:
        try:
            device = self.registry.feed(topic, payload, retained)
            if device is not None and topic.endswith("/status"):
                self._on_status(device)
        except Exception:
            log.exception("message on %s failed", topic)

    def _on_status(self, device: str) -> None:
        record = self.registry.get(device)
        self._suspects.pop(device, None)
        if record is not None and not record.online:
            with self._lock:
                stranded = [p for p in self._pending.values() if p.worker == device]
            for p in stranded:
                self._redispatch(p, f"worker {device} went offline")

    def _request(self, topic: str, payload: bytes) -> None:
        t0 = time.perf_counter()
        self.counts["requests"] += 1
        device = topic[len(self.prefix):].partition("/")[0] if topic.startswith(self.prefix) else ""
        try:
            frame = offload_schema.parse(payload, "offload/req")
            self._check_request(device, frame)
        except TransportError as exc:
            self._reject(device, payload, exc)
            return
        cid = frame.correlation_id
        with self._lock:
            if cid in self._seen:
                self.counts["duplicates"] += 1  # QoS 1 redelivery: already routed
                return
            self._seen[cid] = None
            if len(self._seen) > 65536:
                self._seen.popitem(last=False)
        now = time.monotonic()
        budget_s = float(frame.header["deadline_ms"]) / 1e3
        pending = _Pending(cid, device, frame.header, frame.blob, deadline=now + budget_s,
                           tried=set(frame.header.get("exclude") or ()))
        self._dispatch(pending)
        self.overhead_ms.append((time.perf_counter() - t0) * 1e3)

    def _check_request(self, device: str, frame: offload_schema.Frame) -> None:
        header = frame.header
        if header["device"] != device:
            raise TransportError(f"forged: device {header['device']!r} on {device!r}'s topic")
        fleet, reply_device = offload_schema.reply_topic(header["reply_to"])
        if (fleet, reply_device) != (self.registry.fleet, device):
            raise TransportError(f"forged: reply_to {header['reply_to']!r} is not {device!r}'s own")
        tensorwire.nbytes(frame.blob)

    def _reject(self, device: str, payload: bytes, exc: TransportError) -> None:
        reason = "forged" if str(exc).startswith("forged") else "malformed"
        with self._lock:
            self.counts["rejected"] += 1
            self.rejected_by_reason[reason] = self.rejected_by_reason.get(reason, 0) + 1
        cid = _correlation_id(payload)
        try:
            check_name(device, "device")
        except TransportError:
            return
        if cid is not None:  # answer on the topic's own device, never on a claimed reply_to
            self.counts["error_replies"] += 1
            self._answer(f"{self.prefix}{device}/offload/resp", cid, "error", device,
                         error=f"request refused: {exc}")

    def _response(self, payload: bytes) -> None:
        cid = _correlation_id(payload)
        if cid is None:
            return
        with self._lock:
            pending = self._pending.pop(cid, None)
            if pending is None:
                return  # another coordinator's work, a run_local we sent, or a repeat
            self._release(pending.worker)
        status = _status(payload)
        self._suspects.pop(pending.worker, None)
        self.counts["completed" if status == "ok" else "worker_errors"] += 1

    # -- routing --

    def _workers(self, p: _Pending) -> list[WorkerView]:
        now = time.monotonic()
        bundle_id = p.header["bundle_id"]
        return [self._view(r) for r in self.registry.workers()
                if r.device != p.origin and r.device not in p.tried and r.bundle_id == bundle_id
                and self._suspects.get(r.device, 0.0) < now]

    def _view(self, r: DeviceRecord) -> WorkerView:
        return WorkerView(device=r.device, service_ms=r.service_ms_p50,
                          queue_depth=int(r.queue_depth or 0), inflight=self._inflight.get(r.device, 0),
                          link=Link(r.rtt_ms, r.bandwidth_bps), stressed=bool(r.offload_allowed),
                          battery_pct=r.battery_pct, energy_j=r.energy_j)

    def _dispatch(self, p: _Pending) -> Choice:
        now = time.monotonic()
        requester = self.registry.get(p.origin)
        link = Link() if requester is None else Link(requester.rtt_ms, requester.bandwidth_bps)
        choice = choose(self.model, self._workers(p), len(p.blob), local_ms=p.header.get("local_ms"),
                        budget_ms=(p.deadline - now) * 1e3, requester=link)
        if choice.worker is None:
            self.counts["run_local"] += 1
            self._answer(p.header["reply_to"], p.cid, "run_local", p.origin, error=choice.reason)
            return choice
        p.worker, p.expected_ms, p.dispatched = choice.worker, choice.cost_ms or 0.0, now
        p.tried.add(choice.worker)
        with self._lock:
            self._pending[p.cid] = p
            self._inflight[p.worker] = self._inflight.get(p.worker, 0) + 1
        header = {"schema": SCHEMAS["offload/work"], "device": self.name, "seq": self._next_seq(),
                  "ts": round(time.time(), 6), "correlation_id": p.cid,
                  "reply_to": p.header["reply_to"], "origin": p.origin,
                  "deadline_ms": round(max(1.0, (p.deadline - now) * 1e3), 3),
                  "bundle": p.header["bundle"], "bundle_id": p.header["bundle_id"]}
        if "split" in p.header:  # the blob is a cut tensor: the worker runs that cut's tail
            header["split"] = p.header["split"]
        self._client.publish(f"{self.prefix}{p.worker}/offload/work",
                             offload_schema.frame(header, p.blob), qos=QOS)
        self.counts["dispatched"] += 1
        return choice

    def _redispatch(self, p: _Pending, why: str) -> None:
        with self._lock:
            if self._pending.pop(p.cid, None) is None:
                return  # answered meanwhile
            self._release(p.worker)
        log.info("request %s: %s; trying another worker", p.cid, why)
        self.counts["redispatched"] += 1
        self._dispatch(p)

    def _release(self, worker: str) -> None:
        left = self._inflight.get(worker, 0) - 1
        if left > 0:
            self._inflight[worker] = left
        else:
            self._inflight.pop(worker, None)

    def _sweep_loop(self) -> None:
        while not self._stop.wait(0.02):
            now = time.monotonic()
            with self._lock:
                items = list(self._pending.values())
            for p in items:
                if now >= p.deadline:
                    with self._lock:  # the requester has run it locally by now
                        if self._pending.pop(p.cid, None) is not None:
                            self._release(p.worker)
                elif now - p.dispatched > _stale_after_s(p.expected_ms):
                    self._suspects[p.worker] = now + SUSPECT_S
                    self._redispatch(p, f"worker {p.worker} silent for "
                                     f"{(now - p.dispatched) * 1e3:.0f} ms")

    # -- outbound --

    def _next_seq(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    def _answer(self, topic: str, cid: str, status: str, served_by: str, **extra: Any) -> None:
        header = {"schema": SCHEMAS["offload/resp"], "device": self.name, "seq": self._next_seq(),
                  "ts": round(time.time(), 6), "correlation_id": cid, "status": status,
                  "served_by": served_by, **extra}
        self._client.publish(topic, offload_schema.frame(header), qos=QOS)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            pending = len(self._pending)
        return {**self.counts, "pending": pending, "rejected_by_reason": dict(self.rejected_by_reason),
                **percentiles(self.overhead_ms, "overhead_ms")}


def _stale_after_s(expected_ms: float) -> float:
    """How long silence from a worker is tolerated before its work goes elsewhere."""
    return max(3.0 * expected_ms, expected_ms + 250.0) / 1e3


def _header(payload: bytes) -> dict[str, Any] | None:
    cut = payload.find(b"\n", 0, offload_schema.MAX_HEADER_BYTES + 1)
    try:
        obj = json.loads(payload[:cut] if cut >= 0 else payload[:offload_schema.MAX_HEADER_BYTES])
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _correlation_id(payload: bytes) -> str | None:
    obj = _header(payload)
    cid = None if obj is None else obj.get("correlation_id")
    return cid if isinstance(cid, str) and offload_schema.ID_RE.match(cid) else None


def _status(payload: bytes) -> str | None:
    obj = _header(payload)
    return None if obj is None else obj.get("status")
