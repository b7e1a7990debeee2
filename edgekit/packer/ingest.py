"""Ingest: read a model file, recognise its format, and describe it (I/O, ops, params, MACs)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit_agent.bundle.manifest import TensorSpec
from edgekit_agent.bundle.modelcheck import check_tflite
from edgekit_agent.runtime import load_backend

from ..errors import ModelError
from ..onnx_model import parse_onnx
from ..tflite import model as tflite_model
from .onnx_external import inline_external_data

FORMATS = ("onnx", "tflite")


@dataclass(frozen=True)
class ModelInfo:
    format: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    ops: tuple[str, ...]
    params: int
    macs: int
    size_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "inputs": [t.to_dict() for t in self.inputs],
                "outputs": [t.to_dict() for t in self.outputs], "op_count": len(self.ops),
                "op_types": sorted(set(self.ops)), "params": self.params, "macs": self.macs,
                "size_bytes": self.size_bytes}


def read_model(path: str | Path) -> tuple[bytes, str]:
    """(bytes, format) for an .onnx or .tflite file; Keras/SavedModel through the `tf` extra."""
    path = Path(path)
    if path.is_dir() or path.suffix in (".keras", ".h5"):
        return _convert_keras(path), "tflite"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"{path}: no such model file") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({exc.strerror})") from None
    fmt = detect_format(data, str(path))
    if fmt == "onnx":
        data, _ = inline_external_data(data, path.parent)
    else:
        _verified_tflite(data, path)
    return data, fmt


def _verified_tflite(data: bytes, path: Path) -> None:
    """A structurally broken flatbuffer stops here, not as struct.error/IndexError (or a TFLM
    crash) further on."""
    try:
        check_tflite(data)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None


def detect_format(data: bytes, label: str = "model") -> str:
    if len(data) >= 8 and data[4:8] == tflite_model.FILE_IDENTIFIER:
        return "tflite"
    try:
        parse_onnx(data)
    except ModelError:
        raise ModelError(f"{label}: not an ONNX or TFLite model") from None
    return "onnx"


def describe(data: bytes, fmt: str) -> ModelInfo:
    if fmt == "onnx":
        return _describe_onnx(data)
    if fmt == "tflite":
        return _describe_tflite(data)
    raise ModelError(f"unknown model format {fmt!r} (allowed: {', '.join(FORMATS)})")


# --- ONNX ------------------------------------------------------------------------------------

_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64",
                9: "bool", 10: "float16", 11: "float64"}


def onnx_value_spec(value_info: Any) -> TensorSpec:
    ttype = value_info.type.tensor_type
    shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in ttype.shape.dim)
    return TensorSpec(name=value_info.name, shape=shape,
                      dtype=_ONNX_DTYPES.get(ttype.elem_type, f"onnx{ttype.elem_type}"))


def _describe_onnx(data: bytes) -> ModelInfo:
    from onnx import numpy_helper

    model = parse_onnx(data)
    graph = model.graph
    init_names = {i.name for i in graph.initializer}
    inputs = tuple(onnx_value_spec(v) for v in graph.input if v.name not in init_names)
    outputs = tuple(onnx_value_spec(v) for v in graph.output)
    params = sum(int(np.prod(i.dims)) for i in graph.initializer
                 if numpy_helper.to_array(i).dtype.kind == "f")
    return ModelInfo("onnx", inputs, outputs, tuple(n.op_type for n in graph.node), params,
                     _onnx_macs(model), len(data))


def _onnx_macs(model: Any) -> int:
    """Multiply-accumulates of Conv/Gemm/MatMul from inferred shapes (0 where unknown)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference is best effort on exotic models
        return 0
    shapes = {v.name: onnx_value_spec(v).shape for v in
              (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)}
    shapes.update({i.name: tuple(i.dims) for i in model.graph.initializer})
    macs = 0
    for node in model.graph.node:
        out = shapes.get(node.output[0], ())
        if any(d < 0 for d in out) or not out:
            continue
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in shapes:
            w = shapes[node.input[1]]
            macs += int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type in ("Gemm", "MatMul") and node.input[1] in shapes:
            a = shapes.get(node.input[0], ())
            k = a[-1] if a else 0
            macs += int(np.prod(out)) * max(int(k), 0)
    return macs


# --- TFLite ----------------------------------------------------------------------------------

def _describe_tflite(data: bytes) -> ModelInfo:
    model_t = tflite_model.load(data)
    backend = load_backend(data, "tflite")
    sg = model_t.subgraphs[0]
    params = 0
    for t in sg.tensors:
        arr = tflite_model.tensor_array(model_t, sg.tensors.index(t)) if t.buffer else None
        if arr is not None and arr.dtype.kind in "fi" and arr.ndim >= 1 and arr.size > 1:
            params += arr.size
    return ModelInfo("tflite", backend.inputs, backend.outputs,
                     tuple(tflite_model.op_names(model_t)),
                     params, _tflite_macs(model_t), len(data))


def _tflite_macs(model_t: Any) -> int:
    sg = model_t.subgraphs[0]
    macs = 0
    for op in sg.operators or []:
        name = tflite_model.op_name(model_t, op)
        out = sg.tensors[op.outputs[0]].shape
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") and len(op.inputs) > 1:
            w = sg.tensors[op.inputs[1]].shape
            per_out = int(np.prod(w[1:])) if name != "DEPTHWISE_CONV_2D" else int(np.prod(w[1:3]))
            macs += int(np.prod(out)) * per_out
    return macs


def _convert_keras(path: Path) -> bytes:
    try:
        import tensorflow as tf
    except ImportError:
        raise ModelError(
            "Keras/SavedModel input needs the tf extra: pip install 'edgekit[tf]'"
        ) from None
    try:
        if path.is_dir():
            converter = tf.lite.TFLiteConverter.from_saved_model(str(path))
        else:
            converter = tf.lite.TFLiteConverter.from_keras_model(tf.keras.models.load_model(path))
        return converter.convert()
    except Exception as exc:  # TF raises many unrelated types here
        raise ModelError(
            f"{path}: TensorFlow cannot convert it ({str(exc).splitlines()[0][:200]})"
        ) from None
