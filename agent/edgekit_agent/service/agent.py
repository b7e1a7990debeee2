"""`Agent`: float-in/float-out inference on the active bundle, with validation and live stats.

The hot path does only what a hand-written caller would do (validate, quantize, invoke,
dequantize) plus two clock reads and two deque appends; everything else (percentiles, rates)
is computed when ``stats()`` is asked for. One lock serialises the interpreter, which is not
thread-safe; model switches build the new runner first and swap one reference.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle.manifest import Manifest, TensorSpec, Variant, bundle_id
from ..bundle.reader import Bundle, open_bundle
from ..config import AgentConfig
from ..errors import BundleError, EdgekitError, InputError, RuntimeBackendError, first_line
from ..runtime.loader import load_runner
from ..runtime.runner import Runner
from ..store.slots import BundleStore, EventSink

Inputs = Mapping[str, Any] | Sequence[Any] | np.ndarray


class _InputCheck:
    """Validation of one input, precomputed so the hot path is a few comparisons."""

    __slots__ = ("name", "shape", "batchless", "dynamic", "kinds", "expected")

    def __init__(self, spec: TensorSpec) -> None:
        self.name = spec.name
        self.shape = tuple(spec.shape)
        self.dynamic = any(d < 0 for d in spec.shape)
        self.batchless = self.shape[1:] if self.shape and self.shape[0] in (1, -1) else None
        takes_float = spec.scale is not None or spec.dtype.startswith(("float", "bfloat"))
        self.kinds = "fiu" if takes_float else ("b" if spec.dtype == "bool" else "iu")
        self.expected = "real numbers" if takes_float else spec.dtype

    def __call__(self, value: Any) -> np.ndarray:
        a = value if type(value) is np.ndarray else _as_array(self.name, value)
        if a.dtype.kind not in self.kinds:
            raise InputError(f"input {self.name!r}: dtype {a.dtype} not accepted (expected {self.expected})")
        if a.shape == self.shape:
            return a
        if self.dynamic and _fits(a.shape, self.shape):
            return a
        if self.batchless is not None and _fits(a.shape, self.batchless):
            return a[None]
        raise InputError(f"input {self.name!r}: shape {list(a.shape)} does not match "
                         f"{list(self.shape)} (-1 = any)")


def _as_array(name: str, value: Any) -> np.ndarray:
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise InputError(f"input {name!r} is not a rectangular numeric array: {exc}") from None


def _fits(shape: tuple[int, ...], spec: tuple[int, ...]) -> bool:
    return len(shape) == len(spec) and all(s < 0 or s == d for d, s in zip(shape, spec))


@dataclass(frozen=True)
class _Loaded:
    bundle: Bundle
    bundle_id: str
    variant: Variant
    runner: Runner
    threads: int | None
    checks: tuple[_InputCheck, ...]
    input_names: frozenset[str]
    output_names: tuple[str, ...]


def _build(bundle: Bundle, variant: str | None, threads: int | None) -> _Loaded:
    v, runner = load_runner(bundle, variant, threads)
    checks = tuple(_InputCheck(s) for s in v.inputs)
    return _Loaded(bundle=bundle, bundle_id=bundle_id(bundle.manifest), variant=v, runner=runner,
                   threads=threads, checks=checks, input_names=frozenset(c.name for c in checks),
                   output_names=tuple(s.name for s in v.outputs))


class Agent:
    """Runs the active bundle of a store (a ``BundleStore`` or its folder) or one bundle file."""

    def __init__(self, store_or_bundle_path: BundleStore | str | Path, *,
                 public_key: str | Path | None = None, threads: int | None = None,
                 variant: str | None = None, latency_window: int = 2048,
                 rate_window_s: float = 10.0) -> None:
        self.public_key = public_key
        self.store, self._bundle_path = _store_or_path(store_or_bundle_path, public_key)
        self._lock = threading.Lock()
        self._latencies: deque[float] = deque(maxlen=latency_window)
        self._ends: deque[float] = deque(maxlen=latency_window)
        self._rate_window_s = rate_window_s
        self._count = self._errors = self._rejected = 0
        self._busy = 0.0
        self._started = time.monotonic()
        if self.store is not None:
            self.store.note_start()
            self._finalizer = weakref.finalize(self, self.store.note_stop)
        self._loaded = self._load(variant, threads, strict_variant=True)

    @classmethod
    def from_config(cls, config: AgentConfig, *, on_event: EventSink | None = None) -> Agent:
        """The store and agent an ``agent.toml`` describes (``on_event`` gets installs/rollbacks)."""
        store = BundleStore(config.store.root, public_key=config.store.public_key,
                            max_failures=config.store.max_failures,
                            failure_window_s=config.store.failure_window_s, on_event=on_event)
        return cls(store, public_key=config.store.public_key, threads=config.runtime.threads,
                   variant=config.runtime.variant)

    # --- loading --------------------------------------------------------------------------

    def _open(self) -> Bundle:
        if self.store is not None:
            return self.store.active(self.public_key)
        return open_bundle(self._bundle_path, self.public_key)

    def _load(self, variant: str | None, threads: int | None, *, strict_variant: bool) -> _Loaded:
        try:
            bundle = self._open()
        except EdgekitError as exc:
            return self._fall_back(exc, variant, threads)
        name = _pick_variant(bundle.manifest, variant, strict_variant)
        try:
            return _build(bundle, name, threads)
        except EdgekitError as exc:
            return self._fall_back(exc, variant, threads)

    def _fall_back(self, exc: EdgekitError, variant: str | None, threads: int | None) -> _Loaded:
        """The active bundle cannot be opened or loaded: roll back once, if there is a previous one."""
        if self.store is None or self.store.previous_slot() is None:
            raise exc
        self.store.rollback(f"active bundle failed to load: {exc}", automatic=True)
        bundle = self._open()
        return _build(bundle, _pick_variant(bundle.manifest, variant, False), threads)

    def _swap(self, loaded: _Loaded) -> None:
        with self._lock:
            self._loaded = loaded
            self._latencies.clear()  # percentiles describe the model that runs now
            self._ends.clear()

    def reset_latency_window(self) -> None:
        """Forget the latencies seen so far (counts stay): e.g. after a switch has settled."""
        with self._lock:
            self._latencies.clear()
            self._ends.clear()

    def set_variant(self, name: str | None) -> None:
        """Switch to a variant of the active bundle (None = the primary)."""
        current = self._loaded
        self._swap(_build(current.bundle, name, current.threads))

    def set_threads(self, threads: int | None) -> None:
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise InputError(f"threads must be a positive integer, got {threads!r}")
        current = self._loaded
        self._swap(_build(current.bundle, current.variant.name, threads))

    def reload(self) -> str:
        """Re-open the active bundle (after an install or rollback); keeps the variant if it exists."""
        current = self._loaded
        self._swap(self._load(current.variant.name, current.threads, strict_variant=False))
        return self._loaded.bundle_id

    def close(self) -> None:
        """A clean stop: the store will not count this run as a crash."""
        if self.store is not None:
            self._finalizer()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- inference ------------------------------------------------------------------------

    def infer(self, inputs: Inputs) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        loaded = self._loaded
        try:
            arrays = self._prepare(loaded, inputs)
        except InputError:
            self._rejected += 1
            raise
        with self._lock:
            try:
                outputs = loaded.runner(arrays)
            except Exception as exc:  # any runtime failure counts against the bundle
                self._errors += 1
                failure = f"inference failed: {type(exc).__name__}: {first_line(exc)}"
            else:
                t1 = time.perf_counter()
                self._count += 1
                self._busy += t1 - t0
                self._latencies.append(t1 - t0)
                self._ends.append(t1)
                return dict(zip(loaded.output_names, outputs))
        self._on_failure(failure)
        raise RuntimeBackendError(failure)

    def prepare(self, inputs: Inputs) -> dict[str, np.ndarray]:
        """Validated inputs by name (what ``infer`` would run), for sending to another device."""
        loaded = self._loaded
        try:
            arrays = self._prepare(loaded, inputs)
        except InputError:
            self._rejected += 1
            raise
        return {c.name: a for c, a in zip(loaded.checks, arrays)}

    @staticmethod
    def _prepare(loaded: _Loaded, inputs: Inputs) -> list[np.ndarray]:
        checks = loaded.checks
        if type(inputs) is dict or isinstance(inputs, Mapping):
            if inputs.keys() != loaded.input_names:
                raise InputError(_name_mismatch(inputs.keys(), loaded))
            return [check(inputs[check.name]) for check in checks]
        if isinstance(inputs, np.ndarray) and len(checks) == 1:
            return [checks[0](inputs)]
        if isinstance(inputs, (str, bytes)) or not isinstance(inputs, Sequence):
            raise InputError(f"inputs must be a mapping of name to array or a sequence of "
                             f"{len(checks)} arrays, not {type(inputs).__name__}")
        if len(inputs) != len(checks):
            raise InputError(f"model takes {len(checks)} inputs "
                             f"({', '.join(c.name for c in checks)}), got {len(inputs)}")
        return [check(value) for check, value in zip(checks, inputs)]

    def _on_failure(self, reason: str) -> None:
        if self.store is not None and self.store.record_failure(reason):
            self.reload()  # the store rolled back: run what is active now

    # --- introspection --------------------------------------------------------------------

    @property
    def manifest(self) -> Manifest:
        return self._loaded.bundle.manifest

    @property
    def bundle(self) -> Bundle:
        return self._loaded.bundle

    @property
    def bundle_id(self) -> str:
        return self._loaded.bundle_id

    @property
    def variant(self) -> str:
        return self._loaded.variant.name

    @property
    def threads(self) -> int | None:
        return self._loaded.threads

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._loaded.variant.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._loaded.variant.outputs

    def stats(self) -> dict[str, Any]:
        with self._lock:
            latencies = np.array(self._latencies, dtype=np.float64)
            ends = list(self._ends)
            count, errors, rejected, busy = self._count, self._errors, self._rejected, self._busy
            loaded = self._loaded
        p50, p95, p99 = ((np.percentile(latencies, [50, 95, 99]) * 1e3).tolist() if latencies.size
                         else (None, None, None))
        return {"count": count, "errors": errors, "rejected": rejected, "window": int(latencies.size),
                "latency_ms": {"p50": p50, "p95": p95, "p99": p99},
                "inferences_per_s": self._rate(ends), "busy_s": busy,
                "uptime_s": time.monotonic() - self._started, "bundle_id": loaded.bundle_id,
                "name": loaded.bundle.manifest.name, "version": loaded.bundle.manifest.version,
                "variant": loaded.variant.name, "threads": loaded.threads}

    def _rate(self, ends: list[float]) -> float:
        now = time.perf_counter()
        horizon = now - self._rate_window_s
        recent = [t for t in ends if t >= horizon]
        if not recent:
            return 0.0
        if len(ends) == self._ends.maxlen and ends[0] >= horizon:  # the window holds fewer seconds
            return len(recent) / max(now - ends[0], 1e-9)
        span = min(self._rate_window_s, time.monotonic() - self._started)
        return len(recent) / max(span, 1e-9)


def _pick_variant(manifest: Manifest, variant: str | None, strict: bool) -> str | None:
    if variant is None:
        return None
    if strict:
        manifest.variant(variant)  # raises BundleError naming the variants there are
        return variant
    return variant if variant in {v.name for v in manifest.all_variants} else None


def _name_mismatch(given: Any, loaded: _Loaded) -> str:
    given = set(map(str, given))
    unknown = sorted(given - loaded.input_names)
    missing = sorted(loaded.input_names - given)
    parts = []
    if unknown:
        parts.append(f"unknown input(s) {', '.join(map(repr, unknown))}")
    if missing:
        parts.append(f"missing input(s) {', '.join(map(repr, missing))}")
    return "; ".join(parts) + f" (model inputs: {', '.join(c.name for c in loaded.checks)})"


def _store_or_path(target: BundleStore | str | Path,
                   public_key: str | Path | None) -> tuple[BundleStore | None, Path | None]:
    if isinstance(target, BundleStore):
        return target, None
    path = Path(target)
    if path.is_dir():
        return BundleStore(path, public_key=public_key), None
    if path.is_file():
        return None, path
    raise BundleError(f"{path}: neither a bundle store folder nor a bundle file")
