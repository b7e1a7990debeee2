"""`edgekit-agent bench MODEL`: warm latency of a model file on this device, in the runtime the
agent itself uses. The host packer's ``--profile-on ssh://…`` runs it on the real board."""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle.manifest import TensorSpec
from ..errors import InputError, ModelError
from .backends import load_backend

TFLITE_IDENTIFIER = b"TFL3"
WARMUP_RUNS = 3


@dataclass(frozen=True)
class BenchResult:
    format: str
    runtime: str
    runs: int
    p50_ms: float
    p95_ms: float
    mean_ms: float
    machine: str
    model_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_format(data: bytes) -> str:
    """tflite (by its file identifier) or onnx (anything else ONNX Runtime then has to load)."""
    return "tflite" if data[4:8] == TFLITE_IDENTIFIER else "onnx"


def bench_file(path: Path, runs: int = 50, threads: int | None = None) -> BenchResult:
    if runs < 1:
        raise InputError(f"--runs must be at least 1, not {runs}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    fmt = model_format(data)
    backend = load_backend(data, fmt, threads=threads)
    feeds = [_zeros(s) for s in backend.inputs]
    try:
        for _ in range(WARMUP_RUNS):
            backend.run(feeds)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            backend.run(feeds)
            times.append(time.perf_counter() - t0)
    except (ValueError, RuntimeError) as exc:
        raise ModelError(f"{path}: inference failed ({str(exc).splitlines()[0][:200]})") from None
    ms = np.asarray(times) * 1e3
    return BenchResult(format=fmt, runtime=backend.name, runs=runs,
                       p50_ms=round(float(np.percentile(ms, 50)), 6),
                       p95_ms=round(float(np.percentile(ms, 95)), 6),
                       mean_ms=round(float(ms.mean()), 6), machine=platform.machine(),
                       model_bytes=len(data))


def _zeros(spec: TensorSpec) -> np.ndarray:
    """Zeros of the input's shape (a dynamic dim as 1): timing does not depend on values."""
    return np.zeros([d if d > 0 else 1 for d in spec.shape], dtype=np.dtype(spec.dtype))
