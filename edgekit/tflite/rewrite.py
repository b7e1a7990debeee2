"""Graph rewrites on TFLite flatbuffers that make a model fit a target's op set.

A flat module of independent functions. Each public rewrite takes model bytes and returns
``(new_bytes, notes)``: ``notes`` says what changed, one line per rewritten op, and is empty
(with the input bytes returned unchanged) when nothing applied. Rewrites keep the numbers the
same up to requantization rounding; callers run the result before keeping it.

Only subgraph 0 (the main graph) is rewritten.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from edgekit_agent.runtime import Runner, load_backend

from . import model as tfl

_OP = schema.BuiltinOperator
_ACT = schema.ActivationFunctionType
_ACTIVATION_OPS = {_ACT.RELU: _OP.RELU, _ACT.RELU6: _OP.RELU6, _ACT.RELU_N1_TO_1: _OP.RELU_N1_TO_1,
                   _ACT.TANH: _OP.TANH}
_INT_TYPES = {schema.TensorType.INT8: np.int8, schema.TensorType.UINT8: np.uint8}
_FLOAT_TYPES = (schema.TensorType.FLOAT32, schema.TensorType.FLOAT16)
POOLING_AND_CONCAT = ("MAX_POOL_2D", "AVERAGE_POOL_2D", "L2_POOL_2D", "CONCATENATION")
# Unary ops whose int8 kernels rescale freely between input and output quantization, so a
# float copy wrapped in DEQUANTIZE/QUANTIZE can run in int8 with the wrapper's parameters.
REQUANTIZABLE_UNARY = ("ELU", "LEAKY_RELU", "HARD_SWISH", "GELU", "RELU", "RELU6", "RELU_N1_TO_1",
                       "RELU_0_TO_1", "ABS", "PRELU")


def strip_float_io(model: bytes) -> tuple[bytes, list[str]]:
    """Drop the float→int QUANTIZE on graph inputs and int→float DEQUANTIZE on graph outputs,
    so the model takes and returns its quantized tensors (int8/uint8 I/O)."""
    m = tfl.load(model)
    sg = m.subgraphs[0]
    notes: list[str] = []
    drop: set[int] = set()
    for pos, t_in in enumerate(list(sg.inputs)):
        users = _consumers(sg, t_in)
        if len(users) == 1 and _is_float_to_int(m, sg, users[0], "QUANTIZE"):
            q_out = sg.operators[users[0]].outputs[0]
            _rename_graph_tensor(m, sg, t_in, q_out, inputs=True, position=pos)
            drop.add(users[0])
            notes.append(f"QUANTIZE#{users[0]}: removed; input {_name(sg, t_in)!r} is now "
                         f"{tfl.tensor_type_name(sg.tensors[q_out].type)}")
    for pos, t_out in enumerate(list(sg.outputs)):
        producer = _producer(sg, t_out)
        if (producer is not None and not _consumers(sg, t_out)
                and _is_int_to_float(m, sg, producer)):
            dq_in = sg.operators[producer].inputs[0]
            _rename_graph_tensor(m, sg, t_out, dq_in, inputs=False, position=pos)
            drop.add(producer)
            notes.append(f"DEQUANTIZE#{producer}: removed; output {_name(sg, t_out)!r} is now "
                         f"{tfl.tensor_type_name(sg.tensors[dq_in].type)}")
    if not drop:
        return model, []
    sg.operators = [op for i, op in enumerate(sg.operators) if i not in drop]
    return tfl.save(m), notes


def split_fused_activation(model: bytes,
                           ops: Iterable[str] = POOLING_AND_CONCAT) -> tuple[bytes, list[str]]:
    """Move a fused activation out of the named ops into its own RELU/RELU6/… op after them."""
    wanted = set(ops)
    m = tfl.load(model)
    sg = m.subgraphs[0]
    notes: list[str] = []
    new_ops: list[Any] = []
    for index, op in enumerate(sg.operators):
        new_ops.append(op)
        name = tfl.op_name(m, op)
        act = getattr(op.builtinOptions, "fusedActivationFunction", _ACT.NONE)
        if name not in wanted or act not in _ACTIVATION_OPS:
            continue
        out = op.outputs[0]
        pre = _clone_tensor(sg, out, suffix="/pre_activation")
        op.outputs = [pre]
        op.builtinOptions.fusedActivationFunction = _ACT.NONE
        act_op = schema.OperatorT()
        act_op.opcodeIndex = _opcode_index(m, _ACTIVATION_OPS[act], version=_int_version(sg, out))
        act_op.inputs, act_op.outputs = [pre], [out]
        new_ops.append(act_op)
        act_name = tfl.op_name(m, act_op)
        notes.append(f"{name}#{index}: fused {act_name} moved into a separate {act_name} op")
    if not notes:
        return model, []
    sg.operators = new_ops
    return tfl.save(m), notes


def leaky_relu_to_prelu(model: bytes) -> tuple[bytes, list[str]]:
    """Replace LEAKY_RELU(alpha) by PRELU with a constant per-channel alpha of that value."""
    m = tfl.load(model)
    sg = m.subgraphs[0]
    notes: list[str] = []
    for index, op in enumerate(sg.operators):
        if tfl.op_name(m, op) != "LEAKY_RELU":
            continue
        alpha = float(op.builtinOptions.alpha)
        x = sg.tensors[op.inputs[0]]
        channels = int(x.shape[-1]) if len(x.shape) else 1
        alpha_t = _alpha_tensor(m, sg, x, alpha, channels, f"{_name(sg, op.inputs[0])}/alpha")
        op.inputs = [op.inputs[0], alpha_t]
        op.opcodeIndex = _opcode_index(m, _OP.PRELU, version=1)
        op.builtinOptionsType, op.builtinOptions = schema.BuiltinOptions.NONE, None
        notes.append(f"LEAKY_RELU#{index}: replaced by PRELU with alpha {alpha:g} "
                     f"({tfl.tensor_type_name(x.type)}, {channels} channels)")
    return (tfl.save(m), notes) if notes else (model, [])


def requantize_float_islands(model: bytes,
                             ops: Iterable[str] = REQUANTIZABLE_UNARY) -> tuple[bytes, list[str]]:
    """Turn DEQUANTIZE → OP(float) → QUANTIZE, left behind by a quantizer, into OP(int8) using the
    DEQUANTIZE input and the QUANTIZE output as the op's own tensors."""
    wanted = set(ops)
    m = tfl.load(model)
    sg = m.subgraphs[0]
    notes: list[str] = []
    drop: set[int] = set()
    graph_io = set(sg.inputs) | set(sg.outputs)
    for index, op in enumerate(sg.operators):
        name = tfl.op_name(m, op)
        if name not in wanted or len(op.outputs) != 1:
            continue
        island = _float_island(m, sg, index, graph_io)
        if island is None:
            continue
        dq, q = island
        op.inputs = [sg.operators[dq].inputs[0], *op.inputs[1:]]
        op.outputs = [sg.operators[q].outputs[0]]
        drop |= {dq, q}
        notes.append(f"{name}#{index}: float op left between DEQUANTIZE#{dq} and QUANTIZE#{q} "
                     f"now runs in {tfl.tensor_type_name(sg.tensors[op.outputs[0]].type)}")
    if not notes:
        return model, []
    sg.operators = [op for i, op in enumerate(sg.operators) if i not in drop]
    return tfl.save(m), notes


