"""TFLite doctor: schema variants of published models (opcodes only in the deprecated field,
MediaPipe's custom transpose convolution)."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.errors import ModelError
from edgekit.packer.doctor_tflite import (
    ensure_signature,
    normalise_opcodes,
    rewrite_transpose_conv_bias,
)
from edgekit.packer.quantize_tflite import quantize_tflite
from edgekit.tflite import model as tm
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
