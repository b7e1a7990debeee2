"""Float rewrites that let int16x8 quantize a whole model.

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