def relu_0_to_1_to_relu_minimum(model: bytes) -> tuple[bytes, list[str]]:
    """Replace RELU_0_TO_1 (clamp to [0, 1]; TFLM has no kernel) by RELU followed by MINIMUM
    with a constant 1. The RELU output keeps the op's output quantization, so RELU does the
    requantization and MINIMUM clips at the quantized 1 exactly as RELU_0_TO_1 does."""
    m = tfl.load(model)
    sg = m.subgraphs[0]
    notes: list[str] = []
    new_ops: list[Any] = []
    for index, op in enumerate(sg.operators):
        new_ops.append(op)
        if tfl.op_name(m, op) != "RELU_0_TO_1":
            continue
        out = op.outputs[0]
        relu_out = _clone_tensor(sg, out, suffix="/relu")
        op.opcodeIndex = _opcode_index(m, _OP.RELU, version=_int_version(sg, out))
        op.outputs = [relu_out]
        minimum = schema.OperatorT()
        minimum.opcodeIndex = _opcode_index(m, _OP.MINIMUM, version=_int_version(sg, out))
        minimum.inputs, minimum.outputs = [relu_out, _one_like(m, sg, out)], [out]
        new_ops.append(minimum)
        notes.append(f"RELU_0_TO_1#{index}: replaced by RELU + MINIMUM(1) "
                     f"({tfl.tensor_type_name(sg.tensors[out].type)})")
    if not notes:
        return model, []
    sg.operators = new_ops
    return tfl.save(m), notes


