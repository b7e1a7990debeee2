"""Weight compression: pruning, clustering and float16, as numpy transforms and on TFLite."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.errors import ConfigError, ModelError
from edgekit.packer import compress
from edgekit.packer.compress import (
    cluster,
    compress_tflite,
    deflate_size,
    is_weight,
    prune_global,
    prune_magnitude,
    to_float16,
)
from edgekit.tflite import model as tm
from edgekit_agent.runtime import load_backend

DIGITS_KERNELS = {"sequential/conv2d/Conv2D": (16, 3, 3, 1),
                  "sequential/conv2d_1/Conv2D": (32, 3, 3, 16),
                  "sequential/dense/MatMul": (64, 512), "sequential/logits/MatMul": (10, 64)}
DIGITS_WEIGHTS = 16 * 9 + 32 * 9 * 16 + 64 * 512 + 10 * 64  # 38160


def _sqnr(ref: np.ndarray, out: np.ndarray) -> float:
    ref, out = ref.astype(np.float64), out.astype(np.float64)
    return float(10 * np.log10(np.sum(ref ** 2) / np.sum((ref - out) ** 2)))


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(logits.argmax(1) == labels))


def _kernels(model: bytes) -> dict[str, np.ndarray]:
    model_t = tm.load(model)
    return {
        n: tm.tensor_array(model_t, t, sg)
        for n, (sg, t) in compress.tflite_weights(model_t).items()
    }


# --- numpy transforms -----------------------------------------------------------------------

def test_prune_magnitude_zeroes_exactly_the_smallest_half():
    w = np.random.default_rng(1).normal(size=(64, 33)).astype(np.float32)
    out = prune_magnitude(w, 0.5)
    assert out.dtype == np.float32 and out.shape == w.shape
    assert np.count_nonzero(out == 0) == round(0.5 * w.size) == 1056
    kept = out != 0
    assert np.abs(w[kept]).min() >= np.abs(w[~kept]).max()
    assert np.array_equal(out[kept], w[kept])          # survivors untouched
    assert np.count_nonzero(w == 0) == 0               # input not modified


def test_prune_global_uses_one_threshold_across_tensors():
    rng = np.random.default_rng(2)
    weights = {"small": rng.normal(0, 0.01, (40, 10)), "large": rng.normal(0, 1.0, (40, 10))}
    out = prune_global(weights, 0.5)
    zeros = {n: int(np.count_nonzero(w == 0)) for n, w in out.items()}
    assert sum(zeros.values()) == 400
    assert zeros["small"] > 380 and zeros["large"] < 20    # the small-magnitude layer goes first
    pruned = np.concatenate([np.abs(weights[n][out[n] == 0]) for n in out])
    kept = np.concatenate([np.abs(weights[n][out[n] != 0]) for n in out])
    assert pruned.max() <= kept.min()


def test_cluster_keeps_at_most_k_values_and_beats_a_uniform_grid():
    w = np.random.default_rng(3).normal(size=(128, 64)).astype(np.float32)
    out = cluster(w, 16)
    assert out.dtype == np.float32 and np.unique(out).size == 16
    grid = np.linspace(w.min(), w.max(), 16)             # the k-means starting point
    uniform = grid[np.abs(w[..., None] - grid).argmin(-1)]
    mse_kmeans, mse_uniform = np.mean((out - w) ** 2), np.mean((uniform - w) ** 2)
    assert mse_kmeans < 0.5 * mse_uniform, (mse_kmeans, mse_uniform)


def test_cluster_preserves_pruned_zeros():
    w = prune_magnitude(np.random.default_rng(4).normal(size=(50, 50)), 0.6)
    out = cluster(w, 8)
    assert np.array_equal(out == 0, w == 0)
    assert np.unique(out).size <= 8
    with pytest.raises(ConfigError, match="clusters"):
        cluster(w, 0)


def test_to_float16_round_trip_error_and_range():
    w = np.random.default_rng(5).normal(size=1000).astype(np.float32)
    half = to_float16(w)
    assert half.dtype == np.float32
    normal = np.abs(w) >= 2.0 ** -14                      # float16's smallest normal
    assert np.max(np.abs(half - w)[normal] / np.abs(w[normal])) <= 2.0 ** -11
    assert np.max(np.abs(half - w)[~normal], initial=0.0) <= 2.0 ** -25
    with pytest.raises(ModelError, match="float16 range"):
        to_float16(np.array([1.0, 7e4], dtype=np.float32))


def test_is_weight_picks_kernels_only():
    kernel, bias = np.zeros((8, 3, 3, 4), np.float32), np.zeros(8, np.float32)
    assert is_weight("CONV_2D", 1, kernel) and is_weight("Gemm", 1, np.zeros((4, 4), np.float32))
    assert not is_weight("CONV_2D", 2, bias)                       # bias
    assert not is_weight("CONV_2D", 0, kernel)                     # activation input
    assert not is_weight("RESHAPE", 1, np.array([1, 512], np.int32))
    assert not is_weight("FULLY_CONNECTED", 1, np.zeros((4, 4), np.int8))  # already quantized
    assert not is_weight("CONV_2D", 1, None)


def test_bad_sparsity_is_a_config_error():
    with pytest.raises(ConfigError, match="sparsity.*1.0"):
        prune_magnitude(np.ones(4), 1.0)
    with pytest.raises(ConfigError, match="sparsity"):
        prune_global({"w": np.ones((2, 2))}, -0.1)


# --- TFLite application ---------------------------------------------------------------------

def test_tflite_weights_finds_the_four_digits_kernels(digits_tflite):
    kernels = _kernels(digits_tflite)
    assert {n: w.shape for n, w in kernels.items()} == DIGITS_KERNELS


def test_prune_half_of_digits_shrinks_the_zipped_file(digits_tflite, tflite_logits, digits_test,
                                                      digits_float_logits):
    model, stats = compress_tflite(digits_tflite, sparsity=0.5)
    zeros = sum(int(np.count_nonzero(w == 0)) for w in _kernels(model).values())
    assert zeros == stats["zero_weights"] == stats["weights_pruned"] == round(0.5 * DIGITS_WEIGHTS)
    assert stats["sparsity"] == pytest.approx(0.5, abs=1e-4)
    assert abs(len(model) - len(digits_tflite)) <= 256       # same float32 file ...
    ratio = deflate_size(model) / deflate_size(digits_tflite)
    assert stats["deflate_bytes"] == deflate_size(model)
    assert ratio <= 0.65, ratio                              # ... but zipped: measured 0.58
    drop = _accuracy(digits_float_logits, digits_test[1]) - _accuracy(tflite_logits(model),
                                                                      digits_test[1])
    assert drop <= 0.01, drop


def test_per_layer_sparsity_touches_only_the_named_tensor(digits_tflite):
    before = _kernels(digits_tflite)
    model, stats = compress_tflite(digits_tflite, per_layer={"sequential/dense/MatMul": 0.9})
    after = _kernels(model)
    assert np.count_nonzero(after["sequential/dense/MatMul"] == 0) == round(0.9 * 64 * 512)
    for name in set(DIGITS_KERNELS) - {"sequential/dense/MatMul"}:
        assert np.array_equal(after[name], before[name])
    assert stats["weights_pruned"] == round(0.9 * 64 * 512)
    with pytest.raises(ConfigError, match="per_layer.*nope.*sequential/conv2d/Conv2D"):
        compress_tflite(digits_tflite, per_layer={"nope": 0.5})


def test_cluster_16_leaves_at_most_16_values_per_kernel(digits_tflite, tflite_logits, digits_test,
                                                        digits_float_logits):
    model, stats = compress_tflite(digits_tflite, clusters=16)
    uniques = {n: np.unique(w).size for n, w in _kernels(model).items()}
    assert all(u <= 16 for u in uniques.values()) and stats["max_unique_values"] == max(
        uniques.values()
    )
    ratio = deflate_size(model) / deflate_size(digits_tflite)
    assert ratio <= 0.25, ratio                              # measured 0.21
    drop = _accuracy(digits_float_logits, digits_test[1]) - _accuracy(tflite_logits(model),
                                                                      digits_test[1])
    assert drop <= 0.01, drop


def test_prune_cluster_then_static_int8_zips_below_015_of_float(digits_tflite, digits_calib,
                                                                tflite_logits,
                                                                digits_test, digits_float_logits):
    from edgekit.packer.quantize_tflite import quantize_tflite

    sparse, _ = compress_tflite(digits_tflite, sparsity=0.5, clusters=16)
    int8 = quantize_tflite(sparse, "static_int8", digits_calib)
    ratio = deflate_size(int8) / len(digits_tflite)
    assert ratio <= 0.15, ratio                              # measured 0.142 (22.2 KB of 156 KB)
    model_t = tm.load(int8)                                  # zeros survive int8 quantization
    kernel = next(tm.tensor_array(model_t, t) for t, x in enumerate(model_t.subgraphs[0].tensors)
                  if tm.tensor_name(x) == "sequential/dense/MatMul")
    assert kernel.dtype == np.int8 and np.count_nonzero(kernel == 0) >= 0.45 * kernel.size
    drop = _accuracy(digits_float_logits, digits_test[1]) - _accuracy(tflite_logits(int8),
                                                                      digits_test[1])
    assert drop <= 0.02, drop


def test_fp16_halves_the_file_and_still_runs(digits_tflite, tflite_logits, digits_float_logits):
    model, stats = compress_tflite(digits_tflite, fp16=True)
    assert len(model) / len(digits_tflite) <= 0.55           # measured 0.517
    assert stats["fp16_constants"] == 8                       # 4 kernels + 4 biases
    model_t = tm.load(model)
    sg = model_t.subgraphs[0]
    names = tm.op_names(model_t)
    assert names[:8] == ["DEQUANTIZE"] * 8 and names[8:] == tm.op_names(digits_tflite)
    for op in sg.operators[:8]:
        assert tm.tensor_type_name(sg.tensors[op.inputs[0]].type) == "float16"
        assert tm.tensor_type_name(sg.tensors[op.outputs[0]].type) == "float32"
    assert _sqnr(digits_float_logits, tflite_logits(model)) >= 60   # measured 72.9 dB


def test_saved_buffers_are_16_byte_aligned(digits_tflite):
    model, _ = compress_tflite(digits_tflite, fp16=True)
    packed = tm.schema.Model.GetRootAs(model, 0)
    offsets = []
    for i in range(packed.BuffersLength()):
        buf = packed.Buffers(i)
        if buf.DataLength():
            offsets.append(buf._tab.Vector(buf._tab.Offset(4)))
    assert len(offsets) >= 9 and all(o % 16 == 0 for o in offsets), offsets


def test_prune_cluster_and_fp16_together_run(digits_tflite):
    model, _ = compress_tflite(digits_tflite, sparsity=0.3, clusters=8, fp16=True)
    backend = load_backend(model, "tflite")
    out = backend.run([np.zeros((1, 8, 8, 1), np.float32)])[0]
    assert out.shape == (1, 10) and np.all(np.isfinite(out))
