"""The ONNX model helpers the packer and the targets share (onnx itself is imported lazily)."""

from __future__ import annotations

from typing import Any

from .errors import ModelError


def parse_onnx(data: bytes) -> Any:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_from_string(data)
    except (DecodeError, ValueError, RuntimeError):
        raise ModelError("not an ONNX model (protobuf does not parse)") from None
    if not model.graph.node:
        raise ModelError("not an ONNX model (no graph nodes)")
    return model


def op_names(data: bytes) -> list[str]:
    return [n.op_type for n in parse_onnx(data).graph.node]
