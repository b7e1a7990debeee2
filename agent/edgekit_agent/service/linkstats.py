"""The device's link to the broker as it is now: RTT and bandwidth, estimated from traffic.

Only one timed upload is on the wire at a time (:attr:`LinkEstimate.wire`, taken without
waiting: an upload that finds it busy goes untimed), so no sample times another's bytes.
RTT aside, each figure is an exponentially weighted average of samples:

- **RTT**: a tiny QoS 1 publish on the device's own ``offload/probe`` topic, publish to PUBACK
  (:class:`LinkProbe`, every :data:`PROBE_INTERVAL_S`); the least of the last
  :data:`RTT_WINDOW` (queueing only ever adds to it, as TCP's and BBR's min-RTT filters assume).
- **bandwidth**, from the offload exchanges themselves: a request's publish-to-PUBACK time is the
  RTT plus its bytes on the wire, so ``bytes / (PUBACK time - RTT)``; while no exchange is recent
  (a device that stopped offloading because the link was slow must notice it got fast again) a
  :data:`PROBE_BYTES` probe does the same. A transfer too short to time (under
  :data:`MIN_TRANSFER_MS`) gives the lower bound it implies.
- **fixed cost** of an offload round trip (the RTT plus the coordinator's and worker's hops):
  ``round trip - worker service time - (request + answer bytes) / bandwidth``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

DEFAULT_RTT_MS = 2.0
DEFAULT_BANDWIDTH_BPS = 100e6
MIN_TRANSFER_MS = 0.5
ALPHA = 0.3
PROBE_INTERVAL_S = 1.0
PROBE_STALE_S = 3.0      # no bandwidth sample for this long: probe it
PROBE_BYTES = 16 << 10
RTT_WINDOW = 8


class LinkEstimate:
    """EWMA of RTT and fixed round-trip cost (ms) and bandwidth (bit/s); thread-safe."""

    def __init__(self, alpha: float = ALPHA) -> None:
        self.alpha = alpha
        self.rtt_ms: float | None = None
        self._rtts: deque[float] = deque(maxlen=RTT_WINDOW)
        self.wire = threading.Lock()
        self.fixed_cost_ms: float | None = None
        self.bandwidth_bps: float | None = None
        self.samples = 0
        self.last_bandwidth = 0.0  # monotonic time of the last bandwidth sample
        self._lock = threading.Lock()

    def _mix(self, old: float | None, new: float) -> float:
        return new if old is None else (1 - self.alpha) * old + self.alpha * new

    def note_rtt(self, ms: float) -> None:
        with self._lock:
            self._rtts.append(max(ms, 0.0))
            self.rtt_ms = min(self._rtts)

    def note_upload(self, nbytes: int, ack_ms: float) -> None:
        """``nbytes`` were published and acknowledged after ``ack_ms``."""
        if nbytes <= 0:
            return
        wire_ms = max(ack_ms - self.rtt_or_default(), MIN_TRANSFER_MS)
        with self._lock:
            self.bandwidth_bps = self._mix(self.bandwidth_bps, nbytes * 8.0 / (wire_ms / 1e3))
            self.samples += 1
            self.last_bandwidth = time.monotonic()

    def note_exchange(self, nbytes: int, round_trip_ms: float, service_ms: float) -> None:
        """An answered request: ``nbytes`` both ways, ``round_trip_ms`` of which the worker
        spent ``service_ms`` computing."""
        wire_ms = nbytes * 8.0 / self.bandwidth_or_default() * 1e3
        fixed = max(round_trip_ms - service_ms - wire_ms, self.rtt_or_default())
        with self._lock:
            self.fixed_cost_ms = self._mix(self.fixed_cost_ms, fixed)

    def rtt_or_default(self) -> float:
        return DEFAULT_RTT_MS if self.rtt_ms is None else self.rtt_ms

    def fixed_ms(self) -> float:
        return self.rtt_or_default() if self.fixed_cost_ms is None else self.fixed_cost_ms

    def bandwidth_or_default(self) -> float:
        return self.bandwidth_bps or DEFAULT_BANDWIDTH_BPS

    def to_dict(self) -> dict[str, Any]:
        rtt, bw, fixed = self.rtt_ms, self.bandwidth_bps, self.fixed_cost_ms
        return {"rtt_ms": None if rtt is None else round(rtt, 3),
                "bandwidth_bps": None if bw is None else round(bw, 1),
                "fixed_ms": None if fixed is None else round(fixed, 3), "samples": self.samples}


class LinkProbe:
    """Probes the link every :data:`PROBE_INTERVAL_S` (see the module docstring).

    ``publish(payload) -> ms`` publishes QoS 1 and returns the time to PUBACK (None: no ack)."""

    def __init__(self, estimate: LinkEstimate, publish: Callable[[bytes], float | None],
                 ready: Callable[[], bool]) -> None:
        self.estimate, self.publish, self.ready = estimate, publish, ready
        self.counts = {"probes": 0, "probe_failures": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="edgekit-link-probe", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _loop(self) -> None:
        wait = 0.1  # until the first probe: the RTT is wanted as soon as the link is up
        while not self._stop.wait(wait):
            if self.ready():
                self.probe()
                wait = PROBE_INTERVAL_S

    def probe(self) -> None:
        if not self.estimate.wire.acquire(blocking=False):
            return  # an upload is being timed: its bytes would delay ours
        try:
            self._probe()
        finally:
            self.estimate.wire.release()

    def _probe(self) -> None:
        rtt = self.publish(b"p")
        self.counts["probes"] += 1
        if rtt is None:
            self.counts["probe_failures"] += 1
            return
        self.estimate.note_rtt(rtt)
        if time.monotonic() - self.estimate.last_bandwidth < PROBE_STALE_S:
            return
        took = self.publish(bytes(PROBE_BYTES))
        if took is None:
            self.counts["probe_failures"] += 1
            return
        self.estimate.note_upload(PROBE_BYTES, took)
