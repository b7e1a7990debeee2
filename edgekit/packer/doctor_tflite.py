"""Repairs a TFLite model from the wild needs before calibration tools accept it.

Each function takes model bytes and returns ``(model bytes, steps applied)``; an empty step
list means the model was already fine and is returned unchanged. Every changed model is
loaded and run once in LiteRT before it is returned.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ..errors import ModelError
from ..tflite import model as tm

SIGNATURE_KEY = "serving_default"
_CONVERTER_PREFIX = "serving_default_"


def normalise_opcodes(model: bytes) -> tuple[bytes, list[str]]:
    """Operator codes stored only in ``deprecated_builtin_code`` (``builtin_code`` 0, i.e. ADD,
    as older converters wrote them) get ``builtin_code = max(builtin_code, deprecated)``.
    LiteRT reads the max of both; ai-edge-quantizer 0.10 reads only ``builtin_code``, takes every
    such op for ADD and quantizes conv weights like activations (LiteRT then refuses them)."""
    model_t = tm.load(model)
    fixed = []
    for code in model_t.operatorCodes or []:
        if code.deprecatedBuiltinCode > code.builtinCode:
            code.builtinCode = int(code.deprecatedBuiltinCode)
            fixed.append(tm.op_name(model_t, _FakeOp(model_t.operatorCodes.index(code))))
    if not fixed:
        return model, []
    out = tm.save(model_t)
    tm.verify_runs(out, "model with normalised opcodes")
    return out, [f"normalise_opcodes ({len(fixed)} operator codes only in "
                 f"deprecated_builtin_code: {', '.join(fixed)})"]


class _FakeOp:
    """Just enough of an OperatorT for ``tm.op_name``."""

    def __init__(self, opcode_index: int) -> None:
        self.opcodeIndex = opcode_index


def ensure_signature(model: bytes) -> tuple[bytes, list[str]]:
    """Add a 'serving_default' SignatureDef over subgraph 0 when the model has none
    (ai-edge-quantizer calibrates by signature and refuses a model with 0 signatures).
    Names come from the tensor names, sanitised: 'serving_default_image:0' -> 'image'."""
    model_t = tm.load(model)
    if model_t.signatureDefs:
        return model, []
    sg = model_t.subgraphs[0]
    sig = tm.schema.SignatureDefT()
    sig.signatureKey, sig.subgraphIndex = SIGNATURE_KEY.encode(), 0
    sig.inputs = _tensor_maps(sg, sg.inputs, "input")
    sig.outputs = _tensor_maps(sg, sg.outputs, "output")
    model_t.signatureDefs = [sig]
    out = tm.save(model_t)
    tm.verify_runs(out, "model with added signature")
    names_in = ", ".join(m.name.decode() for m in sig.inputs)
    names_out = ", ".join(m.name.decode() for m in sig.outputs)
    return out, [f"add_signature {SIGNATURE_KEY} (inputs: {names_in}; outputs: {names_out})"]


def _tensor_maps(sg: Any, indices: Any, prefix: str) -> list[Any]:
    maps, taken = [], set()
    for pos, t in enumerate(indices if indices is not None else []):
        name = sanitise_name(tm.tensor_name(sg.tensors[int(t)])) or f"{prefix}_{pos}"
        while name in taken:
            name = f"{name}_{pos}"
        taken.add(name)
        m = tm.schema.TensorMapT()
        m.name, m.tensorIndex = name.encode(), int(t)
        maps.append(m)
    return maps


def sanitise_name(name: str) -> str:
    """A signature argument name: converter prefix and ':0' suffix dropped, anything outside
    [A-Za-z0-9_] replaced by '_', never starting with a digit."""
    name = name.removeprefix(_CONVERTER_PREFIX)
    name = re.sub(r":\d+$", "", name)
    name = re.sub(r"\W", "_", name, flags=re.ASCII).strip("_")
    return f"t_{name}" if name[:1].isdigit() else name


def decompose_fp16_weights(model: bytes) -> tuple[bytes, list[str]]:
    """float16 constant -> DEQUANTIZE -> x  becomes  x = float32 constant (the op is removed).
    ai-edge-quantizer mishandles float16-weight models (static: crashes or writes a model that
    does not allocate; dynamic: changes nothing)."""
    model_t = tm.load(model)
    count = 0
    for sg_index, sg in enumerate(model_t.subgraphs):
        kept = []
        for op in sg.operators or []:
            if _is_fp16_dequantize(model_t, sg_index, op):
                src, dst = int(op.inputs[0]), int(op.outputs[0])
                weights = tm.tensor_array(model_t, src, sg_index).astype(np.float32)
                tm.set_tensor_array(model_t, dst, weights, sg_index)
                count += 1
            else:
                kept.append(op)
        sg.operators = kept
    if not count:
        return model, []
    tm.remove_unused(model_t)
    out = tm.save(model_t)
    tm.verify_runs(out, "model with decomposed float16 weights")
    return out, [f"decompose_fp16_weights ({count} float16 constants -> float32)"]


def densify_sparse_weights(model: bytes) -> tuple[bytes, list[str]]:
    """sparse constant -> DENSIFY -> x  becomes  x = dense constant (the op is removed).
    MediaPipe's ``*_sparse`` models store weights in TFLite's sparsity format, which the
    quantizers and TFLM cannot read. LiteRT itself densifies them: its DENSIFY outputs are read
    after one invoke, so the format is decoded by the runtime, not re-implemented here."""
    model_t = tm.load(model)
    sg = model_t.subgraphs[0]
    ops = [op for op in sg.operators or [] if tm.op_name(model_t, op) == "DENSIFY"
           and len(tm.ints(op.inputs)) == 1 and sg.tensors[tm.ints(op.inputs)[0]].buffer]
    if not ops:
        return model, []
    dense = _densified(model, [tm.ints(op.outputs)[0] for op in ops])
    for op in ops:
        out = tm.ints(op.outputs)[0]
        tm.set_tensor_array(model_t, out, dense[out])
        sg.operators.remove(op)
    tm.remove_unused(model_t)
    out = tm.save(model_t)
    tm.verify_runs(out, "model with densified weights")
    return out, [f"densify_sparse_weights ({len(ops)} sparse constants -> dense)"]


def _densified(model: bytes, tensors: list[int]) -> dict[int, np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    try:
        it = Interpreter(model_content=bytes(model), experimental_preserve_all_tensors=True,
                         experimental_op_resolver_type=(
                             OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES))
        it.allocate_tensors()
        for d in it.get_input_details():
            it.set_tensor(d["index"], np.zeros(d["shape"], dtype=d["dtype"]))
        it.invoke()
        return {t: np.array(it.get_tensor(t)) for t in tensors}
    except (ValueError, RuntimeError) as exc:
        raise ModelError(f"LiteRT cannot densify the model's sparse weights: "
                         f"{str(exc).splitlines()[0]}") from None


def _is_fp16_dequantize(model_t: Any, sg_index: int, op: Any) -> bool:
    if tm.op_name(model_t, op) != "DEQUANTIZE" or op.inputs is None or len(op.inputs) != 1:
        return False
    src = model_t.subgraphs[sg_index].tensors[int(op.inputs[0])]
    return (tm.tensor_type_name(src.type) == "float16"
            and tm.tensor_array(model_t, int(op.inputs[0]), sg_index) is not None)


def freeze_input_shapes(model: bytes, shapes: dict[str, tuple[int, ...]],
                        default_batch: int | None = None) -> tuple[bytes, list[str]]:
    """Fix every dynamic (-1) input dimension from ``shapes`` (keyed by signature input name or
    tensor name) — a dynamic batch alone takes ``default_batch`` (the target's) — then propagate
    static shapes to every tensor by letting LiteRT allocate the resized graph. ModelError when
    a dynamic input is left unknown or a shape does not fit."""
    model_t = tm.load(model)
    sg = model_t.subgraphs[0]
    by_name = _input_names(model_t)
    _check_shape_keys(shapes, by_name)
    resize, steps = {}, []
    for t, names in by_name.items():
        tensor = sg.tensors[t]
        signature = [int(d) for d in (tensor.shapeSignature if tensor.shapeSignature is not None
                                      else tensor.shape)]
        given = next((tuple(shapes[n]) for n in names if n in shapes), None)
        if given is None and default_batch and signature[:1] == [-1] and -1 not in signature[1:]:
            given = (default_batch, *signature[1:])
        if -1 not in signature and given is None:
            continue
        shape = _resolved_shape(names[0], signature, given)
        if tuple(shape) != tuple(signature):
            resize[t] = shape
            steps.append(f"freeze_input_shape {names[0]}: {_fmt(signature)} -> {_fmt(shape)}")
    if not resize:
        return model, []
    out = _apply_static_shapes(model, model_t, resize)
    tm.verify_runs(out, "model with frozen input shapes")
    return out, steps


def _input_names(model_t: Any) -> dict[int, list[str]]:
    """{input tensor index: [signature name (if any), tensor name]} for subgraph 0."""
    sg = model_t.subgraphs[0]
    names = {int(t): [] for t in sg.inputs}
    try:
        _, sig_inputs, _ = tm.signature_io(model_t)
    except ModelError:
        sig_inputs = {}
    for name, t in sig_inputs.items():
        names.setdefault(t, []).append(name)
    for t in names:
        names[t].append(tm.tensor_name(sg.tensors[t]))
    return names


def _check_shape_keys(shapes: dict[str, tuple[int, ...]], by_name: dict[int, list[str]]) -> None:
    known = {n for names in by_name.values() for n in names}
    for key in shapes:
        if key not in known:
            raise ModelError(f"--input-shape names an unknown input {key!r} "
                             f"(inputs: {', '.join(names[0] for names in by_name.values())})")


def _resolved_shape(name: str, signature: list[int], given: tuple[int, ...] | None) -> list[int]:
    if given is None:
        raise ModelError(f"input '{name}' has a dynamic shape {_fmt(signature)}; "
                         f"give it with --input-shape {name}:" + ",".join(
                             "1" if d == -1 else str(d) for d in signature))
    if len(given) != len(signature) \
            or any(s not in (-1, g) for s, g in zip(signature, given, strict=True)) \
            or any(int(g) < 1 for g in given):
        raise ModelError(f"input '{name}': shape {_fmt(given)} does not fit {_fmt(signature)}")
    return [int(g) for g in given]


def _apply_static_shapes(model: bytes, model_t: Any, resize: dict[int, list[int]]) -> bytes:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    try:
        it = Interpreter(model_content=bytes(model), experimental_op_resolver_type=(
            OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES))
        for t, shape in resize.items():
            it.resize_tensor_input(t, shape, strict=False)
        it.allocate_tensors()
        details = it.get_tensor_details()
    except (ValueError, RuntimeError) as exc:
        raise ModelError(
            f"LiteRT cannot resize the model's inputs: {str(exc).splitlines()[0]}"
        ) from None
    sg = model_t.subgraphs[0]
    for d in details:
        if d["index"] < len(sg.tensors) and d["shape"].size:
            tensor = sg.tensors[d["index"]]
            tensor.shape = np.asarray(d["shape"], dtype=np.int32)
            tensor.shapeSignature = None
    return tm.save(model_t)


def _fmt(shape: Any) -> str:
    return "(" + ", ".join(str(int(d)) for d in shape) + ")"



# --- MediaPipe's custom transpose convolution ---------------------------------------------

_MP_TRANSPOSE_CONV = "Convolution2DTransposeBias"
_TFLITE_PADDING = {1: 0, 2: 1}  # TfLitePadding SAME/VALID -> schema Padding SAME/VALID


def rewrite_transpose_conv_bias(model: bytes) -> tuple[bytes, list[str]]:
    """MediaPipe's custom ``Convolution2DTransposeBias`` (inputs: x, OHWI weights, bias; custom
    options: the raw ``TfLiteTransposeConvParams`` struct {padding, stride_w, stride_h} as int32)
    becomes the builtin TRANSPOSE_CONV (output shape, weights, x, bias), which LiteRT, the
    quantizers and TFLM all have."""
    model_t = tm.load(model)
    count = 0
    for sg in model_t.subgraphs:
        for op in sg.operators or []:
            if tm.op_name(model_t, op) == f"CUSTOM:{_MP_TRANSPOSE_CONV}":
                _to_transpose_conv(model_t, sg, op)
                count += 1
    if not count:
        return model, []
    tm.remove_unused(model_t)
    out = tm.save(model_t)
    tm.verify_runs(out, "model with rewritten transpose convolutions")
    return out, [f"rewrite_transpose_conv ({count} custom {_MP_TRANSPOSE_CONV} -> "
                 "TRANSPOSE_CONV with bias)"]


def _to_transpose_conv(model_t: Any, sg: Any, op: Any) -> None:
    raw = bytes(np.asarray(op.customOptions, dtype=np.uint8)) if op.customOptions is not None \
        else b""
    if len(raw) < 12 or len(tm.ints(op.inputs)) != 3:
        raise ModelError(f"{_MP_TRANSPOSE_CONV}: unexpected inputs or options "
                         f"({len(tm.ints(op.inputs))} inputs, {len(raw)} option bytes)")
    padding, stride_w, stride_h = (int(v) for v in np.frombuffer(raw[:12], dtype="<i4"))
    if padding not in _TFLITE_PADDING:
        raise ModelError(f"{_MP_TRANSPOSE_CONV}: unknown padding code {padding}")
    x, w, b = tm.ints(op.inputs)
    out = tm.ints(op.outputs)[0]
    sg_index = model_t.subgraphs.index(sg)
    shape = np.asarray(sg.tensors[out].shape, dtype=np.int32)
    if shape.size != 4 or np.any(shape < 1):
        raise ModelError(f"{_MP_TRANSPOSE_CONV}: output shape {list(shape)} is not static 4-D")
    name = f"{tm.tensor_name(sg.tensors[out])}_output_shape"
    shape_t = tm.add_tensor(model_t, name, (4,), np.int32, data=shape, subgraph=sg_index)
    options = tm.schema.TransposeConvOptionsT()
    options.padding, options.strideW, options.strideH = _TFLITE_PADDING[padding], stride_w, \
        stride_h
    op.opcodeIndex = tm.opcode_index(model_t, "TRANSPOSE_CONV", version=3)
    op.inputs = np.asarray([shape_t, w, x, b], dtype=np.int32)
    op.builtinOptionsType = tm.schema.BuiltinOptions.TransposeConvOptions
    op.builtinOptions = options
    op.customOptions = None
