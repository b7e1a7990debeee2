"""Structural checks of model bytes before any runtime sees them (no onnx/flatbuffers needed).

- ONNX: a bundle must be self-contained. A tensor anywhere in the model (initializers, sparse
  initializers, node attributes, subgraphs, functions, training graphs) whose ``data_location``
  is EXTERNAL or that has ``external_data`` entries is refused: ONNX Runtime would read that file
  relative to the working directory of the process (``/`` under systemd).
- TFLite: a flatbuffer verifier (bounds of every table, vector and string the runtimes read;
  tensor, buffer, opcode and subgraph indices in range; constant data as long as the tensor's
  shape needs; buffer offsets inside the file). TFLM trusts its input completely, so a model
  only reaches it after passing here. Options tables of operators (unions) are checked for their
  own extent, not field by field.

Both raise :class:`ModelError` with one line naming what is wrong.
"""

from __future__ import annotations

import math
import struct

from ..errors import ModelError

ONNX_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
_MAX_DEPTH = 64

# ONNX field numbers of the messages that can hold tensors (onnx.proto), per message kind.
_ONNX_CHILDREN: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "function": {7: "node", 11: "attribute"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {},
}
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 13, 14


def check_model(data: bytes, fmt: str) -> None:
    """Refuse model bytes a runtime must not load (see the module docstring)."""
    if fmt == "onnx":
        check_onnx(data)
    elif fmt in ("tflite", "tflm-c"):
        check_tflite(data)


# --- ONNX ------------------------------------------------------------------------------------

def check_onnx(data: bytes) -> None:
    _walk_onnx(memoryview(data), "model", 0)


