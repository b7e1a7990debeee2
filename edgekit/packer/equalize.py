"""Cross-layer equalisation (Nagel et al. 2019, "Data-Free Quantization", sec. 4.1).

For two layers in a chain, y = W2 f(W1 x + b1) with f positively homogeneous (none or ReLU),
scaling output channel i of layer 1 by 1/s_i and input channel i of layer 2 by s_i leaves the
function unchanged. With s_i = sqrt(r1_i / r2_i) (r = the channel's weight range) both layers
get the same per-channel range; the activation between them, quantized with one scale per
tensor, no longer has channels that are 100x smaller than the largest one, which is what
sinks per-tensor int8 after a depthwise convolution with folded batch norm.
ReLU6 and hard-swish are not homogeneous: pairs across them are left alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..tflite import model as tm

_FIRST = ("CONV_2D", "DEPTHWISE_CONV_2D")
_SECOND = ("CONV_2D", "DEPTHWISE_CONV_2D")
_HOMOGENEOUS = (0, 1)  # fused activation NONE, RELU
ITERATIONS = 4
_MIN_RANGE = 1e-8


def equalize(model: bytes) -> tuple[bytes, int]:
    """(the float model with equalised conv pairs, number of pairs); same function."""
    model_t = tm.load(model)
    pairs = _pairs(model_t)
    if not pairs:
        return model, 0
    for _ in range(ITERATIONS):
        for first, second in pairs:
            _equalize_pair(model_t, first, second)
    tm.remove_unused(model_t)
    out = tm.save(model_t)
    tm.verify_runs(out, "equalised model")
    return out, len(pairs)


def _pairs(model_t: Any) -> list[tuple[Any, Any]]:
    sg = model_t.subgraphs[0]
    graph_out = set(tm.ints(sg.outputs))
    ops = sg.operators or []
    pairs = []
    for op in ops:
        if tm.op_name(model_t, op) not in _FIRST or not _own_weights(model_t, op):
            continue
        if getattr(op.builtinOptions, "fusedActivationFunction", 0) not in _HOMOGENEOUS:
            continue
        out = tm.ints(op.outputs)[0]
        users = tm.consumers(model_t, out)
        if out in graph_out or len(users) != 1:
            continue
        nxt = ops[users[0]]
        if (tm.op_name(model_t, nxt) in _SECOND and tm.ints(nxt.inputs)[0] == out
                and _own_weights(model_t, nxt) and _depth_multiplier_one(model_t, nxt)
                and _depth_multiplier_one(model_t, op)):
            pairs.append((op, nxt))
    return pairs


def _own_weights(model_t: Any, op: Any) -> bool:
    """Float weights (and bias, if any) that no other op reads."""
    ins = tm.ints(op.inputs)
    for t in ins[1:3]:
        if t < 0:
            continue
        arr = tm.tensor_array(model_t, t)
        if arr is None or arr.dtype != np.float32 or len(tm.consumers(model_t, t)) != 1:
            return False
    return len(ins) >= 2


def _depth_multiplier_one(model_t: Any, op: Any) -> bool:
    if tm.op_name(model_t, op) != "DEPTHWISE_CONV_2D":
        return True
    w = model_t.subgraphs[0].tensors[tm.ints(op.inputs)[1]]
    x = model_t.subgraphs[0].tensors[tm.ints(op.inputs)[0]]
    return int(w.shape[-1]) == int(x.shape[-1])


def _out_axis_view(model_t: Any, op: Any, w: np.ndarray) -> np.ndarray:
    """Weights as (out channels, -1): CONV_2D is OHWI, DEPTHWISE_CONV_2D is 1HWC."""
    if tm.op_name(model_t, op) == "DEPTHWISE_CONV_2D":
        return w.reshape(-1, w.shape[-1]).T
    return w.reshape(w.shape[0], -1)


def _in_axis_view(model_t: Any, op: Any, w: np.ndarray) -> np.ndarray:
    """Weights as (in channels, -1): the last axis for both layouts."""
    return np.moveaxis(w, -1, 0).reshape(w.shape[-1], -1)


def _equalize_pair(model_t: Any, first: Any, second: Any) -> None:
    w1_i, b1_i = tm.ints(first.inputs)[1], _bias(first)
    w2_i = tm.ints(second.inputs)[1]
    w1, w2 = tm.tensor_array(model_t, w1_i), tm.tensor_array(model_t, w2_i)
    r1 = np.abs(_out_axis_view(model_t, first, w1)).max(axis=1)
    r2 = np.abs(_in_axis_view(model_t, second, w2)).max(axis=1)
    if r1.shape != r2.shape:
        return
    ok = (r1 > _MIN_RANGE) & (r2 > _MIN_RANGE)
    s = np.where(ok, np.sqrt(np.maximum(r1, _MIN_RANGE) / np.maximum(r2, _MIN_RANGE)), 1.0)
    if tm.op_name(model_t, first) == "DEPTHWISE_CONV_2D":
        new_w1 = w1 / s
    else:
        new_w1 = w1 / s.reshape(-1, *([1] * (w1.ndim - 1)))
    tm.set_tensor_array(model_t, w1_i, new_w1.astype(np.float32))
    if b1_i >= 0:
        tm.set_tensor_array(model_t, b1_i, (tm.tensor_array(model_t, b1_i) / s).astype(np.float32))
    tm.set_tensor_array(model_t, w2_i, (w2 * s).astype(np.float32))


def _bias(op: Any) -> int:
    ins = tm.ints(op.inputs)
    return ins[2] if len(ins) > 2 else -1
