"""Offload on the device: send inference to the fleet's coordinator, and serve work for others.

:class:`OffloadLink` owns one MQTT connection of its own (requests are deadline-bound, so they
do not go through the telemetry's on-disk queue). As a **requester**, :meth:`OffloadLink.infer`
publishes an ``offload/req`` on the device's own topic with ``reply_to`` (its ``offload/resp``
topic), a fresh ``correlation_id`` and a deadline, then waits. An ``ok`` answer returns the
remote outputs and the worker's name; ``run_local``, ``error``, silence past the deadline or a
broken link run the request locally instead: a request is never lost (Sedna's joint inference
crashes its edge worker when the cloud is unreachable; this is the fallback it lacks). Late and
duplicate answers are counted and dropped.

As a **worker** (``[offload] worker = true``) it subscribes to its ``offload/work`` topic, runs
each item on the local model (one at a time, bounded queue, expired items answered with
``error``) and publishes the ``offload/resp`` straight to the requester's ``reply_to``.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import MqttConfig, OffloadConfig
from ..errors import EdgekitError, TransportError, first_line
from ..telemetry import offload_schema, tensorwire
from ..telemetry.schema import SCHEMAS, Topics
from .linkstats import LinkEstimate, LinkProbe

log = logging.getLogger("edgekit_agent.offload")
BREAKER_TIMEOUTS = 3    # unanswered requests in a row before offload pauses ...
BREAKER_PAUSE_S = 10.0  # ... for this long (then one request probes again)
InferFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
QOS = 1


def no_delay(client: Any, userdata: Any, sock: Any) -> None:
    """paho leaves Nagle on: a small QoS 1 answer then waits for a delayed ACK (~40 ms a hop)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass  # not a TCP socket (e.g. a websocket wrapper): nothing to tune


class Served(dict):
    """Inference outputs ``{name: array}`` that also say which device computed them."""

    def __init__(self, outputs: dict[str, np.ndarray], served_by: str,
                 service_ms: float | None = None) -> None:
        super().__init__(outputs)
        self.served_by = served_by
        self.service_ms = service_ms  # the worker's own time for it, when it says


