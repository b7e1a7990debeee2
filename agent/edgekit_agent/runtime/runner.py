"""``Runner``: float in, float out over a backend, quantizing inputs and dequantizing outputs
with the specs the model declares (the manifest's copy of the same)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..bundle.manifest import TensorSpec
from .backends import Backend


@dataclass
class Runner:
    """Float in, float out: quantizes inputs and dequantizes outputs per the model's specs."""

    backend: Backend

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.backend.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.backend.outputs

    def __post_init__(self) -> None:
        # Converters built once per model: after a long invoke the caches are cold, and every
        # line of Python left on the per-call path (dtype lookups, iinfo) costs misses.
        self._to_model = [quantizer(s) for s in self.backend.inputs]
        self._from_model = [dequantizer(s) for s in self.backend.outputs]

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        raw = self.backend.run([q(a) for q, a in zip(self._to_model, inputs)])
        return [d(a) for d, a in zip(self._from_model, raw)]


def quantize(x: np.ndarray, spec: TensorSpec) -> np.ndarray:
    return quantizer(spec)(x)


def dequantize(q: np.ndarray, spec: TensorSpec) -> np.ndarray:
    return dequantizer(spec)(q)


def quantizer(spec: TensorSpec) -> Callable[[Any], np.ndarray]:
    """x -> clip(round(x / scale) + zero_point) in the spec's integer dtype (a cast if not quantized)."""
    dtype = np.dtype(spec.dtype)
    if spec.scale is None:
        return lambda x: np.asarray(x, dtype=dtype)
    scale, zero_point = np.float32(spec.scale), spec.zero_point
    lo, hi = np.iinfo(dtype).min, np.iinfo(dtype).max

    def to_model(x: Any) -> np.ndarray:
        # One float32 scratch buffer updated in place: fresh temporaries per step cost more
        # cache misses than the arithmetic on large inputs.
        q = np.asarray(np.divide(x, scale, dtype=np.float32))
        np.rint(q, out=q)
        q += zero_point
        np.clip(q, lo, hi, out=q)
        return q.astype(dtype)
    return to_model


def dequantizer(spec: TensorSpec) -> Callable[[np.ndarray], np.ndarray]:
    """q -> (q - zero_point) * scale as float32 (a float32 cast if not quantized)."""
    if spec.scale is None:
        return lambda q: np.asarray(q, dtype=np.float32)
    scale, zero_point = np.float32(spec.scale), spec.zero_point
    return lambda q: (q.astype(np.float32) - zero_point) * scale
