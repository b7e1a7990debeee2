"""Doctor for ONNX models: the repairs real models need before quantization and conversion.

Each function returns (model bytes, steps applied); the steps go into the manifest's recipe.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ..errors import ModelError
from ..onnx_model import parse_onnx
from .ingest import onnx_value_spec

# What onnx2tf/TensorFlow accept: the first character a letter, digit or '.'.
SAFE_NAME = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\\/>-]*$")


def freeze_input_shapes(data: bytes, shapes: dict[str, tuple[int, ...]], default_batch: int
                        ) -> tuple[bytes, list[str]]:
    """Give every dynamic input dim a value: from ``shapes``, or the target's batch for dim 0."""
    model = parse_onnx(data)
    init_names = {i.name for i in model.graph.initializer}
    steps = []
    unknown = set(shapes) - {v.name for v in model.graph.input}
    if unknown:
        raise ModelError(f"--input-shape names unknown input(s): {', '.join(sorted(unknown))}")
    for value in model.graph.input:
        if value.name in init_names:
            continue
        spec = onnx_value_spec(value)
        new = _frozen_shape(spec.name, spec.shape, shapes.get(spec.name), default_batch)
        if new != spec.shape:
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, new, strict=True):
                dim.Clear()
                dim.dim_value = size
            steps.append(f"froze input {spec.name} {_fmt(spec.shape)} -> {_fmt(new)}")
    if not steps:
        return data, []
    # Downstream value_info still carries symbolic dims; drop it and let shape inference redo it.
    del model.graph.value_info[:]
    for out in model.graph.output:
        for dim in out.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.Clear()
    return model.SerializeToString(), steps


def _frozen_shape(name: str, shape: tuple[int, ...], given: tuple[int, ...] | None,
                  default_batch: int) -> tuple[int, ...]:
    if given is not None:
        if len(given) != len(shape) or any(
                s >= 0 and s != g for s, g in zip(shape, given, strict=True)):
            raise ModelError(f"--input-shape {name}:{_fmt(given)} does not match the model's "
                             f"{_fmt(shape)}")
        return tuple(given)
    frozen = tuple(default_batch if (i == 0 and d < 0) else d for i, d in enumerate(shape))
    if any(d < 0 for d in frozen):
        raise ModelError(
            f"input {name!r} has dynamic dims {_fmt(shape)}; give "
            f"--input-shape {name}:{','.join(str(max(d, 1)) for d in frozen)} (your sizes)"
        )
    return frozen


def _fmt(shape: tuple[int, ...]) -> str:
    return "[" + ",".join("?" if d < 0 else str(d) for d in shape) + "]"


def simplify(data: bytes) -> tuple[bytes, list[str]]:
    """Constant folding and graph simplification with onnxslim; keeps the original on failure."""
    import onnxslim

    model = parse_onnx(data)
    before = len(model.graph.node)
    try:
        slim = onnxslim.slim(model)
    except Exception as exc:  # onnxslim raises anything; the unsimplified model is still valid
        return data, [f"simplify skipped ({type(exc).__name__})"]
    if slim is None:
        return data, []
    after = len(slim.graph.node)
    out = slim.SerializeToString()
    return out, [f"simplified with onnxslim: {before} -> {after} nodes"] if after != before else []


def sanitize_names(data: bytes) -> tuple[bytes, list[str]]:
    """Node names that converters reject (or missing names) become `<op>_<index>`."""
    model = parse_onnx(data)
    seen: set[str] = set()
    renamed = 0
    for i, node in enumerate(model.graph.node):
        name = node.name
        if not name or not SAFE_NAME.match(name) or name in seen:
            node.name = f"{node.op_type.lower()}_{i}"
            renamed += 1
        seen.add(node.name)
    if not renamed:
        return data, []
    return model.SerializeToString(), [f"renamed {renamed} node(s) to safe unique names"]


def decompose_fp16_weights(data: bytes) -> tuple[bytes, list[str]]:
    """float16 initializers read through Cast(to=float) become float32 initializers."""
    from onnx import TensorProto, numpy_helper

    model = parse_onnx(data)
    inits = {i.name: i for i in model.graph.initializer}
    casts = [n for n in model.graph.node if n.op_type == "Cast" and n.input[0] in inits
             and inits[n.input[0]].data_type == TensorProto.FLOAT16
             and _attr(n, "to") == TensorProto.FLOAT]
    if not casts:
        return data, []
    for node in casts:
        arr = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
        model.graph.initializer.append(numpy_helper.from_array(arr, node.output[0]))
        model.graph.node.remove(node)
    used = {i for n in model.graph.node for i in n.input}
    for init in list(model.graph.initializer):
        if init.data_type == TensorProto.FLOAT16 and init.name not in used:
            model.graph.initializer.remove(init)
    return model.SerializeToString(), [f"decomposed {len(casts)} float16 weight(s) to float32"]


def _attr(node: Any, name: str) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return None
