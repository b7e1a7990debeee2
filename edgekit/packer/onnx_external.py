"""ONNX external data, made part of the model before anything else reads it.

An ONNX tensor may keep its bytes in another file (``data_location: EXTERNAL``, ``location``
relative to the model). onnx and ONNX Runtime resolve that against the *working directory* when
a model is loaded from bytes, so a model naming ``fleet.key`` once pulled the signing key into a
signed bundle. Here a location is resolved only inside the model's own folder: no absolute
paths, no ``..``, no symbolic links on the way, a regular file, the byte range inside it and of
the size the tensor's shape needs. The bytes are inlined (``raw_data``), so the bundle's model,
its hash and its signature cover them; a device refuses any model that still references a file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import ModelError
from ..onnx_model import parse_onnx

MAX_INLINE_BYTES = (2 << 30) - (64 << 20)  # protobuf's 2 GiB message limit, with headroom
_FOUR_BIT = (21, 22, 23)  # UINT4, INT4, FLOAT4E2M1: two values per byte


def has_external_data(tensor: Any) -> bool:
    from onnx import TensorProto

    return tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data) > 0


def inline_external_data(data: bytes, folder: Path) -> tuple[bytes, list[str]]:
    """(model bytes with every external tensor inlined, steps); unchanged when there are none."""
    from onnx import TensorProto, external_data_helper

    model = parse_onnx(data)
    tensors = [t for t in external_data_helper._get_all_tensors(model) if has_external_data(t)]
    if not tensors:
        return data, []
    total, files = 0, set()
    for tensor in tensors:
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        blob = _read_range(folder, location, info, tensor)
        total += len(blob)
        if total > MAX_INLINE_BYTES:
            raise ModelError(f"external data of more than {MAX_INLINE_BYTES >> 20} MiB cannot be "
                             "inlined into one ONNX model")
        tensor.raw_data = blob
        del tensor.external_data[:]
        tensor.data_location = TensorProto.DEFAULT
        files.add(location)
    step = (f"inlined {len(tensors)} external tensor(s), {total} bytes, from "
            f"{', '.join(sorted(files))}")
    return model.SerializeToString(), [step]


def safe_location(folder: Path, location: str, tensor_name: str) -> Path:
    """``folder / location`` when that is a regular file inside ``folder`` reached without links."""
    pure = PurePosixPath(location)
    where = f"tensor {tensor_name!r}: external data location {location!r}"
    if (not location or "\x00" in location or "\\" in location or pure.is_absolute()
            or (len(location) > 1 and location[1] == ":")):
        raise ModelError(f"{where} is not a path relative to the model's folder")
    if ".." in pure.parts:
        raise ModelError(f"{where} leaves the model's folder")
    path = folder
    for part in pure.parts:
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except OSError as exc:
            raise ModelError(f"{where}: {exc.strerror or exc}") from None
        if stat.S_ISLNK(mode):
            raise ModelError(f"{where} goes through a symbolic link ({path.name})")
    if not stat.S_ISREG(mode):
        raise ModelError(f"{where} is not a regular file")
    return path


def _read_range(folder: Path, location: str, info: dict[str, str], tensor: Any) -> bytes:
    path = safe_location(folder, location, tensor.name)
    where = f"tensor {tensor.name!r}: external data {location!r}"
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else None
    except ValueError:
        raise ModelError(f"{where}: offset/length are not integers") from None
    size = path.stat().st_size
    length = size - offset if length is None else length
    if offset < 0 or length < 0 or offset + length > size:
        raise ModelError(f"{where}: bytes {offset}..{offset + length} are outside the "
                         f"{size}-byte file")
    expected = _tensor_bytes(tensor)
    if expected is not None and length != expected:
        raise ModelError(f"{where}: {length} bytes, the tensor's shape needs {expected}")
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def _tensor_bytes(tensor: Any) -> int | None:
    from onnx import helper

    try:
        itemsize = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    count = 1
    for d in tensor.dims:
        count *= d
    return (count + 1) // 2 if tensor.data_type in _FOUR_BIT else count * itemsize