def _one_like(m: Any, sg: Any, like: int) -> int:
    """A constant 1 of shape [1] in the type (and quantization) of tensor ``like``."""
    src = sg.tensors[like]
    t = schema.TensorT()
    t.shape, t.type, t.name = (
        np.array([1], dtype=np.int32),
        src.type,
        (_name(sg, like) + "/one").encode(),
    )
    if src.type in _INT_TYPES:
        dtype = _INT_TYPES[src.type]
        scale, zero = float(src.quantization.scale[0]), int(src.quantization.zeroPoint[0])
        info = np.iinfo(dtype)
        data = np.array([np.clip(round(1.0 / scale) + zero, info.min, info.max)], dtype=dtype)
        q = schema.QuantizationParametersT()
        q.scale, q.zeroPoint = [scale], [zero]
        t.quantization = q
    else:
        data = np.ones(1, dtype=np.float32)
    t.buffer = _add_buffer(m, data)
    sg.tensors.append(t)
    return len(sg.tensors) - 1


# --- helpers (private) --------------------------------------------------------------------------

def _name(sg: Any, tensor: int) -> str:
    raw = sg.tensors[tensor].name
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)


def _consumers(sg: Any, tensor: int) -> list[int]:
    return [i for i, op in enumerate(sg.operators)
            if op.inputs is not None and tensor in list(op.inputs)]


def _producer(sg: Any, tensor: int) -> int | None:
    for i, op in enumerate(sg.operators):
        if op.outputs is not None and tensor in list(op.outputs):
            return i
    return None


def _is_float_to_int(m: Any, sg: Any, index: int, name: str) -> bool:
    op = sg.operators[index]
    return (tfl.op_name(m, op) == name and sg.tensors[op.inputs[0]].type in _FLOAT_TYPES
            and sg.tensors[op.outputs[0]].type in _INT_TYPES)


def _is_int_to_float(m: Any, sg: Any, index: int) -> bool:
    op = sg.operators[index]
    return (tfl.op_name(m, op) == "DEQUANTIZE" and sg.tensors[op.inputs[0]].type in _INT_TYPES
            and sg.tensors[op.outputs[0]].type in _FLOAT_TYPES)


def _rename_graph_tensor(m: Any, sg: Any, old: int, new: int, *, inputs: bool,
                         position: int) -> None:
    """Make ``new`` the graph input/output at ``position`` in place of ``old``, signatures too."""
    io = sg.inputs if inputs else sg.outputs
    io[position] = new
    for sig in m.signatureDefs or []:
        if sig.subgraphIndex != 0:
            continue
        for entry in (sig.inputs if inputs else sig.outputs) or []:
            if entry.tensorIndex == old:
                entry.tensorIndex = new


def _clone_tensor(sg: Any, index: int, suffix: str) -> int:
    src = sg.tensors[index]
    t = schema.TensorT()
    t.shape = None if src.shape is None else np.array(src.shape, dtype=np.int32)
    t.shapeSignature = None if src.shapeSignature is None else np.array(src.shapeSignature,
                                                                        dtype=np.int32)
    t.type, t.buffer, t.name = src.type, 0, (_name(sg, index) + suffix).encode()
    if src.quantization is not None:
        q = schema.QuantizationParametersT()
        for attr in ("min", "max", "scale", "zeroPoint"):
            value = getattr(src.quantization, attr)
            setattr(q, attr, None if value is None else list(value))
        q.quantizedDimension = src.quantization.quantizedDimension
        t.quantization = q
    sg.tensors.append(t)
    return len(sg.tensors) - 1


def _alpha_tensor(m: Any, sg: Any, x: Any, alpha: float, channels: int, name: str) -> int:
    t = schema.TensorT()
    t.shape, t.type, t.name = np.array([channels], dtype=np.int32), x.type, name.encode()
    if x.type in _INT_TYPES:
        dtype = _INT_TYPES[x.type]
        qmax = np.iinfo(dtype).max
        if dtype == np.uint8 and alpha < 0:
            raise ValueError("uint8 PRELU cannot hold a negative alpha")
        scale = abs(alpha) / qmax if alpha else 1.0
        data = np.full(channels, round(alpha / scale), dtype=dtype)
        q = schema.QuantizationParametersT()
        q.scale, q.zeroPoint = [scale], [0]
        t.quantization = q
    else:
        data = np.full(channels, alpha, dtype=np.float32)
    t.buffer = _add_buffer(m, data)
    sg.tensors.append(t)
    return len(sg.tensors) - 1


def _add_buffer(m: Any, data: np.ndarray) -> int:
    buf = schema.BufferT()
    buf.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), dtype=np.uint8)
    m.buffers.append(buf)
    return len(m.buffers) - 1


