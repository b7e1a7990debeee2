"""Read and rewrite TFLite flatbuffers without TensorFlow (LiteRT ships the schema's object API).

``load`` gives a mutable ``schema.ModelT``; the graph helpers below edit it in place (add a
tensor, insert an op, drop what nothing references) and ``save`` packs it again with every
constant buffer 16-byte aligned, as the TFLite converter writes them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

from edgekit_agent.runtime import load_backend

from ..errors import EdgekitError, ModelError

_OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
_OP_CODES = {k: v for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
_TENSOR_TYPES = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
_TYPE_CODES = {name: code for code, name in _TENSOR_TYPES.items()}
FILE_IDENTIFIER = b"TFL3"
BUFFER_ALIGNMENT = 16
# Opcodes >= 127 live only in builtinCode; deprecatedBuiltinCode saturates at this placeholder.
_DEPRECATED_PLACEHOLDER = 127


def load(model: bytes) -> Any:
    """The model as a mutable ``schema.ModelT`` object tree (external buffers read inline)."""
    if len(model) < 8 or model[4:8] != FILE_IDENTIFIER:
        raise ModelError("not a TFLite flatbuffer (missing 'TFL3' identifier)")
    try:
        model_t = schema.ModelT.InitFromPackedBuf(bytearray(model), 0)
    except Exception as exc:  # flatbuffers raises struct/index errors on garbage
        raise ModelError(f"corrupt TFLite flatbuffer: {type(exc).__name__}") from None
    _inline_external_buffers(model_t, model)
    return model_t


def _inline_external_buffers(model_t: Any, model: bytes) -> None:
    """Models with >2 GB or ai-edge-quantizer outputs with >256 KB of weights keep buffer data
    after the flatbuffer (offset/size); pull it inline so that editing and saving keep it."""
    for buf in model_t.buffers or []:
        if buf.offset > 1 and (buf.data is None or len(buf.data) == 0):
            if buf.offset + buf.size > len(model):
                raise ModelError("corrupt TFLite flatbuffer: buffer data beyond end of file")
            buf.data = np.frombuffer(model, dtype=np.uint8, count=buf.size,
                                     offset=buf.offset).copy()
            buf.offset = buf.size = 0


def save(model_t: Any) -> bytes:
    builder = flatbuffers.Builder(1024)
    original = model_t.buffers
    model_t.buffers = [_AlignedBuffer(b) for b in original or []]
    try:
        builder.Finish(model_t.Pack(builder), file_identifier=FILE_IDENTIFIER)
    finally:
        model_t.buffers = original
    return bytes(builder.Output())


class _AlignedBuffer:
    """Packs a ``BufferT`` with its data vector aligned to 16 bytes (SIMD kernels, MCUs)."""

    def __init__(self, buf: Any) -> None:
        self.buf = buf

    def Pack(self, builder: flatbuffers.Builder) -> int:  # noqa: N802 - flatbuffers' name
        data, vector = self.buf.data, None
        if data is not None and len(data):
            raw = np.ascontiguousarray(data, dtype=np.uint8).tobytes()
            builder.StartVector(1, len(raw), BUFFER_ALIGNMENT)
            builder.head -= len(raw)
            builder.Bytes[builder.head:builder.head + len(raw)] = raw
            vector = builder.EndVector()
        schema.BufferStart(builder)
        if vector is not None:
            schema.BufferAddData(builder, vector)
        schema.BufferAddOffset(builder, self.buf.offset)
        schema.BufferAddSize(builder, self.buf.size)
        return schema.BufferEnd(builder)


def op_name(model_t: Any, op: Any) -> str:
    code = model_t.operatorCodes[op.opcodeIndex]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    if builtin == schema.BuiltinOperator.CUSTOM:
        return f"CUSTOM:{(code.customCode or b'').decode(errors='replace')}"
    return _OP_NAMES.get(builtin, f"BUILTIN_{builtin}")


def op_names(model: bytes | Any, subgraph: int = 0) -> list[str]:
    """Builtin op names of a subgraph in execution order, e.g. ['CONV_2D', 'RELU', ...]."""
    model_t = load(model) if isinstance(model, (bytes, bytearray)) else model
    return [op_name(model_t, op) for op in model_t.subgraphs[subgraph].operators or []]


def tensor_type_name(type_code: int) -> str:
    return _TENSOR_TYPES.get(type_code, f"type{type_code}")


def tensor_type_code(dtype: str | np.dtype) -> int:
    name = np.dtype(dtype).name
    if name not in _TYPE_CODES:
        raise ModelError(f"no TFLite tensor type for numpy dtype {name}")
    return _TYPE_CODES[name]


def tensor_name(tensor: Any) -> str:
    name = tensor.name
    return name.decode(errors="replace") if isinstance(name, (bytes, bytearray)) else (name or "")


def tensor_array(model_t: Any, tensor_index: int, subgraph: int = 0) -> np.ndarray | None:
    """A constant tensor's data as a numpy array (None for activations, and for sparse
    constants, which DENSIFY expands at run time)."""
    tensor = model_t.subgraphs[subgraph].tensors[tensor_index]
    buf = model_t.buffers[tensor.buffer].data if tensor.buffer < len(model_t.buffers) else None
    if buf is None or len(buf) == 0 or tensor.sparsity is not None:
        return None
    dtype = np.dtype(tensor_type_name(tensor.type).replace("bool", "bool_"))
    return np.frombuffer(bytes(np.asarray(buf, dtype=np.uint8)), dtype=dtype).reshape(tensor.shape)


def set_tensor_array(model_t: Any, tensor_index: int, array: np.ndarray, subgraph: int = 0) -> None:
    """Make a tensor a constant holding ``array`` (type and shape follow the array).

    Always writes a fresh buffer: the converter shares one buffer between identical constants,
    and editing it in place would change the other tensors too.
    """
    tensor = model_t.subgraphs[subgraph].tensors[tensor_index]
    array = np.ascontiguousarray(array)
    tensor.type = tensor_type_code(array.dtype)
    tensor.shape = np.asarray(array.shape, dtype=np.int32)
    tensor.buffer = add_buffer(model_t, array)


def add_buffer(model_t: Any, array: np.ndarray | None = None) -> int:
    buf = schema.BufferT()
    if array is not None:
        buf.data = np.frombuffer(np.ascontiguousarray(array).tobytes(), dtype=np.uint8)
    model_t.buffers.append(buf)
    return len(model_t.buffers) - 1


def add_tensor(model_t: Any, name: str, shape: Iterable[int], dtype: str | np.dtype, *,
               data: np.ndarray | None = None, scale: Iterable[float] | None = None,
               zero_point: Iterable[int] | None = None, subgraph: int = 0) -> int:
    """Append a tensor (a constant when ``data`` is given, else an activation); its index."""
    tensor = schema.TensorT()
    tensor.name = name.encode()
    tensor.type = tensor_type_code(dtype)
    tensor.shape = np.asarray(list(shape), dtype=np.int32)
    tensor.buffer = add_buffer(model_t, None if data is None else np.asarray(data, dtype=dtype))
    if scale is not None:
        tensor.quantization = schema.QuantizationParametersT()
        tensor.quantization.scale = np.asarray(list(scale), dtype=np.float32)
        tensor.quantization.zeroPoint = np.asarray(list(zero_point or [0]), dtype=np.int64)
    tensors = model_t.subgraphs[subgraph].tensors
    tensors.append(tensor)
    return len(tensors) - 1


def opcode_index(model_t: Any, name: str, version: int = 1) -> int:
    """Index of the builtin opcode ``name`` (added if missing; version raised if lower)."""
    code = _OP_CODES[name]
    for i, oc in enumerate(model_t.operatorCodes):
        if max(oc.builtinCode, oc.deprecatedBuiltinCode) == code:
            oc.version = max(oc.version, version)
            return i
    oc = schema.OperatorCodeT()
    oc.builtinCode = code
    oc.deprecatedBuiltinCode = min(code, _DEPRECATED_PLACEHOLDER)
    oc.version = version
    model_t.operatorCodes.append(oc)
    return len(model_t.operatorCodes) - 1


def insert_op(model_t: Any, name: str, inputs: list[int], outputs: list[int], position: int, *,
              version: int = 1, subgraph: int = 0) -> None:
    op = schema.OperatorT()
    op.opcodeIndex = opcode_index(model_t, name, version)
    op.inputs = np.asarray(inputs, dtype=np.int32)
    op.outputs = np.asarray(outputs, dtype=np.int32)
    model_t.subgraphs[subgraph].operators.insert(position, op)


def consumers(model_t: Any, tensor_index: int, subgraph: int = 0) -> list[int]:
    """Indices of the ops (execution order) that read ``tensor_index``."""
    ops = model_t.subgraphs[subgraph].operators or []
    return [i for i, op in enumerate(ops) if tensor_index in ints(op.inputs)]


def producer(model_t: Any, tensor_index: int, subgraph: int = 0) -> int | None:
    for i, op in enumerate(model_t.subgraphs[subgraph].operators or []):
        if tensor_index in ints(op.outputs):
            return i
    return None


def replace_input(model_t: Any, old: int, new: int, subgraph: int = 0) -> None:
    """Every op that read tensor ``old`` reads ``new`` instead."""
    for op in model_t.subgraphs[subgraph].operators or []:
        if op.inputs is not None:
            op.inputs = np.asarray([new if t == old else t for t in ints(op.inputs)],
                                   dtype=np.int32)


def signature_io(model_t: Any, subgraph: int = 0) -> tuple[str, dict[str, int], dict[str, int]]:
    """(signature key, {input name: tensor index}, {output name: tensor index}) of the first
    SignatureDef on ``subgraph``; ModelError when there is none."""
    for sig in model_t.signatureDefs or []:
        if sig.subgraphIndex == subgraph:
            return (_text(sig.signatureKey),
                    {_text(m.name): int(m.tensorIndex) for m in sig.inputs or []},
                    {_text(m.name): int(m.tensorIndex) for m in sig.outputs or []})
    raise ModelError("the TFLite model has no SignatureDef (run the doctor's ensure_signature)")


def remove_unused(model_t: Any) -> None:
    """Drop tensors no op, graph I/O or signature references, then buffers no tensor or
    metadata references, and re-index everything (buffer 0 stays the empty sentinel)."""
    for sg_index, sg in enumerate(model_t.subgraphs):
        keep = sorted(_referenced_tensors(model_t, sg_index))
        remap = {old: new for new, old in enumerate(keep)}
        sg.tensors = [sg.tensors[i] for i in keep]
        _remap_tensor_refs(model_t, sg_index, remap)
    used = {0} | {m.buffer for m in model_t.metadata or []}
    used |= set(ints(model_t.metadataBuffer))  # the deprecated list MediaPipe's models still set
    used |= {t.buffer for sg in model_t.subgraphs for t in sg.tensors}
    keep_buffers = sorted(b for b in used if b < len(model_t.buffers))
    remap_buf = {old: new for new, old in enumerate(keep_buffers)}
    model_t.buffers = [model_t.buffers[i] for i in keep_buffers]
    for sg in model_t.subgraphs:
        for t in sg.tensors:
            t.buffer = remap_buf[t.buffer]
    for m in model_t.metadata or []:
        m.buffer = remap_buf[m.buffer]
    if model_t.metadataBuffer is not None and len(model_t.metadataBuffer):
        model_t.metadataBuffer = np.asarray(
            [remap_buf[b] for b in ints(model_t.metadataBuffer) if b in remap_buf], np.int32)


def _referenced_tensors(model_t: Any, sg_index: int) -> set[int]:
    sg = model_t.subgraphs[sg_index]
    refs = set(ints(sg.inputs)) | set(ints(sg.outputs))
    for op in sg.operators or []:
        refs |= set(ints(op.inputs)) | set(ints(op.outputs)) | set(ints(op.intermediates))
    for sig in model_t.signatureDefs or []:
        if sig.subgraphIndex == sg_index:
            refs |= {int(m.tensorIndex) for m in (sig.inputs or []) + (sig.outputs or [])}
    refs.discard(-1)  # optional op inputs
    return refs


def _remap_tensor_refs(model_t: Any, sg_index: int, remap: dict[int, int]) -> None:
    def conv(values: Any) -> Any:
        if values is None:
            return None
        return np.asarray([remap.get(v, -1) if v != -1 else -1 for v in ints(values)],
                          dtype=np.int32)

    sg = model_t.subgraphs[sg_index]
    sg.inputs, sg.outputs = conv(sg.inputs), conv(sg.outputs)
    for op in sg.operators or []:
        op.inputs, op.outputs, op.intermediates = (
            conv(op.inputs),
            conv(op.outputs),
            conv(op.intermediates),
        )
    for sig in model_t.signatureDefs or []:
        if sig.subgraphIndex == sg_index:
            for m in (sig.inputs or []) + (sig.outputs or []):
                m.tensorIndex = remap[int(m.tensorIndex)]


def ints(values: Any) -> list[int]:
    """A flatbuffer index vector (numpy array or None) as a list of ints."""
    return [] if values is None else [int(v) for v in values]


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value,
                                                        (bytes, bytearray)) else str(value or "")


def verify_runs(model: bytes, what: str = "model") -> list[np.ndarray]:
    """Load the model in LiteRT and invoke it once on zeros; ModelError naming ``what`` if it
    does not allocate, does not run or returns non-finite values. The raw outputs."""
    try:
        backend = load_backend(model, "tflite")
        outs = backend.run([np.zeros(s.shape, dtype=s.dtype) for s in backend.inputs])
    except EdgekitError as exc:
        raise ModelError(f"{what} does not run in LiteRT: {exc}") from None
    if any(o.dtype.kind == "f" and not np.all(np.isfinite(o)) for o in outs):
        raise ModelError(f"{what} produces non-finite outputs in LiteRT")
    return outs


def dense_model(n_in: int, n_out: int, *, seed: int = 0, bias_std: float = 0.0,
                signature: bool = False) -> bytes:
    """A one-op float model y = x @ W.T + b (input 'x' (1, n_in), output 'y'): seeded normal
    weights (std 0.05), bias normal with ``bias_std`` (zeros when 0); for tests and benchmarks."""
    rng = np.random.default_rng(seed)
    model_t = schema.ModelT()
    model_t.version, model_t.buffers, model_t.operatorCodes = 3, [schema.BufferT()], []
    sg = schema.SubGraphT()
    sg.tensors, sg.operators = [], []
    model_t.subgraphs = [sg]
    x = add_tensor(model_t, "x", (1, n_in), np.float32)
    w = add_tensor(model_t, "w", (n_out, n_in), np.float32,
                   data=rng.normal(0, 0.05, (n_out, n_in)).astype(np.float32))
    bias = (rng.normal(0, bias_std, n_out) if bias_std else np.zeros(n_out)).astype(np.float32)
    b = add_tensor(model_t, "b", (n_out,), np.float32, data=bias)
    y = add_tensor(model_t, "y", (1, n_out), np.float32)
    insert_op(model_t, "FULLY_CONNECTED", [x, w, b], [y], 0)
    sg.operators[0].builtinOptionsType = schema.BuiltinOptions.FullyConnectedOptions
    sg.operators[0].builtinOptions = schema.FullyConnectedOptionsT()
    sg.inputs, sg.outputs = np.array([x], dtype=np.int32), np.array([y], dtype=np.int32)
    if signature:
        sig = schema.SignatureDefT()
        sig.signatureKey, sig.subgraphIndex = b"serving_default", 0
        sig.inputs, sig.outputs = [schema.TensorMapT()], [schema.TensorMapT()]
        sig.inputs[0].name, sig.inputs[0].tensorIndex = b"x", x
        sig.outputs[0].name, sig.outputs[0].tensorIndex = b"y", y
        model_t.signatureDefs = [sig]
    return save(model_t)
