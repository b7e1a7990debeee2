"""Weight compression: magnitude pruning, k-means clustering, float16 storage.

The transforms are plain numpy functions on weight arrays, shared by the ONNX and TFLite paths.
Pruning and clustering leave the tensor float32 and the file the same size: they pay off in the
bundle archive (deflate packs runs of zeros and a 16-value alphabet well) and after int8
quantization (zeros stay 0, k centroids stay k codes per channel). ``compress_tflite`` applies
them to a TFLite model; float16 there means float16 constants + DEQUANTIZE ops, the layout the
TFLite converter writes, so the file halves and LiteRT still runs it.

Which tensors are weights (``is_weight``): the kernel input of conv / dense / matmul ops
(ONNX or TFLite op names), constant, floating point, at least 2-D. Biases, batch-norm
parameters and shape tensors are never pruned or clustered.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from ..errors import ConfigError, ModelError
from ..tflite import model as tm

# op type -> input positions that hold the weight (kernel) tensor
WEIGHT_INPUTS: dict[str, tuple[int, ...]] = {
    "CONV_2D": (1,), "DEPTHWISE_CONV_2D": (1,), "CONV_3D": (1,), "TRANSPOSE_CONV": (1,),
    "FULLY_CONNECTED": (1,), "BATCH_MATMUL": (0, 1), "EMBEDDING_LOOKUP": (1,),
    "Conv": (1,), "ConvTranspose": (1,), "Gemm": (0, 1), "MatMul": (0, 1),
}
FLOAT16_MAX = float(np.finfo(np.float16).max)
_KMEANS_MAX_ITER = 100


def is_weight(op_type: str, input_index: int, array: np.ndarray | None) -> bool:
    """True for a prunable kernel: a float constant of >= 2 dims at a weight input of a
    conv/dense/matmul op (e.g. ("CONV_2D", 1, kernel), ("Gemm", 1, W))."""
    return (array is not None and input_index in WEIGHT_INPUTS.get(op_type, ())
            and array.ndim >= 2 and array.dtype.kind == "f")


def _check_fraction(value: float, key: str) -> float:
    if not 0.0 <= float(value) < 1.0:
        raise ConfigError("sparsity must be a fraction in [0, 1)", key=key, value=value)
    return float(value)


def prune_magnitude(w: np.ndarray, sparsity: float) -> np.ndarray:
    """A copy of ``w`` with the round(sparsity * size) smallest-magnitude values set to 0."""
    _check_fraction(sparsity, "sparsity")
    flat = np.array(w, copy=True).ravel()
    n_zero = int(round(sparsity * flat.size))
    if n_zero:
        flat[np.argpartition(np.abs(flat), n_zero - 1)[:n_zero]] = 0
    return flat.reshape(np.shape(w))


def prune_global(weights: dict[str, np.ndarray], sparsity: float) -> dict[str, np.ndarray]:
    """Prune all tensors against one magnitude threshold, so that round(sparsity * total)
    values are zero overall; layers with many small weights lose more of them."""
    _check_fraction(sparsity, "sparsity")
    names = list(weights)
    if not names:
        return {}
    flat = np.concatenate([np.abs(np.asarray(weights[n], dtype=np.float64)).ravel() for n in names])
    n_zero = int(round(sparsity * flat.size))
    mask = np.ones(flat.size, dtype=bool)
    if n_zero:
        mask[np.argpartition(flat, n_zero - 1)[:n_zero]] = False
    out, start = {}, 0
    for n in names:
        w = np.asarray(weights[n])
        out[n] = np.where(mask[start:start + w.size].reshape(w.shape), w, 0).astype(w.dtype)
        start += w.size
    return out


def cluster(w: np.ndarray, k: int, *, seed: int = 0, preserve_zeros: bool = True) -> np.ndarray:
    """Replace each value by the nearest of k centroids (1-D k-means, linearly spaced initial
    centroids between min and max as in TF-MOT). With ``preserve_zeros`` pruned zeros stay
    exactly 0 and count as one of the k values."""
    if int(k) < 1:
        raise ConfigError("clusters must be >= 1", key="clusters", value=k)
    w = np.asarray(w)
    flat = w.ravel().astype(np.float64)
    keep_zero = preserve_zeros and bool(np.any(flat == 0))
    sel = flat != 0 if keep_zero else np.ones(flat.size, dtype=bool)
    values = flat[sel]
    n_centroids = int(k) - (1 if keep_zero else 0)
    if values.size == 0 or np.unique(values).size <= n_centroids:
        return w.copy()
    if n_centroids < 1:  # k == 1 with zeros kept: everything else collapses onto 0 too
        return np.zeros_like(w)
    centroids, labels = _kmeans_1d(values, n_centroids, np.random.default_rng(seed))
    out = flat.copy()
    out[sel] = centroids[labels]
    return out.reshape(w.shape).astype(w.dtype)


def _kmeans_1d(values: np.ndarray, k: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    centroids = np.linspace(values.min(), values.max(), k)
    labels = np.zeros(values.size, dtype=np.int64)
    for _ in range(_KMEANS_MAX_ITER):
        order = np.argsort(centroids)
        centroids = centroids[order]
        new_labels = np.searchsorted((centroids[:-1] + centroids[1:]) / 2, values)
        counts = np.bincount(new_labels, minlength=k)
        sums = np.bincount(new_labels, weights=values, minlength=k)
        empty = counts == 0
        centroids = np.where(empty, centroids, sums / np.maximum(counts, 1))
        if empty.any():  # re-seed an empty cluster on a random data point
            centroids[empty] = rng.choice(values, size=int(empty.sum()), replace=False)
        if np.array_equal(new_labels, labels) and not empty.any():
            break
        labels = new_labels
    return centroids, labels


def to_float16(w: np.ndarray) -> np.ndarray:
    """``w`` rounded through float16 (what float16 storage keeps), in its own dtype."""
    w = np.asarray(w)
    peak = float(np.max(np.abs(w[np.isfinite(w)]), initial=0.0))
    if peak > FLOAT16_MAX:
        raise ModelError(
            f"weights exceed the float16 range (max |w| = {peak:.3g} > {FLOAT16_MAX:g})"
        )
    return w.astype(np.float16).astype(w.dtype)


def deflate_size(data: bytes, level: int = 9) -> int:
    """Bytes after raw deflate at ``level`` (what the bundle's zip member costs, sans headers)."""
    comp = zlib.compressobj(level, zlib.DEFLATED, -15)
    return len(comp.compress(bytes(data)) + comp.flush())


# --- TFLite application -------------------------------------------------------------------

def tflite_weights(model: bytes | Any) -> dict[str, tuple[int, int]]:
    """{weight tensor name: (subgraph, tensor index)} of every prunable kernel (``is_weight``)."""
    model_t = tm.load(model) if isinstance(model, (bytes, bytearray)) else model
    found: dict[str, tuple[int, int]] = {}
    for sg_index, sg in enumerate(model_t.subgraphs):
        for op in sg.operators or []:
            op_type = tm.op_name(model_t, op)
            for pos, t in enumerate(op.inputs if op.inputs is not None else []):
                if t < 0 or pos not in WEIGHT_INPUTS.get(op_type, ()):
                    continue
                if is_weight(op_type, pos, tm.tensor_array(model_t, int(t), sg_index)):
                    found.setdefault(_unique_name(model_t, sg_index, int(t), found),
                                     (sg_index, int(t)))
    return found


def _unique_name(model_t: Any, sg_index: int, t: int, taken: dict[str, tuple[int, int]]) -> str:
    name = tm.tensor_name(model_t.subgraphs[sg_index].tensors[t]) or f"tensor{t}"
    if name in taken and taken[name] != (sg_index, t):
        name = f"{name}#{sg_index}:{t}"
    return name


def compress_tflite(model: bytes, *, sparsity: float = 0.0,
                    per_layer: dict[str, float] | None = None,
                    clusters: int = 0, fp16: bool = False, seed: int = 0) -> tuple[bytes, dict]:
    """Prune (``per_layer`` {weight tensor name: sparsity} per tensor, the rest globally at
    ``sparsity``), cluster to ``clusters`` values per kernel, and/or store float constants as
    float16 + DEQUANTIZE. The result is loaded and run once in LiteRT before it is returned."""
    model_t = tm.load(model)
    located = tflite_weights(model_t)
    per_layer = dict(per_layer or {})
    unknown = sorted(set(per_layer) - set(located))
    if unknown:
        raise ConfigError("per-layer sparsity names a tensor that is not a prunable weight",
                          key="per_layer", value=unknown[0], allowed=sorted(located))
    original = {n: tm.tensor_array(model_t, t, sg) for n, (sg, t) in located.items()}
    weights = _prune(original, sparsity, per_layer)
    if clusters:
        weights = {n: cluster(w, clusters, seed=seed) for n, w in weights.items()}
    for n, w in weights.items():
        if not np.array_equal(w, original[n]):
            tm.set_tensor_array(model_t, located[n][1], w, located[n][0])
    fp16_count = _store_float16(model_t) if fp16 else 0
    tm.remove_unused(model_t)
    out = tm.save(model_t)
    tm.verify_runs(out, "compressed model")
    return out, _stats(model, out, original, weights, clusters, fp16_count)


def _prune(original: dict[str, np.ndarray], sparsity: float,
           per_layer: dict[str, float]) -> dict[str, np.ndarray]:
    weights = {n: prune_magnitude(original[n], s) for n, s in per_layer.items()}
    rest = {n: w for n, w in original.items() if n not in per_layer}
    weights.update(prune_global(rest, sparsity) if sparsity else rest)
    return weights


def _store_float16(model_t: Any) -> int:
    """float32 constants read by ops -> float16 constant + DEQUANTIZE (placed first)."""
    count = 0
    for sg_index, sg in enumerate(model_t.subgraphs):
        read = {
            int(t)
            for op in sg.operators or []
            for t in (op.inputs if op.inputs is not None else [])
        }
        for t in sorted(read - {-1}):
            tensor = sg.tensors[t]
            arr = tm.tensor_array(model_t, t, sg_index)
            if arr is None or arr.dtype != np.float32 or tensor.isVariable:
                continue
            half = to_float16(arr).astype(np.float16)
            src = tm.add_tensor(model_t, f"{tm.tensor_name(tensor)}_fp16", arr.shape, np.float16,
                                data=half, subgraph=sg_index)
            tensor.buffer = tm.add_buffer(model_t)  # now an activation: DEQUANTIZE writes it
            tm.insert_op(model_t, "DEQUANTIZE", [src], [t], 0, version=3, subgraph=sg_index)
            count += 1
    return count


def _stats(model: bytes, out: bytes, original: dict[str, np.ndarray],
           weights: dict[str, np.ndarray],
           clusters: int, fp16_count: int) -> dict:
    total = sum(w.size for w in weights.values())
    zeros = sum(int(np.count_nonzero(w == 0)) for w in weights.values())
    zeros_before = sum(int(np.count_nonzero(w == 0)) for w in original.values())
    return {
        "weight_tensors": len(weights), "weight_params": int(total),
        "weights_pruned": zeros - zeros_before, "zero_weights": zeros,
        "sparsity": zeros / total if total else 0.0,
        "clusters": int(clusters),
        "max_unique_values": max((int(np.unique(w).size) for w in weights.values()), default=0),
        "fp16_constants": fp16_count,
        "size_bytes": len(out), "deflate_bytes": deflate_size(out),
        "source_size_bytes": len(model), "source_deflate_bytes": deflate_size(model),
    }

