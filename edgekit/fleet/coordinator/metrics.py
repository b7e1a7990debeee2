"""``/metrics``: Prometheus families built when scraped from what the coordinator already keeps.

Devices (online, total, by mode, per-device temperature for the first 1000), the device-reported
inference latency as a histogram in seconds (one observation per accepted telemetry message:
the p50 of that message's interval), offloads, and rollouts (by state, and their devices by
state for the newest few). Label values that come from devices (modes) are bounded: the most
common ``MAX_MODES`` keep their name, the rest count as ``other``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from ..deploy.rollout import STATES
from ..deploy.state import CANCELLED, DONE, HALTED, RUNNING
from .registry import LATENCY_BUCKETS_MS, Registry
from .rollouts import RolloutView
from .service import Coordinator

MAX_MODES = 20
OFFLOAD_OUTCOMES = ("requests", "dispatched", "redispatched", "run_local", "completed",
                    "worker_errors", "duplicates", "rejected", "error_replies")


class FleetCollector:
    """A prometheus-client collector over a coordinator's registry, counters and rollouts."""

    def __init__(self, coordinator: Coordinator, rollouts: RolloutView) -> None:
        self.coordinator, self.rollouts = coordinator, rollouts

    def collect(self) -> Iterator[Metric]:
        reg = self.coordinator.registry
        yield from _devices(reg)
        yield _latency(reg)
        yield from _offload(self.coordinator.stats())
        yield from _rollouts(self.rollouts.summaries())


def _devices(reg: Registry) -> Iterator[Metric]:
    yield GaugeMetricFamily("edgekit_devices_online", "Devices whose status is online.",
                            value=reg.online_count())
    yield GaugeMetricFamily("edgekit_devices_total", "Devices the registry knows.",
                            value=len(reg.devices))
    modes = GaugeMetricFamily("edgekit_devices_by_mode", "Online devices by power-policy mode.",
                              labels=["mode"])
    for mode, n in bounded_modes(reg.modes()).items():
        modes.add_metric([mode], n)
    yield modes
    yield GaugeMetricFamily("edgekit_offload_workers", "Online devices serving offloaded work.",
                            value=len(reg.workers()))
    messages = CounterMetricFamily("edgekit_registry_messages", "Messages taken into the "
                                   "registry, by kind.", labels=["kind"])
    for kind, n in reg.counts.items():
        messages.add_metric([kind], n)
    yield messages
    per_device = GaugeMetricFamily("edgekit_device_temperature_celsius", "Last reported "
                                   "temperature.", labels=["device"])
    for row in reg.rows()[:1000]:  # a scrape must stay small on a big fleet
        if isinstance(row["temperature_c"], (int, float)):
            per_device.add_metric([row["device"]], row["temperature_c"])
    yield per_device


def bounded_modes(modes: dict[str, int]) -> dict[str, int]:
    """At most ``MAX_MODES`` label values of at most 64 characters (the rest count as other)."""
    ranked = sorted(modes.items(), key=lambda kv: (-kv[1], kv[0]))
    out: dict[str, int] = {}
    for mode, n in ranked[:MAX_MODES]:
        out[mode[:64]] = out.get(mode[:64], 0) + n
    rest = sum(n for _, n in ranked[MAX_MODES:])
    if rest:
        out["other"] = out.get("other", 0) + rest
    return out


def _latency(reg: Registry) -> Metric:
    counts, total = list(reg.latency_counts), reg.latency_sum_ms
    buckets, running = [], 0
    for bound, n in zip((*LATENCY_BUCKETS_MS, float("inf")), counts):
        running += n
        buckets.append(("+Inf" if bound == float("inf") else f"{bound / 1e3:g}", running))
    return HistogramMetricFamily("edgekit_device_inference_latency_seconds",
                                 "Device-reported inference latency (each telemetry message's "
                                 "interval p50).", buckets=buckets, sum_value=total / 1e3)


def _offload(stats: dict[str, Any]) -> Iterator[Metric]:
    offload = CounterMetricFamily("edgekit_offload", "Offload requests by outcome.",
                                  labels=["outcome"])
    for key in OFFLOAD_OUTCOMES:
        offload.add_metric([key], stats[key])
    yield offload
    rejected = CounterMetricFamily("edgekit_offload_rejected", "Refused offload payloads, by "
                                   "reason.", labels=["reason"])
    for reason, n in sorted(stats["rejected_by_reason"].items()):
        rejected.add_metric([reason], n)
    yield rejected
    yield GaugeMetricFamily("edgekit_offload_pending", "Offloaded work not answered yet.",
                            value=stats["pending"])


def _rollouts(summaries: list[dict[str, Any]]) -> Iterator[Metric]:
    by_state = GaugeMetricFamily("edgekit_rollouts", "Recent rollouts of this fleet by state.",
                                 labels=["state"])
    for state in (RUNNING, HALTED, DONE, CANCELLED):
        by_state.add_metric([state], sum(r["status"] == state for r in summaries))
    yield by_state
    devices = GaugeMetricFamily("edgekit_rollout_devices", "Devices of each recent rollout by "
                                "state.", labels=["rollout", "version", "state"])
    for r in summaries:
        for state in STATES:
            devices.add_metric([r["rollout"], r["version"], state], r["states"][state])
    yield devices
