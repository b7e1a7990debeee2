"""TFLM against LiteRT on the same inputs: the largest difference, as evidence in the report."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgekit_agent.bundle.manifest import TensorSpec
from edgekit_agent.bundle.modelcheck import check_tflite
from edgekit_agent.runtime import load_backend, quantize

from ...dataset import Dataset
from ...errors import CalibrationError
from .ops import captured_stderr

COMPARE_SAMPLES = 16  # evidence only: the packer measures fidelity in TFLM itself


def compare_tflm_litert(model: bytes, inputs: Dataset | Sequence[np.ndarray] | np.ndarray,
                        limit: int = COMPARE_SAMPLES, arena_size: int | None = None) -> float:
    """Largest |TFLM − LiteRT| over all outputs and samples: in quantization steps (LSB) for
    integer outputs, in output units for float outputs. ``inputs`` is a Dataset or one
    (N, *sample_shape) array per model input; float data is quantized for integer inputs."""
    check_tflite(model, allow_sparse=False)
    litert = load_backend(model, "tflite")
    arena = arena_size or max(10 * len(model), 1 << 22)
    with captured_stderr():  # the backend probes input/output indices until TFLM complains
        tflm = load_backend(model, "tflite", prefer_micro=True, arena_size=arena)
    arrays = _input_arrays(inputs, len(litert.inputs))
    worst = 0.0
    for i in range(min(limit, min(len(a) for a in arrays))):
        feed = [_as_input(a[i:i + 1], spec) for a, spec in zip(arrays, litert.inputs, strict=True)]
        for a, b in zip(litert.run(feed), tflm.run(feed), strict=True):
            diff = np.abs(
                np.asarray(a, np.float64) - np.asarray(b, np.float64).reshape(np.shape(a))
            )
            worst = max(worst, float(diff.max(initial=0.0)))
    return worst


def _input_arrays(inputs: Dataset | Sequence[np.ndarray] | np.ndarray,
                  n_inputs: int) -> list[np.ndarray]:
    # A Dataset's own sample() casts to its specs' dtypes; read its arrays as given instead.
    arrays = list(inputs.arrays) if isinstance(inputs, Dataset) else (
        [inputs] if isinstance(inputs, np.ndarray) else list(inputs))
    if len(arrays) != n_inputs:
        raise CalibrationError(f"the model has {n_inputs} input(s), got {len(arrays)} array(s)")
    return [np.asarray(a) for a in arrays]


def _as_input(x: np.ndarray, spec: TensorSpec) -> np.ndarray:
    batch_one = bool(spec.shape) and spec.shape[0] == 1
    fits = x.shape[1:] == tuple(spec.shape[1:]) if batch_one else x.size == int(np.prod(spec.shape))
    if not fits:
        raise CalibrationError(f"input {spec.name!r} takes shape {list(spec.shape)}, "
                               f"got samples of shape {list(x.shape[1:])}")
    x = x.reshape(spec.shape)
    if np.dtype(spec.dtype).kind in "iu" and x.dtype.kind == "f":
        return quantize(x, spec)
    return x.astype(spec.dtype, copy=False)


def random_inputs(specs: Sequence[TensorSpec], n: int = 16, seed: int = 0) -> Dataset:
    """Seeded samples over each input's whole range (integers) or [0, 1) (floats)."""
    rng = np.random.default_rng(seed)
    arrays = []
    for s in specs:
        shape = (n, *s.shape[1:]) if s.shape and s.shape[0] == 1 else (n, *s.shape)
        dt = np.dtype(s.dtype)
        if dt.kind in "iu":
            info = np.iinfo(dt)
            arrays.append(rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dt))
        else:
            arrays.append(rng.random(shape, dtype=np.float32).astype(dt))
    return Dataset(tuple(specs), tuple(arrays), synthetic=True, source="random")


