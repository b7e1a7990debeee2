"""Data-parallel batches: the items of one batch run on several workers at once and come back
in order.

:class:`BatchRunner` keeps its own registry (``status``/``telemetry`` of the fleet), sends each
item as ``offload/work`` to the worker expected to finish it first (its measured service time
times the work it already holds there, at most ``depth`` items per worker), and gathers the
``offload/resp`` answers by correlation id. An item whose worker answers ``error``, goes quiet
past a few times its service time, or goes offline is sent to another worker; when no worker
is left for it, it runs on ``local`` (or the batch fails with a one-line error when there is
no local runner). The result lists outputs and who served each item, in item order.
"""

from __future__ import annotations

import queue
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgekit_agent.errors import TransportError
from edgekit_agent.telemetry import offload_schema, tensorwire
from edgekit_agent.telemetry.schema import SCHEMAS, check_name

from ..broker import connect
from .registry import Registry
from .service import Connection

Item = dict[str, np.ndarray]
LocalFn = Callable[[Item], Item]


@dataclass(frozen=True)
class BatchResult:
    outputs: tuple[Item, ...]
    served_by: tuple[str, ...]
    retries: int
    seconds: float


@dataclass
class _Sent:
    index: int
    worker: str
    at: float
    patience_s: float


@dataclass
class _Batch:
    items: list[Item]
    todo: list[int]
    outputs: list[Item | None]
    served: list[str]
    tried: dict[int, set[str]]
    sent: dict[str, _Sent] = field(default_factory=dict)
    retries: int = 0
    quiet: set[str] = field(default_factory=set)


class BatchRunner:
    def __init__(self, connection: Connection, fleet: str, *, bundle: str, bundle_id: str,
                 name: str | None = None, local: LocalFn | None = None, depth: int = 2,
                 deadline_ms: float = 10_000.0) -> None:
        self.connection, self.registry = connection, Registry(check_name(fleet, "fleet"))
        self.name = check_name(name or f"batch-{uuid.uuid4().hex[:8]}", "name")
        self.bundle, self.bundle_id, self.local = bundle, bundle_id, local
        self.depth, self.deadline_ms = depth, deadline_ms
        self.reply_to = f"{self.registry.prefix}{self.name}/offload/resp"
        self._answers: queue.Queue[bytes] = queue.Queue()
        self._client: Any = None
        self._seq = 0

    def start(self) -> BatchRunner:
        base = self.registry.prefix
        c = self.connection
        self._client = connect(c.broker, [f"{base}+/status", f"{base}+/telemetry", self.reply_to],
                               self._on_message, tls=c.tls, ca_file=c.ca_file,
                               username=c.username, password_file=c.password_file)
        return self

    def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()

    def _on_message(self, msg: Any) -> None:
        if msg.topic == self.reply_to:
            self._answers.put(bytes(msg.payload))
        else:
            self.registry.feed(msg.topic, msg.payload, msg.retain)

    def workers(self) -> list[str]:
        return sorted(r.device for r in self.registry.workers() if r.bundle_id == self.bundle_id)

    def wait_for_workers(self, n: int, timeout_s: float) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while len(self.workers()) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.workers()

    # -- one batch --

    def run(self, items: list[Item]) -> BatchResult:
        t0 = time.monotonic()
        b = _Batch(items=list(items), todo=list(range(len(items))), outputs=[None] * len(items),
                   served=[""] * len(items), tried={i: set() for i in range(len(items))})
        while b.todo or b.sent:
            self._assign(b)
            self._collect(b, timeout_s=0.01)
            self._expire(b)
        return BatchResult(tuple(b.outputs), tuple(b.served), b.retries,  # type: ignore[arg-type]
                           time.monotonic() - t0)

    def _assign(self, b: _Batch) -> None:
        online = {r.device: r for r in self.registry.workers() if r.bundle_id == self.bundle_id}
        for cid, s in list(b.sent.items()):
            if s.worker not in online:  # went offline: its items go elsewhere now
                self._retry(b, cid)
        load: dict[str, int] = {}
        for s in b.sent.values():
            load[s.worker] = load.get(s.worker, 0) + 1
        for index in list(b.todo):
            choices = [(((load.get(d, 0) + 1) * _service_ms(r)), d) for d, r in online.items()
                       if d not in b.tried[index] and d not in b.quiet and load.get(d, 0) < self.depth]
            if choices:
                worker = min(choices)[1]
                self._send(b, index, worker, _service_ms(online[worker]))
                load[worker] = load.get(worker, 0) + 1
            elif not any(d not in b.tried[index] and d not in b.quiet for d in online):
                self._run_locally(b, index)  # nobody left to ask for this one

    def _send(self, b: _Batch, index: int, worker: str, service_ms: float) -> None:
        cid = uuid.uuid4().hex
        self._seq += 1
        header = {"schema": SCHEMAS["offload/work"], "device": self.name, "seq": self._seq,
                  "ts": round(time.time(), 6), "correlation_id": cid, "reply_to": self.reply_to,
                  "origin": self.name, "deadline_ms": self.deadline_ms, "bundle": self.bundle,
                  "bundle_id": self.bundle_id}
        payload = offload_schema.frame(header, tensorwire.encode(b.items[index]))
        self._client.publish(f"{self.registry.prefix}{worker}/offload/work", payload, qos=1)
        b.todo.remove(index)
        b.tried[index].add(worker)
        patience = max(4.0 * service_ms, service_ms + 300.0) * (self.depth + 1) / 1e3
        b.sent[cid] = _Sent(index, worker, time.monotonic(), patience)

    def _collect(self, b: _Batch, timeout_s: float) -> None:
        try:
            raw = self._answers.get(timeout=timeout_s)
        except queue.Empty:
            return
        while True:
            self._take(b, raw)
            try:
                raw = self._answers.get_nowait()
            except queue.Empty:
                return

    def _take(self, b: _Batch, raw: bytes) -> None:
        try:
            frame = offload_schema.parse(raw, "offload/resp")
        except TransportError:
            return
        s = b.sent.get(frame.correlation_id)
        if s is None:
            return  # a repeat, or an answer to work already given to someone else
        if frame.header["status"] != "ok":
            self._retry(b, frame.correlation_id)
            return
        try:
            outputs = tensorwire.decode(frame.blob)
        except TransportError:
            self._retry(b, frame.correlation_id)
            return
        del b.sent[frame.correlation_id]
        b.outputs[s.index], b.served[s.index] = outputs, str(frame.header["served_by"])

    def _expire(self, b: _Batch) -> None:
        now = time.monotonic()
        for cid, s in list(b.sent.items()):
            if now - s.at > s.patience_s:
                b.quiet.add(s.worker)  # silent: no more items for it in this batch
                self._retry(b, cid)

    def _retry(self, b: _Batch, cid: str) -> None:
        s = b.sent.pop(cid, None)
        if s is not None:
            b.retries += 1
            b.todo.append(s.index)

    def _run_locally(self, b: _Batch, index: int) -> None:
        if self.local is None:
            raise TransportError(f"batch item {index}: no worker left to run it and no local runner")
        b.todo.remove(index)
        b.outputs[index], b.served[index] = self.local(b.items[index]), self.name


def _service_ms(record: Any) -> float:
    return float(record.service_ms_p50 or 50.0)
