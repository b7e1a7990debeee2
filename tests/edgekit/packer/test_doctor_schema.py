"""TFLite doctor: schema variants of published models (opcodes only in the deprecated field,
MediaPipe's custom transpose convolution, sparse weights)."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.errors import ModelError
from edgekit.packer.doctor_tflite import (
    densify_sparse_weights,
    ensure_signature,
    normalise_opcodes,
    rewrite_transpose_conv_bias,
)
from edgekit.packer.ingest import describe
from edgekit.packer.quantize_tflite import quantize_tflite
from edgekit.tflite import model as tm
from edgekit_agent.bundle.modelcheck import check_tflite
from edgekit_agent.runtime import Runner, load_backend


def _deprecated_opcodes(model: bytes) -> bytes:
    """The model as old converters wrote it: builtin_code 0 (ADD), the op in the deprecated
    field."""
    model_t = tm.load(model)
    for code in model_t.operatorCodes:
        code.deprecatedBuiltinCode, code.builtinCode = code.builtinCode, 0
    return tm.save(model_t)


def test_deprecated_opcodes_break_the_quantizer_until_normalised(digits_tflite, digits_calib,
                                                                 digits_test, tflite_logits):
    old = _deprecated_opcodes(digits_tflite)
    assert tm.op_names(old) == tm.op_names(digits_tflite)  # LiteRT reads max(both)
    with pytest.raises(ModelError, match="does not run in LiteRT.*zero_point"):
        quantize_tflite(old, "static_int8", digits_calib[:32])
    fixed, steps = normalise_opcodes(old)
    assert steps and "CONV_2D" in steps[0] and "FULLY_CONNECTED" in steps[0]
    assert all(c.builtinCode == max(c.builtinCode, c.deprecatedBuiltinCode)
               for c in tm.load(fixed).operatorCodes)
    q = quantize_tflite(fixed, "static_int8", digits_calib[:32])
    images, labels = digits_test
    acc = float(np.mean(tflite_logits(q).argmax(1) == labels))
    assert acc > 0.85
    assert normalise_opcodes(fixed) == (fixed, [])


def _custom_transpose_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int) -> bytes:
    """A one-op model as MediaPipe writes it: CUSTOM Convolution2DTransposeBias(x, w, b)."""
    s = tm.schema
    model_t = s.ModelT()
    model_t.version, model_t.buffers, model_t.operatorCodes = 3, [s.BufferT()], []
    sg = s.SubGraphT()
    sg.tensors, sg.operators = [], []
    model_t.subgraphs = [sg]
    n, h, wd, _ = x.shape
    xi = tm.add_tensor(model_t, "x", x.shape, np.float32)
    wi = tm.add_tensor(model_t, "w", w.shape, np.float32, data=w)
    bi = tm.add_tensor(model_t, "b", b.shape, np.float32, data=b)
    yi = tm.add_tensor(model_t, "y", (n, h * stride, wd * stride, w.shape[0]), np.float32)
    code = s.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = s.BuiltinOperator.CUSTOM
    code.customCode, code.version = b"Convolution2DTransposeBias", 1
    model_t.operatorCodes.append(code)
    op = s.OperatorT()
    op.opcodeIndex = 0
    op.inputs, op.outputs = np.array([xi, wi, bi], np.int32), np.array([yi], np.int32)
    op.customOptions = np.frombuffer(np.array([1, stride, stride], "<i4").tobytes(), np.uint8)
    sg.operators.append(op)
    sg.inputs, sg.outputs = np.array([xi], np.int32), np.array([yi], np.int32)
    return tm.save(model_t)


def _reference(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int) -> np.ndarray:
    """Transpose convolution with kernel == stride and SAME padding: no overlap, no crop."""
    n, h, wd, _ = x.shape
    out = np.zeros((n, h * stride, wd * stride, w.shape[0]), np.float64)
    for kh in range(stride):
        for kw in range(stride):
            out[:, kh::stride, kw::stride, :] += np.einsum("nhwc,oc->nhwo", x, w[:, kh, kw, :])
    return out + b


def test_mediapipe_transpose_conv_becomes_builtin_and_matches():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 5, 4, 3)).astype(np.float32)
    w = rng.normal(size=(6, 2, 2, 3)).astype(np.float32)
    b = rng.normal(size=6).astype(np.float32)
    custom = _custom_transpose_conv(x, w, b, 2)
    # LiteRT has a kernel for MediaPipe's op, the quantizer and TFLM do not
    y_custom = Runner(load_backend(custom, "tflite"))([x])[0]
    np.testing.assert_allclose(y_custom, _reference(x, w, b, 2), rtol=1e-4, atol=1e-4)
    calib = [{"x": rng.normal(size=x.shape).astype(np.float32)} for _ in range(8)]
    with pytest.raises(ModelError, match="quantized no tensor"):
        quantize_tflite(ensure_signature(custom)[0], "static_int8", calib)
    fixed, steps = rewrite_transpose_conv_bias(custom)
    assert steps == ["rewrite_transpose_conv (1 custom Convolution2DTransposeBias -> "
                     "TRANSPOSE_CONV with bias)"]
    assert tm.op_names(fixed) == ["TRANSPOSE_CONV"]
    y = Runner(load_backend(fixed, "tflite"))([x])[0]
    np.testing.assert_allclose(y, _reference(x, w, b, 2), rtol=1e-4, atol=1e-4)
    assert rewrite_transpose_conv_bias(fixed) == (fixed, [])
    q = quantize_tflite(ensure_signature(fixed)[0], "static_int8", calib)
    assert tm.op_names(q) == ["TRANSPOSE_CONV"]
    yq = Runner(load_backend(q, "tflite"))([x])[0]
    assert 10 * np.log10(np.sum(y ** 2) / np.sum((y - yq) ** 2)) > 25


def _sparse_mlp() -> tuple[bytes, np.ndarray, np.ndarray]:
    """A digits MLP whose first layer is 90 % pruned, converted with TFLite's sparsity format
    (as MediaPipe's ``*_sparse`` models are): the weights are stored compressed, DENSIFY
    expands them at run time. (model, inputs, labels)."""
    import tensorflow as tf
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.data / 16.0).astype(np.float32), d.target
    tf.keras.utils.set_random_seed(0)
    inp = tf.keras.Input((64,), batch_size=1, name="x")
    hidden = tf.keras.layers.Dense(256, activation="relu")
    net = tf.keras.Model(inp, tf.keras.layers.Dense(10)(hidden(inp)))
    net.compile("adam", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    net.fit(x[:1400], y[:1400], epochs=4, verbose=0)
    w, b = hidden.get_weights()
    hidden.set_weights([w * (np.abs(w) >= np.quantile(np.abs(w), 0.9)), b])
    converter = tf.lite.TFLiteConverter.from_keras_model(net)
    converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    return converter.convert(), x[1400:], y[1400:]


def test_sparse_weights_are_densified_by_litert():
    model, x, labels = _sparse_mlp()
    assert "DENSIFY" in tm.op_names(model)
    check_tflite(model)  # a sparse buffer is shorter than its dense shape: not corrupt
    with pytest.raises(ModelError, match="is sparse, which this runtime does not run"):
        check_tflite(model, allow_sparse=False)  # TFLM's check: it has no sparse kernels
    assert describe(model, "tflite").inputs  # no traceback reading the compressed constant
    dense, steps = densify_sparse_weights(model)
    assert steps == ["densify_sparse_weights (1 sparse constants -> dense)"]
    assert "DENSIFY" not in tm.op_names(dense) and len(dense) > len(model)
    before, after = Runner(load_backend(model, "tflite")), Runner(load_backend(dense, "tflite"))
    for row in x[:50]:
        np.testing.assert_array_equal(before([row[None]])[0], after([row[None]])[0])
    q = quantize_tflite(dense, "static_int8", [{"x": r[None]} for r in x[:64]])
    acc = {name: float(np.mean(np.concatenate([r([row[None]])[0] for row in x]).argmax(1)
                               == labels))
           for name, r in (("float", before), ("int8", Runner(load_backend(q, "tflite"))))}
    assert acc["float"] > 0.75 and acc["int8"] >= acc["float"] - 0.03, acc
    assert densify_sparse_weights(dense) == (dense, [])
