"""Split execution on the device: run a model's head here, its tail on a worker.

A bundle packed with ``edgekit pack --split`` carries, per candidate cut, a ``split<i>-head``
and a ``split<i>-tail`` variant whose recipe step ``split`` holds the evidence: the cut tensor,
its size in bytes, and head/tail latency measured on the packing host. :func:`plan_from_manifest`
reads them into a :class:`SplitPlan`.

As a **requester**, :class:`Splitter` picks, for every request, the cut with the least expected
latency on the link as it is now (:class:`~.linkstats.LinkEstimate`)::

    expected = head_ms (measured here) + fixed cost of an offload round trip (at least the RTT)
               + (cut bytes + output bytes) * 8 / bandwidth
               + tail_ms (the worker's reported service time for that cut, else the manifest's)

with two degenerate cuts beside the real ones: ``device-only`` (the full model here) and
``server-only`` (plain offload of the input). It runs the head, sends the cut tensor (int8 with
a per-tensor scale and zero point when ``split_int8``) through the offload link, and returns the
worker's outputs as served by ``split:<cut>@<worker>``. Anything else (no answer in time, an
error, a broken link) runs the full model locally: a request is never lost.

As a **worker**, :meth:`Splitter.tail` runs the tail variant of a named cut on the tensor sent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..bundle.manifest import Manifest, TensorSpec
from ..errors import EdgekitError, InputError, RuntimeBackendError, TransportError, first_line
from ..runtime.loader import load_runner
from .linkstats import LinkEstimate
from .offload import InferFn, OffloadLink, Served, Timings

log = logging.getLogger("edgekit_agent.split")
SERVER_ONLY, DEVICE_ONLY = "server-only", "device-only"
CALIBRATION_RUNS = 5
_ITEM_BYTES = {"float32": 4, "float16": 2, "int8": 1, "uint8": 1, "int16": 2, "int32": 4,
               "int64": 8, "bool": 1, "float64": 8}


@dataclass(frozen=True)
class SplitCut:
    """One cut of the bundle: the tensor, its two variants and the packer's evidence."""

    name: str
    head: str
    tail: str
    cut_bytes: int
    head_ms: float
    tail_ms: float


@dataclass(frozen=True)
class SplitPlan:
    cuts: tuple[SplitCut, ...]
    input_bytes: int
    output_bytes: int
    full_ms: float | None  # the primary variant's packing-host latency

    def cut(self, name: str) -> SplitCut | None:
        return next((c for c in self.cuts if c.name == name), None)


def tensor_bytes(spec: TensorSpec) -> int:
    return _ITEM_BYTES.get(spec.dtype, 4) * int(np.prod([max(d, 1) for d in spec.shape]))


def plan_from_manifest(manifest: Manifest) -> SplitPlan | None:
    """The cuts a bundle carries (None when it has no split variants)."""
    parts: dict[str, dict[str, Any]] = {}
    for v in manifest.variants:
        step = next((s for s in v.recipe if s.step == "split"), None)
        if step is None or not isinstance(step.params.get("cut"), str):
            continue
        parts.setdefault(step.params["cut"], {})[step.params.get("part")] = (v.name, step.params)
    cuts = []
    for name, got in parts.items():
        if "head" not in got or "tail" not in got:
            continue
        params = got["head"][1]
        cuts.append(SplitCut(name, got["head"][0], got["tail"][0], int(params["cut_bytes"]),
                             float(params["head_ms"]), float(params["tail_ms"])))
    if not cuts:
        return None
    primary = manifest.primary
    return SplitPlan(tuple(cuts), sum(map(tensor_bytes, primary.inputs)),
                     sum(map(tensor_bytes, primary.outputs)), primary.latency_ms)


def quantize_cut(a: np.ndarray) -> tuple[np.ndarray, float, int]:
    """Per-tensor affine int8 (the cut tensor on the wire), its scale and zero point."""
    lo, hi = min(float(a.min()), 0.0), max(float(a.max()), 0.0)
    scale = (hi - lo) / 255.0 or 1.0
    zero_point = int(round(-128 - lo / scale))
    q = np.clip(np.round(a / scale) + zero_point, -128, 127).astype(np.int8)
    return q, scale, zero_point