def _opcode_index(m: Any, builtin: int, version: int = 1) -> int:
    for i, code in enumerate(m.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            code.version = max(code.version, version)
            return i
    code = schema.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode = builtin, min(builtin, 127)
    code.version = version
    m.operatorCodes.append(code)
    return len(m.operatorCodes) - 1


def _int_version(sg: Any, tensor: int) -> int:
    # Activation kernels register int8 as op version 2 (float and uint8 are version 1).
    return 2 if sg.tensors[tensor].type == schema.TensorType.INT8 else 1


def _float_island(m: Any, sg: Any, index: int, graph_io: set[int]) -> tuple[int, int] | None:
    op = sg.operators[index]
    src, dst = op.inputs[0], op.outputs[0]
    if sg.tensors[src].type not in _FLOAT_TYPES or src in graph_io or dst in graph_io:
        return None
    dq = _producer(sg, src)
    users = _consumers(sg, dst)
    if dq is None or len(users) != 1 or _consumers(sg, src) != [index]:
        return None
    if not _is_int_to_float(m, sg, dq) or not _is_float_to_int(m, sg, users[0], "QUANTIZE"):
        return None
    src_type = sg.tensors[sg.operators[dq].inputs[0]].type
    if src_type != sg.tensors[sg.operators[users[0]].outputs[0]].type:
        return None
    if any(i >= 0 and sg.tensors[i].type in _FLOAT_TYPES for i in op.inputs[1:]):
        return None  # a float constant operand (e.g. PRELU alpha) would need its own requantization
    return dq, users[0]


def compare_outputs(before: bytes, after: bytes,
                    inputs: Iterable[Sequence[np.ndarray]] | None = None,
                    samples: int = 8, seed: int = 0) -> dict[str, Any]:
    """Run both models (LiteRT) on the same inputs and return the worst output difference:
    ``max_diff_lsb`` (in the output's quantization step) and ``sqnr_db`` (of ``after`` against
    ``before``; None when the outputs are identical). ``inputs`` are float samples (e.g.
    calibration data); without them, ``samples`` seeded inputs spread over the quantized input
    range are used. ``checked_on`` says which."""

    a, b = Runner(load_backend(before, "tflite")), Runner(load_backend(after, "tflite"))
    if inputs is None:
        rng = np.random.default_rng(seed)
        feeds = [
            [_probe_input(sa, sb, rng) for sa, sb in zip(a.inputs, b.inputs, strict=True)]
            for _ in range(samples)
        ]
        checked_on = f"{samples} seeded random inputs"
    else:
        feeds = [
            [
                np.asarray(x, np.float32).reshape(spec.shape)
                for x, spec in zip(sample, a.inputs, strict=True)
            ]
            for sample in inputs
        ]
        checked_on = f"{len(feeds)} calibration samples"
    worst_lsb, signal, noise = 0.0, 0.0, 0.0
    for xs in feeds:
        for ya, yb, sa, sb in zip(a(xs), b(xs), a.outputs, b.outputs, strict=True):
            step = sa.scale or sb.scale or 1.0
            diff = np.asarray(ya, np.float64) - np.asarray(yb, np.float64)
            worst_lsb = max(worst_lsb, float(np.abs(diff).max()) / step)
            signal += float(np.square(np.asarray(ya, np.float64)).sum())
            noise += float(np.square(diff).sum())
    sqnr = None if noise == 0 else round(float(10 * np.log10(max(signal, 1e-30) / noise)), 2)
    return {"max_diff_lsb": round(worst_lsb, 3), "sqnr_db": sqnr, "checked_on": checked_on}


def calibration_probes(calib: Any, limit: int = 16) -> list[list[np.ndarray]] | None:
    """Up to ``limit`` float input samples from a packer Dataset (None when there is none), for
    ``compare_outputs`` to check a rewrite on real data."""
    if calib is None or not len(calib):
        return None
    return [
        [np.asarray(a[i], np.float32) for a in calib.arrays] for i in range(min(len(calib), limit))
    ]


def _probe_input(spec_a: Any, spec_b: Any, rng: np.random.Generator) -> np.ndarray:
    """Float input drawn on the quantization grid of whichever model has a quantized input,
    so both models see exactly the same integer input."""
    spec = spec_a if spec_a.scale is not None else spec_b
    if spec.scale is None:
        return rng.uniform(0.0, 1.0, size=spec_a.shape).astype(np.float32)
    info = np.iinfo(spec.dtype)
    q = rng.integers(info.min, info.max + 1, size=spec.shape)
    return ((q - spec.zero_point) * spec.scale).astype(np.float32)
