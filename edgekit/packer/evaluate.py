"""Evaluation: run models on held-out data, compare with the float model, time them.

All figures come from running the models: per-output SQNR and cosine similarity, top-1
agreement for classifiers, task accuracy with labels, and warm latency percentiles measured
with float and candidate interleaved so that machine noise hits both alike.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit_agent.bundle.manifest import Fidelity, OutputFidelity
from edgekit_agent.runtime import Runner, load_backend

from ..dataset import Dataset
from ..errors import ModelError


def make_runner(model: bytes, fmt: str, threads: int | None = None, **backend: Any) -> Runner:
    """``backend``: load_backend options, e.g. a target family's ``host_backend``."""
    return Runner(load_backend(model, fmt, threads=threads, **backend))


def run_all(runner: Runner, data: Dataset) -> list[np.ndarray]:
    """Outputs over the whole dataset, one stacked array per output."""
    per_output: list[list[np.ndarray]] = [[] for _ in runner.outputs]
    try:
        for sample in data.samples():
            for acc, out in zip(per_output, runner(sample), strict=True):
                acc.append(np.asarray(out, dtype=np.float32))
    except (ValueError, RuntimeError) as exc:
        raise ModelError(f"inference failed: {str(exc).splitlines()[0][:200]}") from None
    return [np.concatenate(a) for a in per_output]


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    noise = float(np.sum((ref.astype(np.float64) - test) ** 2))
    signal = float(np.sum(ref.astype(np.float64) ** 2))
    if noise == 0.0:
        return float("inf")
    return 10.0 * np.log10(max(signal, 1e-30) / noise)


def cosine(ref: np.ndarray, test: np.ndarray) -> float:
    a, b = (
        ref.reshape(len(ref), -1).astype(np.float64),
        test.reshape(len(test), -1).astype(np.float64),
    )
    num = np.sum(a * b, axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(np.where(den > 0, num / np.maximum(den, 1e-30), 1.0)))


def is_classifier(out: np.ndarray) -> bool:
    return (
        out.ndim >= 2 and out.shape[-1] > 1 and out.reshape(len(out), -1).shape[1] == out.shape[-1]
    )


def accuracy(out: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(out.reshape(len(out), -1).argmax(axis=1) == labels))


def compare(names: Sequence[str], ref: list[np.ndarray], test: list[np.ndarray], data: Dataset,
            labels: np.ndarray | None, ref_accuracy: float | None) -> Fidelity:
    outputs = {n: OutputFidelity(sqnr_db=sqnr_db(r, t), cosine=cosine(r, t))
               for n, r, t in zip(names, ref, test)}
    top1 = float(np.mean(ref[0].reshape(len(ref[0]), -1).argmax(1) ==
                         test[0].reshape(len(test[0]), -1).argmax(1))) if is_classifier(ref[0]) else None
    acc = accuracy(test[0], labels) if labels is not None and is_classifier(test[0]) else None
    drop = (ref_accuracy - acc) if acc is not None and ref_accuracy is not None else None
    return Fidelity(outputs, top1, acc, drop, len(data), data.synthetic)


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p95_ms: float
    ref_p50_ms: float
    ratio: float  # median over adjacent (candidate, reference) call pairs of their time ratio
    source: str = "measured-host"  # or measured-device, estimated (edgekit.packer.latency_model)


def interleaved_latency(candidate: Runner, reference: Runner, sample: list[np.ndarray],
                        min_runs: int = 60, min_seconds: float = 0.3,
                        max_runs: int = 3000) -> Latency:
    """Warm p50/p95 of candidate and reference, alternating calls in one loop.

    Fast models get more runs (until ``min_seconds`` have passed) so that the verdict
    "slower than float" rests on enough samples to be stable on a shared machine.
    """
    for _ in range(5):
        candidate(sample)
        reference(sample)
    cand: list[float] = []
    ref: list[float] = []
    start = time.perf_counter()
    i = 0
    while i < max_runs and (i < min_runs or time.perf_counter() - start < min_seconds):
        pairs = ((candidate, cand), (reference, ref)) if i % 2 == 0 else ((reference, ref),
                                                                          (candidate, cand))
        for runner, acc in pairs:
            t0 = time.perf_counter()
            runner(sample)
            acc.append(time.perf_counter() - t0)
        i += 1
    ms = lambda xs, q: float(np.percentile(xs, q) * 1e3)  # noqa: E731
    # Load on a shared machine drifts over seconds; adjacent calls see the same load, so the
    # median of per-pair ratios is steadier than a ratio of two medians.
    ratio = float(np.median(np.asarray(cand) / np.asarray(ref)))
    return Latency(ms(cand, 50), ms(cand, 95), ms(ref, 50), ratio)