def _walk_onnx(buf: memoryview, kind: str, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise ModelError("ONNX model nests subgraphs deeper than 64 levels")
    children = _ONNX_CHILDREN[kind]
    for field, wire, value in _proto_fields(buf):
        if kind == "tensor":
            if field == _TENSOR_EXTERNAL_DATA or (field == _TENSOR_DATA_LOCATION and wire == 0
                                                  and value == ONNX_EXTERNAL):
                raise ModelError("ONNX model references external data (a file outside the "
                                 "bundle); inline it before packing")
        elif field in children and wire == 2:
            _walk_onnx(value, children[field], depth + 1)


def _proto_fields(buf: memoryview):
    """(field number, wire type, value) of one protobuf message; value is an int or a view."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if size > end - pos:
                raise ModelError("not an ONNX model (truncated protobuf field)")
            value, pos = buf[pos:pos + size], pos + size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            value = 0
        else:
            raise ModelError(f"not an ONNX model (protobuf wire type {wire})")
        if pos > end or field == 0:
            raise ModelError("not an ONNX model (truncated protobuf)")
        yield field, wire, value


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ModelError("not an ONNX model (bad protobuf varint)")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


# --- TFLite ----------------------------------------------------------------------------------

# Bytes per element of TFLite TensorType codes with a fixed size (schema.fbs).
# Sub-byte types (int4, int2, uint4) count as their packed size, the smallest a runtime reads.
_TYPE_BYTES = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 6: 1, 7: 2, 8: 8, 9: 1, 10: 8, 11: 16, 12: 8,
               15: 4, 16: 2, 17: 0.5, 18: 2, 19: 0.25, 20: 0.5, 21: 1, 22: 1}


class _Flat:
    """Bounds-checked reads of one flatbuffer."""

    def __init__(self, data: bytes) -> None:
        self.data, self.size = data, len(data)

    def fail(self, what: str) -> ModelError:
        return ModelError(f"corrupt TFLite flatbuffer: {what}")

    def scalar(self, fmt: str, pos: int, what: str) -> int:
        n = struct.calcsize(fmt)
        if pos < 0 or pos + n > self.size:
            raise self.fail(f"{what} lies outside the file")
        return struct.unpack_from("<" + fmt, self.data, pos)[0]

    def deref(self, pos: int, what: str) -> int:
        target = pos + self.scalar("I", pos, what)
        if target >= self.size:
            raise self.fail(f"{what} points outside the file")
        return target

    def table(self, pos: int, what: str) -> _Table:
        if pos % 4:
            raise self.fail(f"{what} is not aligned")
        vtable = pos - self.scalar("i", pos, what)
        vsize = self.scalar("H", vtable, f"{what} vtable")
        osize = self.scalar("H", vtable + 2, f"{what} vtable")
        if vsize < 4 or vsize % 2 or vtable + vsize > self.size or pos + osize > self.size or osize < 4:
            raise self.fail(f"{what} has a bad vtable")
        slots = [self.scalar("H", vtable + 4 + 2 * i, what) for i in range((vsize - 4) // 2)]
        return _Table(self, pos, osize, slots, what)

    def vector(self, pos: int, elem: int, what: str) -> tuple[int, int]:
        """(start of the elements, count) of the vector at ``pos``."""
        if pos % 4:
            raise self.fail(f"{what} is not aligned")
        count = self.scalar("I", pos, what)
        if count * elem > self.size - pos - 4:
            raise self.fail(f"{what} ({count} elements) runs past the end of the file")
        return pos + 4, count


class _Table:
    def __init__(self, flat: _Flat, pos: int, osize: int, slots: list[int], what: str) -> None:
        self.flat, self.pos, self.osize, self.slots, self.what = flat, pos, osize, slots, what

    def _field(self, slot: int, width: int) -> int | None:
        off = self.slots[slot] if slot < len(self.slots) else 0
        if not off:
            return None
        if off + width > self.osize:
            raise self.flat.fail(f"{self.what} field {slot} lies outside its table")
        return self.pos + off

    def scalar(self, slot: int, fmt: str, default: int = 0) -> int:
        at = self._field(slot, struct.calcsize(fmt))
        return default if at is None else self.flat.scalar(fmt, at, self.what)

    def ref(self, slot: int) -> int | None:
        at = self._field(slot, 4)
        return None if at is None else self.flat.deref(at, f"{self.what} field {slot}")

    def table(self, slot: int, what: str) -> _Table | None:
        at = self.ref(slot)
        return None if at is None else self.flat.table(at, what)

    def tables(self, slot: int, what: str) -> list[_Table]:
        at = self.ref(slot)
        if at is None:
            return []
        start, count = self.flat.vector(at, 4, what)
        return [self.flat.table(self.flat.deref(start + 4 * i, what), f"{what}[{i}]")
                for i in range(count)]

    def ints(self, slot: int, fmt: str, what: str) -> list[int]:
        at = self.ref(slot)
        if at is None:
            return []
        size = struct.calcsize(fmt)
        start, count = self.flat.vector(at, size, what)
        return list(struct.unpack_from(f"<{count}{fmt}", self.flat.data, start))

    def bytes_len(self, slot: int, what: str) -> int:
        at = self.ref(slot)
        return 0 if at is None else self.flat.vector(at, 1, what)[1]

    def string(self, slot: int, what: str) -> None:
        at = self.ref(slot)
        if at is not None:
            start, count = self.flat.vector(at, 1, what)
            if start + count >= self.flat.size or self.flat.data[start + count] != 0:
                raise self.flat.fail(f"{what} has no terminator")


def check_tflite(data: bytes, allow_sparse: bool = True) -> None:
    """Verify a TFLite flatbuffer's structure and indices (see the module docstring).
    ``allow_sparse``: a sparse constant's buffer may be shorter than its shape (LiteRT verifies
    the sparsity format itself; TFLM has no sparse kernels and must not get one)."""
    flat = _Flat(bytes(data))
    if flat.size < 8 or data[4:8] != b"TFL3":
        raise ModelError("not a TFLite flatbuffer (missing 'TFL3' identifier)")
    model = flat.table(flat.deref(0, "root"), "model")
    codes = model.tables(1, "operator_codes")
    for i, code in enumerate(codes):
        code.string(1, f"operator_codes[{i}].custom_code")
    buffers = [_buffer_size(flat, b, i) for i, b in enumerate(model.tables(4, "buffers"))]
    subgraphs = model.tables(2, "subgraphs")
    if not subgraphs:
        raise flat.fail("no subgraph")
    for g, sg in enumerate(subgraphs):
        _check_subgraph(flat, sg, g, len(codes), buffers, allow_sparse)
    for i in model.ints(5, "i", "metadata_buffer"):
        _index(flat, i, len(buffers), "metadata_buffer entry")
    for i, meta in enumerate(model.tables(6, "metadata")):
        meta.string(0, f"metadata[{i}].name")
        _index(flat, meta.scalar(1, "I"), len(buffers), f"metadata[{i}].buffer")
    for i, sig in enumerate(model.tables(7, "signature_defs")):
        _check_signature(flat, sig, i, subgraphs)


def _index(flat: _Flat, value: int, count: int, what: str) -> int:
    if not 0 <= value < count:
        raise flat.fail(f"{what} {value} is out of range (0..{count - 1})")
    return value


def _buffer_size(flat: _Flat, buf: _Table, i: int) -> int:
    """Bytes of constant data the buffer provides (inline, or after the flatbuffer)."""
    inline = buf.bytes_len(0, f"buffers[{i}].data")
    offset, size = buf.scalar(1, "Q"), buf.scalar(2, "Q")
    if offset > 1 and (offset > flat.size or size > flat.size - offset):
        raise flat.fail(f"buffers[{i}] data ({size} bytes at offset {offset}) lies outside the file")
    return inline or (size if offset > 1 else 0)


def _check_subgraph(flat: _Flat, sg: _Table, g: int, n_codes: int, buffers: list[int],
                    allow_sparse: bool) -> None:
    where = f"subgraphs[{g}]"
    tensors = sg.tables(0, f"{where}.tensors")
    for t, tensor in enumerate(tensors):
        _check_tensor(flat, tensor, f"{where}.tensors[{t}]", buffers, allow_sparse)
    for slot, name in ((1, "inputs"), (2, "outputs")):
        for i in sg.ints(slot, "i", f"{where}.{name}"):
            _index(flat, i, len(tensors), f"{where}.{name} tensor")
    for o, op in enumerate(sg.tables(3, f"{where}.operators")):
        what = f"{where}.operators[{o}]"
        _index(flat, op.scalar(0, "I"), n_codes, f"{what}.opcode_index")
        for slot, name in ((1, "inputs"), (2, "outputs"), (8, "intermediates")):
            for i in op.ints(slot, "i", f"{what}.{name}"):
                if i != -1:  # -1: an optional input left out
                    _index(flat, i, len(tensors), f"{what}.{name} tensor")
        op.table(4, f"{what}.builtin_options")
        op.bytes_len(5, f"{what}.custom_options")
        op.ints(7, "B", f"{what}.mutating_variable_inputs")
        op.table(12, f"{what}.builtin_options_2")
    sg.string(4, f"{where}.name")


def _check_tensor(flat: _Flat, tensor: _Table, what: str, buffers: list[int],
                  allow_sparse: bool) -> None:
    shape = tensor.ints(0, "i", f"{what}.shape")
    if any(d < 0 or d > 1 << 31 for d in shape):
        raise flat.fail(f"{what} has shape {_short(shape)}")
    tensor.ints(7, "i", f"{what}.shape_signature")
    tensor.string(3, f"{what}.name")
    buffer = _index(flat, tensor.scalar(2, "I"), max(len(buffers), 1), f"{what}.buffer")
    elements = 1
    for d in shape:
        elements *= d
    ttype = tensor.scalar(1, "b")
    have = buffers[buffer] if buffers else 0
    need = math.ceil(elements * _TYPE_BYTES.get(ttype, 0))
    sparse = tensor.table(6, f"{what}.sparsity") is not None  # stored compressed (DENSIFY)
    if sparse and not allow_sparse:
        raise flat.fail(f"{what} is sparse, which this runtime does not run")
    if have and need and have < need and not sparse:
        raise flat.fail(f"{what} needs {need} bytes of constant data, its buffer has {have}")
    _check_quantization(flat, tensor.table(4, f"{what}.quantization"), shape, what)


def _check_quantization(flat: _Flat, q: _Table | None, shape: list[int], what: str) -> None:
    if q is None:
        return
    scales = q.ints(2, "f", f"{what}.quantization.scale")
    zeros = q.ints(3, "q", f"{what}.quantization.zero_point")
    q.ints(0, "f", f"{what}.quantization.min")
    q.ints(1, "f", f"{what}.quantization.max")
    q.table(5, f"{what}.quantization.details")
    axis = q.scalar(6, "i")
    if len(scales) > 1 and not (0 <= axis < len(shape) and shape[axis] == len(scales)):
        raise flat.fail(f"{what} has {len(scales)} scales for axis {axis} of shape {_short(shape)}")
    if len(zeros) > 1 and len(zeros) != len(scales):
        raise flat.fail(f"{what} has {len(scales)} scales but {len(zeros)} zero points")


def _short(values: list[int]) -> str:
    return str(values) if len(values) <= 8 else f"{str(values[:8])[:-1]}, ...] ({len(values)} dims)"


def _check_signature(flat: _Flat, sig: _Table, i: int, subgraphs: list[_Table]) -> None:
    what = f"signature_defs[{i}]"
    sg = subgraphs[_index(flat, sig.scalar(4, "I"), len(subgraphs), f"{what}.subgraph_index")]
    n_tensors = len(sg.tables(0, "tensors"))
    sig.string(2, f"{what}.signature_key")
    for slot in (0, 1):
        for j, entry in enumerate(sig.tables(slot, f"{what}.tensors")):
            entry.string(0, f"{what}.tensors[{j}].name")
            _index(flat, entry.scalar(1, "I"), n_tensors, f"{what}.tensor_index")
