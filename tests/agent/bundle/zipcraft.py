"""Build and patch bundle archives byte by byte, to make the malformed ones the reader must refuse."""

from __future__ import annotations

import json
import struct
import warnings
import zipfile
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

from edgekit_agent.bundle import signing
from edgekit_agent.bundle.manifest import sha256_hex
from edgekit_agent.bundle.reader import MANIFEST_NAME, SIGNATURE_NAME

CENTRAL, LOCAL = b"PK\x01\x02", b"PK\x03\x04"
# offsets of fields inside a central directory header
CD_FLAGS, CD_CRC, CD_USIZE, CD_NAMELEN = 8, 16, 24, 28


@dataclass
class Parts:
    """A bundle taken apart: its manifest as a dict and its members by name (in order)."""

    manifest: dict
    files: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> Parts:
        with zipfile.ZipFile(path) as zf:
            files = {n: zf.read(n) for n in zf.namelist() if n not in (MANIFEST_NAME, SIGNATURE_NAME)}
            return cls(json.loads(zf.read(MANIFEST_NAME)), files)

    def copy(self) -> Parts:
        return Parts(json.loads(json.dumps(self.manifest)), dict(self.files))

    def relist(self) -> Parts:
        """Make the manifest's member list (and the model refs) match ``files`` again."""
        self.manifest["members"] = [{"path": n, "sha256": sha256_hex(d), "size_bytes": len(d),
                                     "role": "extra"} for n, d in self.files.items()]
        model = self.manifest["model"]
        if model["path"] in self.files:
            data = self.files[model["path"]]
            model.update(sha256=sha256_hex(data), size_bytes=len(data))
        return self


def zip_bytes(entries: list[tuple[str | zipfile.ZipInfo, bytes]],
              method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w", method) as zf:
        warnings.simplefilter("ignore")  # "Duplicate name": on purpose in the corpus
        for name, data in entries:
            zf.writestr(name, data)
    return buf.getvalue()


def build(parts: Parts, key: Path | None, *, manifest_bytes: bytes | None = None,
          signature: bytes | None = None, extra: list[tuple[str | zipfile.ZipInfo, bytes]] = (),
          method: int = zipfile.ZIP_DEFLATED) -> bytes:
    """An archive from parts: manifest (canonical, or the bytes given), signature, members, extras."""
    # json.dumps, not canonical_json: the corpus needs Infinity/NaN in some manifests
    mbytes = json.dumps(parts.manifest, sort_keys=True).encode() if manifest_bytes is None else manifest_bytes
    entries: list = [(MANIFEST_NAME, mbytes)]
    if signature is None and key is not None:
        signature = signing.sign(signing.load_private_key(key), mbytes)
    if signature is not None:
        entries.append((SIGNATURE_NAME, signature))
    entries += list(parts.files.items()) + list(extra)
    return zip_bytes(entries, method)


def central_entries(data: bytes) -> dict[str, int]:
    """Name -> offset of its central directory header."""
    out, pos = {}, data.find(CENTRAL)
    while pos != -1:
        (namelen,) = struct.unpack_from("<H", data, pos + CD_NAMELEN)
        out[data[pos + 46:pos + 46 + namelen].decode()] = pos
        pos = data.find(CENTRAL, pos + 46 + namelen)
    return out


def patch_central(data: bytes, name: str, offset: int, fmt: str, value: int) -> bytes:
    buf = bytearray(data)
    struct.pack_into(fmt, buf, central_entries(data)[name] + offset, value)
    return bytes(buf)


def local_data_offset(data: bytes, name: str) -> int:
    """Offset of a member's compressed data (after its local header)."""
    with zipfile.ZipFile(BytesIO(data)) as zf:
        start = zf.getinfo(name).header_offset
    assert data[start:start + 4] == LOCAL
    namelen, extralen = struct.unpack_from("<HH", data, start + 26)
    return start + 30 + namelen + extralen
