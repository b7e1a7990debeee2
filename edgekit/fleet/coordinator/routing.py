"""The routing cost model: where an offloaded request is expected to finish soonest.

    cost = transfer + queue wait + service [+ penalties] [+ energy weight x joules]
    transfer   = RTT + payload bits / bandwidth, for the requester's and the worker's links
    queue wait = (work queued at the worker + work this coordinator has in flight there) x service
    service    = the worker's measured service time for the bundle (median of recent runs)

A worker in a power-saving mode (its own policy allows offload: hot, low battery, overloaded)
is penalised, not excluded: it still beats running nowhere. So is a worker on low battery.
A request is answered ``run_local`` when no worker is expected to beat the requester's own
latency (penalised the same way: it asked because it is stressed) or to finish within its
deadline.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CostModel:
    default_rtt_ms: float = 2.0
    default_bandwidth_bps: float = 100e6
    default_service_ms: float = 50.0
    stressed_factor: float = 4.0
    stressed_penalty_ms: float = 100.0
    low_battery_pct: float = 20.0
    low_battery_penalty_ms: float = 200.0
    energy_weight_ms_per_j: float = 0.0


@dataclass(frozen=True)
class Link:
    rtt_ms: float | None = None
    bandwidth_bps: float | None = None


@dataclass(frozen=True)
class WorkerView:
    device: str
    service_ms: float | None
    queue_depth: int = 0
    inflight: int = 0
    link: Link = Link()
    stressed: bool = False
    battery_pct: float | None = None
    energy_j: float | None = None


@dataclass(frozen=True)
class Choice:
    worker: str | None
    cost_ms: float | None
    reason: str
    ranked: tuple[tuple[str, float], ...] = field(default=())


def transfer_ms(model: CostModel, link: Link, payload_bytes: int) -> float:
    rtt = model.default_rtt_ms if link.rtt_ms is None else link.rtt_ms
    bandwidth = link.bandwidth_bps or model.default_bandwidth_bps
    return rtt + payload_bytes * 8.0 / bandwidth * 1e3


def cost_ms(model: CostModel, w: WorkerView, payload_bytes: int, requester: Link = Link()) -> float:
    service = model.default_service_ms if w.service_ms is None else w.service_ms
    total = (transfer_ms(model, requester, payload_bytes) + transfer_ms(model, w.link, payload_bytes)
             + (w.queue_depth + w.inflight) * service + service)
    if w.stressed:
        total = total * model.stressed_factor + model.stressed_penalty_ms
    if w.battery_pct is not None and w.battery_pct < model.low_battery_pct:
        total += model.low_battery_penalty_ms
    if w.energy_j is not None:
        total += model.energy_weight_ms_per_j * w.energy_j
    return total


def choose(model: CostModel, workers: list[WorkerView], payload_bytes: int, *,
           local_ms: float | None = None, budget_ms: float | None = None,
           requester: Link = Link()) -> Choice:
    """The cheapest worker, or ``None`` with the reason to run locally."""
    if not workers:
        return Choice(None, None, "no worker online with this bundle")
    ranked = sorted(((w.device, cost_ms(model, w, payload_bytes, requester)) for w in workers),
                    key=lambda dc: dc[1])
    best, best_cost = ranked[0]
    if budget_ms is not None and best_cost > budget_ms:
        return Choice(None, best_cost, f"best worker {best} needs {best_cost:.1f} ms, over the "
                      f"{budget_ms:.1f} ms left", tuple(ranked))
    # The requester asks because its own mode allows offload: it is stressed, and its local
    # latency is weighed with the same penalty a stressed worker gets.
    local_cost = None if not local_ms else local_ms * model.stressed_factor + model.stressed_penalty_ms
    if local_cost is not None and best_cost >= local_cost:
        return Choice(None, best_cost, f"best worker {best} ({best_cost:.1f} ms) does not beat "
                      f"local ({local_ms:.1f} ms while stressed)", tuple(ranked))
    return Choice(best, best_cost, "cheapest", tuple(ranked))
