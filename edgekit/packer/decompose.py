"""Float rewrites that let int16x8 (hard-swish) and int8 (PReLU) quantize a whole model.

ai-edge-quantizer has no 16x8 configuration for HARD_SWISH: in ``static_int16x8`` it would
stay float (Vela then refuses the model) or need int8 islands with requantization around it,
which costs the fidelity 16x8 is for. ``x * relu6(x + 3) / 6`` written as
ADD(x, 3; fused RELU6) -> MUL(., 1/6) -> MUL(x, .) is the same function in ops that have
16x8 kernels in LiteRT, TFLM and Vela.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..tflite import model as tm

_RELU6 = 3  # ActivationFunctionType.RELU6


def hard_swish_to_mul(model: bytes) -> tuple[bytes, int]:
    """(the float model with every HARD_SWISH decomposed, how many)."""
    model_t = tm.load(model)
    sg = model_t.subgraphs[0]
    count, i = 0, 0
    while i < len(sg.operators or []):
        op = sg.operators[i]
        if tm.op_name(model_t, op) == "HARD_SWISH":
            _decompose(model_t, i)
            count += 1
            i += 3
        else:
            i += 1
    if not count:
        return model, 0
    out = tm.save(model_t)
    tm.verify_runs(out, "model with decomposed hard-swish")
    return out, count


def _decompose(model_t: Any, index: int) -> None:
    sg = model_t.subgraphs[0]
    op = sg.operators.pop(index)
    x, y = tm.ints(op.inputs)[0], tm.ints(op.outputs)[0]
    name, shape = tm.tensor_name(sg.tensors[y]), sg.tensors[y].shape
    three = tm.add_tensor(model_t, f"{name}/three", (1,), np.float32,
                          data=np.array([3.0], np.float32))
    sixth = tm.add_tensor(model_t, f"{name}/sixth", (1,), np.float32,
                          data=np.array([1.0 / 6.0], np.float32))
    gate = tm.add_tensor(model_t, f"{name}/relu6", shape, np.float32)
    scaled = tm.add_tensor(model_t, f"{name}/gate", shape, np.float32)
    tm.insert_op(model_t, "ADD", [x, three], [gate], index)
    add_options = tm.schema.AddOptionsT()
    add_options.fusedActivationFunction = _RELU6
    _options(sg.operators[index], tm.schema.BuiltinOptions.AddOptions, add_options)
    tm.insert_op(model_t, "MUL", [gate, sixth], [scaled], index + 1)
    _options(sg.operators[index + 1], tm.schema.BuiltinOptions.MulOptions,
             tm.schema.MulOptionsT())
    tm.insert_op(model_t, "MUL", [x, scaled], [y], index + 2)
    _options(sg.operators[index + 2], tm.schema.BuiltinOptions.MulOptions,
             tm.schema.MulOptionsT())


def _options(op: Any, kind: int, options: Any) -> None:
    op.builtinOptionsType, op.builtinOptions = kind, options


def prelu_to_relu_mul(model: bytes) -> tuple[bytes, int]:
    """(the float model with every PRELU written as alpha*x + (1-alpha)*relu(x), how many).

    ai-edge-quantizer 0.10 leaves PRELU in float in static int8 (DEQUANTIZE/QUANTIZE around it:
    Vela and TFLM-only targets refuse the model) and refuses it in 16x8. RELU, MUL and ADD have
    int8 and 16x8 kernels everywhere (LiteRT, TFLM, Vela, Edge TPU)."""
    model_t = tm.load(model)
    sg = model_t.subgraphs[0]
    count, i = 0, 0
    while i < len(sg.operators or []):
        op = sg.operators[i]
        alpha = tm.tensor_array(model_t, tm.ints(op.inputs)[1]) \
            if tm.op_name(model_t, op) == "PRELU" else None
        if alpha is not None and alpha.dtype == np.float32:
            _decompose_prelu(model_t, i, alpha)
            count += 1
            i += 4
        else:
            i += 1
    if not count:
        return model, 0
    tm.remove_unused(model_t)
    out = tm.save(model_t)
    tm.verify_runs(out, "model with decomposed PReLU")
    return out, count


def _decompose_prelu(model_t: Any, index: int, alpha: np.ndarray) -> None:
    sg = model_t.subgraphs[0]
    op = sg.operators.pop(index)
    x, y = tm.ints(op.inputs)[0], tm.ints(op.outputs)[0]
    name, shape = tm.tensor_name(sg.tensors[y]), sg.tensors[y].shape
    a = tm.add_tensor(model_t, f"{name}/alpha", alpha.shape, np.float32, data=alpha)
    b = tm.add_tensor(model_t, f"{name}/one_minus_alpha", alpha.shape, np.float32,
                      data=(1.0 - alpha).astype(np.float32))
    pos = tm.add_tensor(model_t, f"{name}/relu", shape, np.float32)
    lin = tm.add_tensor(model_t, f"{name}/alpha_x", shape, np.float32)
    gated = tm.add_tensor(model_t, f"{name}/gated", shape, np.float32)
    tm.insert_op(model_t, "RELU", [x], [pos], index)
    tm.insert_op(model_t, "MUL", [x, a], [lin], index + 1)
    _options(sg.operators[index + 1], tm.schema.BuiltinOptions.MulOptions, tm.schema.MulOptionsT())
    tm.insert_op(model_t, "MUL", [pos, b], [gated], index + 2)
    _options(sg.operators[index + 2], tm.schema.BuiltinOptions.MulOptions, tm.schema.MulOptionsT())
    tm.insert_op(model_t, "ADD", [lin, gated], [y], index + 3)
    _options(sg.operators[index + 3], tm.schema.BuiltinOptions.AddOptions, tm.schema.AddOptionsT())


def relu_0_to_1_to_relu6(model: bytes) -> tuple[bytes, int]:
    """(the float model with every RELU_0_TO_1 written as MUL(x, 6; fused RELU6) / 6, how many).

    onnx2tf writes the hard-sigmoids of PaddleOCR's squeeze-excite blocks as RELU_0_TO_1, which
    TFLM has no kernel for and ai-edge-quantizer cannot quantize in 16x8; MINIMUM (the MCU
    family's rewrite of a quantized model) stays float in ai-edge-quantizer. MUL and RELU6 are
    quantized everywhere."""
    model_t = tm.load(model)
    sg = model_t.subgraphs[0]
    count, i = 0, 0
    while i < len(sg.operators or []):
        if tm.op_name(model_t, sg.operators[i]) == "RELU_0_TO_1":
            _decompose_relu01(model_t, i)
            count += 1
            i += 2
        else:
            i += 1
    if not count:
        return model, 0
    out = tm.save(model_t)
    tm.verify_runs(out, "model with RELU_0_TO_1 as RELU6")
    return out, count


def _decompose_relu01(model_t: Any, index: int) -> None:
    sg = model_t.subgraphs[0]
    op = sg.operators.pop(index)
    x, y = tm.ints(op.inputs)[0], tm.ints(op.outputs)[0]
    name, shape = tm.tensor_name(sg.tensors[y]), sg.tensors[y].shape
    six = tm.add_tensor(model_t, f"{name}/six", (1,), np.float32, data=np.array([6.0], np.float32))
    sixth = tm.add_tensor(model_t, f"{name}/sixth", (1,), np.float32,
                          data=np.array([1.0 / 6.0], np.float32))
    clipped = tm.add_tensor(model_t, f"{name}/relu6", shape, np.float32)
    # the RELU6 fused into the MUL: a standalone RELU6 stays float in ai-edge-quantizer
    tm.insert_op(model_t, "MUL", [x, six], [clipped], index)
    mul_options = tm.schema.MulOptionsT()
    mul_options.fusedActivationFunction = _RELU6
    _options(sg.operators[index], tm.schema.BuiltinOptions.MulOptions, mul_options)
    tm.insert_op(model_t, "MUL", [clipped, sixth], [y], index + 1)
    _options(sg.operators[index + 1], tm.schema.BuiltinOptions.MulOptions, tm.schema.MulOptionsT())
