"""A compact binary encoding of named tensors, for offload payloads (never JSON lists).

Layout (all integers little-endian)::

    b"EKT1"  u8 count
    count x  { u8 name_len, name (UTF-8), u8 dtype code, u8 ndim, ndim x u32 dim }
    count x  raw C-order little-endian bytes of each tensor, in header order

Sizes are bounded (:data:`MAX_TENSORS`, :data:`MAX_NDIM`, :data:`MAX_BYTES`) and every field is
checked before anything is allocated: a short, long or lying blob is a ``TransportError``.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

import numpy as np

from ..errors import TransportError

MAGIC = b"EKT1"
MAX_TENSORS = 32
MAX_NDIM = 8
MAX_BYTES = 16 << 20
DTYPES = ("float32", "float16", "int8", "uint8", "int16", "int32", "int64", "bool", "float64")
_CODE = {name: i for i, name in enumerate(DTYPES)}
_U32 = struct.Struct("<I")


def encode(tensors: Mapping[str, np.ndarray]) -> bytes:
    """The blob for ``{name: array}`` (arrays of a dtype in :data:`DTYPES`)."""
    if len(tensors) > MAX_TENSORS:
        raise TransportError(f"{len(tensors)} tensors, over the limit of {MAX_TENSORS}")
    head, bodies, total = [MAGIC, bytes([len(tensors)])], [], 0
    for name, value in tensors.items():
        a = np.asarray(value)
        code = _CODE.get(a.dtype.name)
        raw_name = name.encode("utf-8")
        if code is None or not 0 < len(raw_name) < 256 or a.ndim > MAX_NDIM:
            raise TransportError(f"tensor {name!r} ({a.dtype}, {a.ndim} dims) cannot be encoded")
        head += [bytes([len(raw_name)]), raw_name, bytes([code, a.ndim]),
                 b"".join(_U32.pack(d) for d in a.shape)]
        body = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()
        total += len(body)
        bodies.append(body)
    if total > MAX_BYTES:
        raise TransportError(f"tensors of {total} bytes, over the {MAX_BYTES} byte limit")
    return b"".join(head + bodies)


def decode(blob: bytes | memoryview) -> dict[str, np.ndarray]:
    """``{name: array}`` from a blob :func:`encode` wrote; anything else is a ``TransportError``."""
    view = memoryview(blob)
    specs, pos = _header(view)
    out: dict[str, np.ndarray] = {}
    for name, dtype, shape, nbytes in specs:
        out[name] = np.frombuffer(view[pos:pos + nbytes], dtype=dtype).reshape(shape).copy()
        pos += nbytes
    if pos != len(view):
        raise TransportError(f"tensor blob has {len(view) - pos} trailing bytes")
    return out


def nbytes(blob: bytes | memoryview) -> int:
    """Validate the header only and return the tensors' payload size (for routing decisions)."""
    view = memoryview(blob)
    specs, pos = _header(view)
    size = sum(s[3] for s in specs)
    if pos + size != len(view):
        raise TransportError(f"tensor blob is {len(view)} bytes, its header says {pos + size}")
    return size


def _header(view: memoryview) -> tuple[list[tuple[str, np.dtype, tuple[int, ...], int]], int]:
    if len(view) < 5 or bytes(view[:4]) != MAGIC:
        raise TransportError("not a tensor blob (bad magic)")
    count, pos = view[4], 5
    if count > MAX_TENSORS:
        raise TransportError(f"tensor blob declares {count} tensors, over the limit of {MAX_TENSORS}")
    specs, total, names = [], 0, set()
    for _ in range(count):
        name, dtype, shape, pos = _one(view, pos)
        if name in names:
            raise TransportError(f"tensor blob repeats tensor {name!r}")
        names.add(name)
        size = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
        total += size
        if total > MAX_BYTES:
            raise TransportError(f"tensor blob declares over {MAX_BYTES} bytes")
        specs.append((name, dtype, shape, size))
    if pos + total > len(view):
        raise TransportError(f"tensor blob is truncated ({len(view)} of {pos + total} bytes)")
    return specs, pos


def _one(view: memoryview, pos: int) -> tuple[str, np.dtype, tuple[int, ...], int]:
    try:
        n = view[pos]
        name = bytes(view[pos + 1:pos + 1 + n]).decode("utf-8")
        pos += 1 + n
        code, ndim = view[pos], view[pos + 1]
        pos += 2
        if len(name) == 0 or code >= len(DTYPES) or ndim > MAX_NDIM or pos + 4 * ndim > len(view):
            raise TransportError("tensor blob has a bad tensor header")
        shape = tuple(_U32.unpack_from(view, pos + 4 * i)[0] for i in range(ndim))
    except (IndexError, UnicodeDecodeError):
        raise TransportError("tensor blob has a truncated or bad tensor header") from None
    if any(d > MAX_BYTES for d in shape):
        raise TransportError(f"tensor {name!r} has a dimension over {MAX_BYTES}")
    return name, np.dtype(DTYPES[code]).newbyteorder("<"), shape, pos + 4 * ndim