def dequantize_cut(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return ((q.astype(np.float32) - zero_point) * scale).astype(np.float32)


def travel_bytes(cut: SplitCut, int8: bool) -> int:
    return cut.cut_bytes // 4 + 8 if int8 else cut.cut_bytes


def expected_ms(head_ms: float, tail_ms: float, sent_bytes: int, output_bytes: int,
                link: LinkEstimate) -> float:
    fixed, bandwidth = link.fixed_ms(), link.bandwidth_or_default()
    return head_ms + fixed + (sent_bytes + output_bytes) * 8.0 / bandwidth * 1e3 + tail_ms


def with_simulated_slowdown(fn: InferFn, factor: float,
                            reference_ms: float | None = None) -> InferFn:
    """``fn`` on hardware ``factor`` times slower than the packing host: a run lasts ``factor``
    times ``reference_ms`` (the bundle's measured latency of that model or part).

    Without a reference it sleeps ``factor - 1`` times the fastest run seen: on a shared host a
    run stretched by another process would otherwise be stretched ``factor``-fold.
    """
    if factor <= 1.0:
        return fn
    fastest = [float("inf")]

    def slowed(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        out = fn(inputs)
        took = time.perf_counter() - t0
        fastest[0] = min(fastest[0], took)
        if reference_ms:
            time.sleep(max(0.0, factor * reference_ms / 1e3 - took))
        else:
            time.sleep((factor - 1.0) * fastest[0])
        return out

    return slowed


class _Part:
    """One head or tail variant, loaded on first use (its own runner beside the agent's)."""

    def __init__(self, bundle: Any, variant: str, threads: int | None) -> None:
        self.spec, self.runner = load_runner(bundle, variant, threads)
        self._lock = threading.Lock()  # runners are not thread-safe

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = []
        for spec in self.spec.inputs:
            a = inputs.get(spec.name)
            if a is None or tuple(a.shape) != tuple(spec.shape) or a.dtype.kind != "f":
                raise InputError(f"split part {self.spec.name}: input {spec.name!r} must be "
                                 f"float {list(spec.shape)}")
            arrays.append(a)
        with self._lock:
            try:
                outputs = self.runner(arrays)
            except Exception as exc:  # a runtime's own exception types: one clear error
                raise RuntimeBackendError(f"split part {self.spec.name} failed: "
                                          f"{first_line(exc)}") from None
        return {s.name: o for s, o in zip(self.spec.outputs, outputs)}


class Splitter:
    """Head here, tail there (see the module docstring). ``agent`` gives the active bundle;
    ``local`` runs the full model here (the fallback and the device-only cut)."""

    def __init__(self, agent: Any, link: OffloadLink, *, local: InferFn, int8: bool = False,
                 slowdown: float = 1.0) -> None:
        self.agent, self.link, self.local = agent, link, local
        self.int8, self.slowdown = int8, slowdown
        self.counts = {"split": 0, "split_fallbacks": 0, "device_only": 0, "server_only": 0}
        self._lock = threading.Lock()
        self._bundle_id: str | None = None
        self._plan: SplitPlan | None = None
        self._parts: dict[str, _Part] = {}
        self._slow: dict[str, InferFn] = {}
        self.head_ms: dict[str, Timings] = {}
        self.tail_ms: dict[str, Timings] = {}
        self.full_local = Timings()
        self.full_remote = Timings()

    @property
    def plan(self) -> SplitPlan | None:
        self._refresh()
        return self._plan

    def _refresh(self) -> None:
        if self.agent.bundle_id == self._bundle_id:
            return
        with self._lock:
            self._bundle_id, self._plan = self.agent.bundle_id, plan_from_manifest(self.agent.manifest)
            self._parts.clear()
            self._slow.clear()
            self.head_ms.clear()
            self.tail_ms.clear()

    def _part(self, variant: str) -> _Part:
        part = self._parts.get(variant)
        if part is None:
            with self._lock:  # one session per part, also when two requests race to load it
                part = self._parts.get(variant)
                if part is None:
                    part = self._parts[variant] = _Part(self.agent.bundle, variant,
                                                        self.agent.threads)
        return part

    def _slowed(self, variant: str) -> InferFn:
        fn = self._slow.get(variant)
        if fn is None:
            part = self._part(variant)
            fn = self._slow[variant] = with_simulated_slowdown(
                part, self.slowdown, self.agent.manifest.variant(variant).latency_ms)
        return fn

    def _head(self, cut: SplitCut, inputs: dict[str, np.ndarray]) -> np.ndarray:
        t0 = time.perf_counter()
        out = self._slowed(cut.head)(inputs)[cut.name]
        self.head_ms.setdefault(cut.name, Timings()).add((time.perf_counter() - t0) * 1e3)
        return out

    def _full_local(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        out = self.local(inputs)
        self.full_local.add((time.perf_counter() - t0) * 1e3)
        return out

    def preload_tails(self) -> None:
        """Load every tail now (a worker): the first split request must not pay for it."""
        plan = self.plan
        for cut in plan.cuts if plan is not None else ():
            self._part(cut.tail)

    def calibrate(self, inputs: dict[str, np.ndarray]) -> None:
        """Measure every head and the full model here, as the device runs them."""
        plan = self.plan
        if plan is None:
            return
        for _ in range(CALIBRATION_RUNS):
            self._full_local(inputs)
            for cut in plan.cuts:
                self._head(cut, inputs)

    # -- choosing --

    def estimates(self) -> dict[str, float]:
        """Expected latency (ms) of every cut on the link as estimated now."""
        plan, link = self.plan, self.link.estimate
        if plan is None:
            return {}
        scale = self.slowdown  # packing-host figures, as slow as this device, until measured
        full_here = self.full_local.p50() or (plan.full_ms or 0.0) * scale
        full_there = self.full_remote.p50() or plan.full_ms or 0.0
        table = {DEVICE_ONLY: full_here,
                 SERVER_ONLY: expected_ms(0.0, full_there, plan.input_bytes, plan.output_bytes, link)}
        for cut in plan.cuts:
            head = _p50(self.head_ms.get(cut.name)) or cut.head_ms * scale
            tail = _p50(self.tail_ms.get(cut.name)) or cut.tail_ms
            table[cut.name] = expected_ms(head, tail, travel_bytes(cut, self.int8),
                                          plan.output_bytes, link)
        return table

    def choose(self) -> tuple[str, float]:
        table = self.estimates()
        if not table:
            return SERVER_ONLY, 0.0
        name = min(table, key=table.__getitem__)
        return name, table[name]

    # -- requester --

    def infer(self, inputs: dict[str, np.ndarray], cut: str | None = None) -> Served:
        """Outputs for ``inputs`` by the best cut now (or the ``cut`` given)."""
        name = cut or self.choose()[0]
        plan = self.plan
        if name == DEVICE_ONLY:
            self._count("device_only")
            return Served(self._full_local(inputs), self.link.topics.device)
        split = plan.cut(name) if plan is not None else None
        if split is None:
            self._count("server_only")
            served = self.link.infer(inputs, local_ms=self.full_local.p50())
            if served.service_ms is not None:
                self.full_remote.add(served.service_ms)
            return served
        return self._split(split, inputs)

    def _split(self, cut: SplitCut, inputs: dict[str, np.ndarray]) -> Served:
        self._count("split")
        try:
            mid = self._head(cut, inputs)
        except EdgekitError as exc:
            log.warning("split head %s failed: %s", cut.head, exc)
            return self._fallback(inputs)
        header: dict[str, Any] = {"cut": cut.name}
        if self.int8:
            mid, scale, zero_point = quantize_cut(mid)
            header.update(scale=scale, zero_point=zero_point)
        remote = self.link.request({cut.name: mid}, split=header, local_ms=self.full_local.p50())
        if remote is None:
            return self._fallback(inputs)
        if remote.service_ms is not None:
            self.tail_ms.setdefault(cut.name, Timings()).add(remote.service_ms)
        return Served(dict(remote), f"split:{cut.name}@{remote.served_by}", remote.service_ms)

    def _fallback(self, inputs: dict[str, np.ndarray]) -> Served:
        self._count("split_fallbacks")
        return Served(self._full_local(inputs), self.link.topics.device)

    def _count(self, key: str) -> None:
        with self._lock:
            self.counts[key] += 1

    # -- worker --

    def tail(self, split: dict[str, Any], tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the tail of ``split["cut"]`` on the tensor sent; bad input is a TransportError."""
        plan = self.plan
        name = split.get("cut")
        cut = plan.cut(name) if plan is not None and isinstance(name, str) else None
        if cut is None:
            raise TransportError(f"no split variant for cut {name!r:.80} in this bundle")
        if set(tensors) != {cut.name}:
            raise TransportError(f"split work for {cut.name!r} must carry exactly that tensor")
        mid = tensors[cut.name]
        if "scale" in split:
            if mid.dtype != np.int8:
                raise TransportError(f"split work for {cut.name!r}: int8 scale on a {mid.dtype} tensor")
            mid = dequantize_cut(mid, float(split["scale"]), int(split["zero_point"]))
        try:
            return self._slowed(cut.tail)({cut.name: mid})
        except InputError as exc:
            raise TransportError(str(exc)) from None

    def stats(self) -> dict[str, Any]:
        plan = self.plan
        choice, expected = self.choose()
        return {"cuts": len(plan.cuts) if plan else 0, "int8": self.int8, "choice": choice,
                "expected_ms": round(expected, 3), **self.counts}


def _p50(t: Timings | None) -> float | None:
    return None if t is None else t.p50()


def make_splitter(agent: Any, link: OffloadLink, *, local: InferFn, int8: bool,
                  slowdown: float) -> Splitter | None:
    """A splitter when the active bundle has split variants (None otherwise)."""
    if plan_from_manifest(agent.manifest) is None:
        return None
    return Splitter(agent, link, local=local, int8=int8, slowdown=slowdown)


SplitTail = Callable[[dict[str, Any], dict[str, np.ndarray]], dict[str, np.ndarray]]