def with_simulated_latency(fn: InferFn, latency_ms: float) -> InferFn:
    """``fn`` plus a fixed delay: a stand-in for slower hardware in tests and demos."""
    if latency_ms <= 0:
        return fn
    delay = latency_ms / 1e3

    def slowed(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = fn(inputs)
        time.sleep(delay)
        return out

    return slowed


class Timings:
    """A rolling window of durations (ms) with a cheap median."""

    def __init__(self, size: int = 128) -> None:
        self._values: deque[float] = deque(maxlen=size)

    def add(self, ms: float) -> None:
        self._values.append(ms)

    def p50(self) -> float | None:
        values = sorted(self._values)
        return round(values[len(values) // 2], 3) if values else None


@dataclass
class _Pending:
    done: threading.Event = field(default_factory=threading.Event)
    header: dict[str, Any] | None = None
    blob: bytes = b""
    sent: float = 0.0
    nbytes: int = 0  # request and answer payloads, for the link estimate


@dataclass(frozen=True)
class _Work:
    header: dict[str, Any]
    blob: bytes
    received: float


class OffloadLink:
    """Requests out, work in, over one MQTT connection (see the module docstring)."""

    def __init__(self, mqtt_options: MqttConfig, topics: Topics, options: OffloadConfig, *,
                 local: InferFn, bundle: Callable[[], dict[str, Any]]) -> None:
        self.mqtt_options, self.topics, self.options = mqtt_options, topics, options
        self.local, self.bundle = local, bundle
        self.counts = {"requests": 0, "remote": 0, "local_fallbacks": 0, "timeouts": 0, "late": 0,
                       "rejected": 0, "served": 0, "work_errors": 0, "paused": 0,
                       "split_errors": 0}
        self.service = Timings()
        self.rtt = Timings()
        self.estimate = LinkEstimate()
        # Set by the daemon when the bundle has split variants: runs the tail of a cut.
        self.split_tail: Callable[[dict[str, Any], dict[str, np.ndarray]],
                                  dict[str, np.ndarray]] | None = None
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.RLock()
        self._seen_work: OrderedDict[str, None] = OrderedDict()
        self._work: queue.Queue[_Work] = queue.Queue(maxsize=options.max_queue)
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._seq = 0
        self._silent = 0  # requests in a row nobody answered
        self._paused_until = 0.0
        self._client = self._make_client()
        self._worker = threading.Thread(target=self._work_loop, name="edgekit-offload-worker",
                                        daemon=True)
        # Not while a request is out: the probe would queue behind its bytes and time them.
        self.probe = LinkProbe(self.estimate, self._publish_probe,
                               lambda: self._connected.is_set() and not self._pending)

    # -- lifecycle --

    def _make_client(self) -> Any:
        import paho.mqtt.client as mqtt

        opts = self.mqtt_options
        protocol = mqtt.MQTTv5 if opts.protocol == "5" else mqtt.MQTTv311
        base = opts.client_id or f"edgekit-{self.topics.fleet}-{self.topics.device}"
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{base}-offload",
                             protocol=protocol)
        client.max_inflight_messages_set(max(opts.inflight, 1))
        client.reconnect_delay_set(opts.reconnect_min_s, opts.reconnect_max_s)
        if opts.tls:
            try:
                client.tls_set(ca_certs=str(opts.ca_file) if opts.ca_file else None)
            except (OSError, ValueError) as exc:
                raise TransportError(f"cannot set up TLS: {exc}") from None
        if opts.username:
            client.username_pw_set(opts.username, opts.password or opts.read_password())
        client.on_socket_open = no_delay
        client.on_connect = self._on_connect
        client.on_disconnect = lambda *a: self._connected.clear()
        client.on_message = self._on_message
        return client

    def start(self) -> None:
        self._client.connect_async(self.mqtt_options.host, self.mqtt_options.port,
                                   keepalive=self.mqtt_options.keepalive)
        self._client.loop_start()
        if self.options.worker:
            self._worker.start()
        if self.options.enabled:
            self.probe.start()

    def stop(self) -> None:
        self._stop.set()
        self.probe.stop()
        self._client.disconnect()
        self._client.loop_stop()
        if self._worker.is_alive():
            self._worker.join(5)

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.warning("offload link refused: %s", reason)
            return
        topics = [(self.topics.offload_resp, QOS)]
        if self.options.worker:
            topics.append((self.topics.offload_work, QOS))
        client.subscribe(topics)
        self._connected.set()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        if message.topic == self.topics.offload_resp:
            self._on_response(bytes(message.payload))
        elif message.topic == self.topics.offload_work and self.options.worker:
            self._on_work(bytes(message.payload))

    def _publish_probe(self, payload: bytes) -> float | None:
        """Publish to our own ``offload/probe`` (QoS 1); ms until the broker's PUBACK."""
        t0 = time.perf_counter()
        try:
            info = self._client.publish(self.topics.offload_probe, payload, qos=QOS)
            info.wait_for_publish(2.0)
        except (RuntimeError, ValueError):  # paho: not connected, or the queue is full
            return None
        return (time.perf_counter() - t0) * 1e3 if info.is_published() else None

    def _header(self, kind: str, **body: Any) -> dict[str, Any]:
        with self._lock:
            self._seq += 1
            seq = self._seq
        return {"schema": SCHEMAS[kind], "device": self.topics.device, "seq": seq,
                "ts": round(time.time(), 6), **body}

    def _count(self, key: str) -> None:
        with self._lock:
            self.counts[key] += 1

    # -- requester --

    def infer(self, inputs: dict[str, np.ndarray], local_ms: float | None = None,
              deadline_ms: float | None = None) -> Served:
        """Outputs from a worker if one answers in time, else from the local model."""
        self._count("requests")
        deadline_s = (deadline_ms or self.options.deadline_ms) / 1e3
        remote = self._ask(inputs, local_ms, deadline_s) if self._should_ask() else None
        if remote is not None:
            self._count("remote")
            return remote
        self._count("local_fallbacks")
        return Served(self.local(inputs), self.topics.device)

    def request(self, tensors: dict[str, np.ndarray], *, split: dict[str, Any],
                local_ms: float | None = None, deadline_ms: float | None = None) -> Served | None:
        """Send a split request (the cut tensor); the worker's outputs, or None: run locally."""
        self._count("requests")
        deadline_s = (deadline_ms or self.options.deadline_ms) / 1e3
        remote = self._ask(tensors, local_ms, deadline_s, split) if self._should_ask() else None
        self._count("remote" if remote is not None else "local_fallbacks")
        return remote

    def _should_ask(self) -> bool:
        """Not while the link is down, nor for a while after requests kept going unanswered (no
        coordinator listening): each would wait for its whole deadline before running locally."""
        return self._connected.is_set() and time.monotonic() >= self._paused_until

    def _note_answer(self, answered: bool) -> None:
        with self._lock:
            self._silent = 0 if answered else self._silent + 1
            if self._silent >= BREAKER_TIMEOUTS:
                self._paused_until = time.monotonic() + BREAKER_PAUSE_S
                self._silent = BREAKER_TIMEOUTS - 1  # after the pause, one more miss pauses again
                self._count("paused")
                log.warning("offload paused for %g s: %d requests unanswered", BREAKER_PAUSE_S,
                            BREAKER_TIMEOUTS)

    def _ask(self, inputs: dict[str, np.ndarray], local_ms: float | None,
             deadline_s: float, split: dict[str, Any] | None = None) -> Served | None:
        try:
            blob = tensorwire.encode({k: _compact(v) for k, v in inputs.items()})
        except TransportError as exc:
            log.warning("cannot offload: %s", exc)
            return None
        bundle = self.bundle()
        cid = uuid.uuid4().hex
        header = self._header("offload/req", correlation_id=cid, reply_to=self.topics.offload_resp,
                              deadline_ms=round(deadline_s * 1e3, 3), bundle=str(bundle["name"]),
                              bundle_id=str(bundle["id"]))
        if local_ms is not None:
            header["local_ms"] = round(local_ms, 3)
        if split is not None:
            header["split"] = split
        payload = offload_schema.frame(header, blob)
        pending = _Pending(sent=time.monotonic(), nbytes=len(payload))
        with self._lock:
            self._pending[cid] = pending
        try:
            timed = self.estimate.wire.acquire(blocking=False)
            try:
                t0 = time.perf_counter()
                info = self._client.publish(self.topics.offload_req, payload, qos=QOS)
                if timed:
                    self._note_upload(info, len(payload), t0, deadline_s)
            finally:
                if timed:
                    self.estimate.wire.release()
            answered = pending.done.wait(max(0.0, deadline_s - (time.monotonic() - pending.sent)))
        finally:
            with self._lock:
                self._pending.pop(cid, None)
        self._note_answer(answered)
        if not answered:
            self._count("timeouts")
            return None
        return self._outputs(pending)

    def _note_upload(self, info: Any, nbytes: int, t0: float, deadline_s: float) -> None:
        """The request's publish-to-PUBACK time: its bytes on the wire (a bandwidth sample)."""
        try:
            info.wait_for_publish(deadline_s)
        except (RuntimeError, ValueError):  # paho: not queued (link down); the deadline decides
            return
        if info.is_published():
            self.estimate.note_upload(nbytes, (time.perf_counter() - t0) * 1e3)

    def _outputs(self, pending: _Pending) -> Served | None:
        header = pending.header or {}
        if header.get("status") != "ok":
            return None
        try:
            outputs = tensorwire.decode(pending.blob)
        except TransportError as exc:
            self._count("rejected")
            log.warning("offload answer rejected: %s", exc)
            return None
        elapsed_ms = (time.monotonic() - pending.sent) * 1e3
        service_ms = header.get("service_ms")
        self.rtt.add(max(0.0, elapsed_ms - float(service_ms or 0.0)))
        self.estimate.note_exchange(pending.nbytes, elapsed_ms, float(service_ms or 0.0))
        return Served(outputs, str(header["served_by"]), service_ms)

    def _on_response(self, payload: bytes) -> None:
        try:
            frame = offload_schema.parse(payload, "offload/resp")
        except TransportError as exc:
            self._count("rejected")
            log.warning("offload answer rejected: %s", exc)
            return
        with self._lock:
            pending = self._pending.get(frame.correlation_id)
            if pending is None or pending.done.is_set():
                self._count("late")  # after the deadline, a duplicate, or not ours
                return
            pending.header, pending.blob = frame.header, frame.blob
            pending.nbytes += len(payload)
            pending.done.set()

    # -- worker --

    def _on_work(self, payload: bytes) -> None:
        try:
            frame = offload_schema.parse(payload, "offload/work")
        except TransportError as exc:
            self._count("rejected")
            log.warning("offload work rejected: %s", exc)
            return
        cid = frame.correlation_id
        if offload_schema.reply_topic(frame.header["reply_to"])[0] != self.topics.fleet:
            self._count("rejected")
            log.warning("offload work rejected: reply_to is outside fleet %s", self.topics.fleet)
            return
        if cid in self._seen_work:
            return  # a QoS 1 redelivery: already queued or answered
        self._seen_work[cid] = None
        if len(self._seen_work) > 4096:
            self._seen_work.popitem(last=False)
        try:
            self._work.put_nowait(_Work(frame.header, frame.blob, time.monotonic()))
        except queue.Full:
            self._answer(frame.header, "error", error=f"worker queue full ({self.options.max_queue})")

    def _work_loop(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._work.get(timeout=0.1)
            except queue.Empty:
                continue
            self._serve(item)

    def _serve(self, item: _Work) -> None:
        header = item.header
        left_ms = float(header["deadline_ms"]) - (time.monotonic() - item.received) * 1e3
        if left_ms <= 0:
            self._answer(header, "error", error="deadline passed in the worker queue")
            return
        if header["bundle_id"] != str(self.bundle()["id"]):
            self._answer(header, "error", error=f"worker runs another bundle than {header['bundle_id']}")
            return
        t0 = time.perf_counter()
        try:
            outputs = self._run_work(header, item.blob)
            blob = tensorwire.encode(outputs)
        except EdgekitError as exc:
            self._count("split_errors" if "split" in header else "work_errors")
            self._answer(header, "error", error=first_line(exc))
            return
        service_ms = (time.perf_counter() - t0) * 1e3  # self.local notes it in self.service
        self._count("served")
        self._answer(header, "ok", blob, service_ms=round(service_ms, 3))

    def _run_work(self, header: dict[str, Any], blob: bytes) -> dict[str, np.ndarray]:
        tensors = tensorwire.decode(blob)
        if "split" not in header:
            return self.local(tensors)
        if self.split_tail is None:
            raise TransportError("this worker has no split variants")
        return self.split_tail(header["split"], tensors)

    def _answer(self, work: dict[str, Any], status: str, blob: bytes = b"", **extra: Any) -> None:
        header = self._header("offload/resp", correlation_id=work["correlation_id"], status=status,
                              served_by=self.topics.device, **extra)
        self._client.publish(work["reply_to"], offload_schema.frame(header, blob), qos=QOS)

    # -- reporting --

    def note_service(self, ms: float) -> None:
        """A local inference's duration: the service time this device offers as a worker."""
        self.service.add(ms)

    def stats(self) -> dict[str, Any]:
        return {"enabled": self.options.enabled, "worker": self.options.worker,
                "connected": self._connected.is_set(), "queue_depth": self._work.qsize(),
                "service_ms_p50": self.service.p50(), "rtt_ms_p50": self.rtt.p50(),
                "link": self.estimate.to_dict(), **self.counts, **self.probe.counts}


def _compact(a: Any) -> np.ndarray:
    """JSON numbers arrive as float64; the models take float32 (the runner quantizes from it)."""
    arr = np.asarray(a)
    return arr.astype(np.float32) if arr.dtype == np.float64 else arr
