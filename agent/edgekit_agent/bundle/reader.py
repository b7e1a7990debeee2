"""Read and verify `.ekb` bundles (a zip archive: manifest.json, manifest.sig, listed members).

Every check a device needs before trusting a bundle lives here: archive sanity, safe member
names, no unlisted or missing members, sizes and sha256 of every member, bounded reads against
zip bombs, schema version, and the ed25519 signature over the canonical manifest bytes.
"""

from __future__ import annotations

import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import BundleError, IntegrityError, ModelError, SignatureError
from . import signing
from .manifest import Manifest, sha256_hex
from .modelcheck import check_model

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
MAX_MANIFEST_BYTES = 4 << 20
MAX_MEMBER_BYTES = 512 << 20
MAX_MEMBERS = 256
MAX_COMPRESSION_RATIO = 1000  # deflate tops out near 1032:1; beyond this it is a crafted bomb
# stored and deflate only: other methods need optional modules and raise their own error types
_COMPRESSIONS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)

_ARCHIVE_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError,
                   NotImplementedError, RuntimeError, struct.error, UnicodeDecodeError)


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest
    signed: bool
    signature_checked: bool
    key_id: str = ""

    def read(self, member_path: str) -> bytes:
        """A member's bytes, re-checked against the manifest (the file may have changed)."""
        member = self.manifest.member(member_path)
        with _open_zip(self.path) as zf:
            data = _read_member(zf, member_path, member.size_bytes)
        _check_digest(member_path, data, member.sha256)
        return data

    def read_model(self, variant: str | None = None) -> bytes:
        v = self.manifest.variant(variant) if variant else self.manifest.primary
        return self.read(v.model.path)

    def read_runnable_model(self, variant: str | None = None) -> bytes:
        """The model's bytes, only if a runtime may see them: self-contained (no ONNX external
        data) and structurally sound (the TFLite verifier). Install and load both read so."""
        v = self.manifest.variant(variant) if variant else self.manifest.primary
        return self.read_checked_model(v.model.path, v.model.format)

    def read_checked_model(self, member: str, fmt: str) -> bytes:
        data = self.read(member)
        try:
            check_model(data, fmt)
        except ModelError as exc:
            raise BundleError(f"model {member!r}: {exc}") from None
        return data


def open_bundle(path: str | Path, public_key: str | Path | None = None) -> Bundle:
    """Open and fully verify a bundle. With ``public_key`` a valid signature is required."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path}: no such bundle file")
    try:
        with _open_zip(path) as zf:
            return _verify(path, zf, public_key)
    except (BundleError, SignatureError):
        raise
    except _ARCHIVE_ERRORS as exc:
        raise BundleError(f"{path}: corrupt or truncated bundle ({type(exc).__name__}: {exc})") from None


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except _ARCHIVE_ERRORS as exc:
        raise BundleError(f"{path}: not a bundle archive ({exc})") from None


def _verify(path: Path, zf: zipfile.ZipFile, public_key: str | Path | None) -> Bundle:
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise BundleError(f"{path}: {len(infos)} archive entries, more than {MAX_MEMBERS}")
    by_name = _check_entries(infos)
    if MANIFEST_NAME not in by_name:
        raise BundleError(f"{path}: no {MANIFEST_NAME} in the archive")
    manifest_bytes = _read_member(zf, MANIFEST_NAME, None, limit=MAX_MANIFEST_BYTES)
    signature = (_read_member(zf, SIGNATURE_NAME, None, limit=1024)
                 if SIGNATURE_NAME in by_name else None)
    key_id = _check_signature(manifest_bytes, signature, public_key)
    manifest = Manifest.from_json_bytes(manifest_bytes)
    _check_members(zf, manifest, set(by_name) - {MANIFEST_NAME, SIGNATURE_NAME})
    return Bundle(path=path, manifest=manifest, signed=signature is not None,
                  signature_checked=public_key is not None, key_id=key_id)


def _check_entries(infos: list[zipfile.ZipInfo]) -> dict[str, zipfile.ZipInfo]:
    by_name: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = info.filename
        _check_member_name(name)
        if name in by_name:
            raise BundleError(f"archive holds {name!r} twice")
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise BundleError(f"archive member {name!r} is a symbolic link")
        if info.flag_bits & 0x1:
            raise BundleError(f"archive member {name!r} is encrypted")
        if info.compress_type not in _COMPRESSIONS:
            raise BundleError(f"archive member {name!r} uses compression method {info.compress_type}"
                              " (allowed: 0 stored, 8 deflate)")
        if info.file_size > MAX_MEMBER_BYTES:
            raise BundleError(f"archive member {name!r} is {info.file_size} bytes, "
                              f"over the {MAX_MEMBER_BYTES} byte limit")
        if info.file_size > (1 << 20) and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
            raise BundleError(f"archive member {name!r} expands {info.file_size}/{info.compress_size}"
                              " times: refusing a zip bomb")
        by_name[name] = info
    return by_name


def _check_member_name(name: str) -> None:
    pure = PurePosixPath(name)
    bad = (not name or name.endswith("/") or "\\" in name or "\x00" in name or pure.is_absolute()
           or ".." in pure.parts or (len(name) > 1 and name[1] == ":") or name != str(pure))
    if bad:
        raise BundleError(f"unsafe archive member name {name!r}")


def _check_signature(manifest_bytes: bytes, signature: bytes | None,
                     public_key: str | Path | None) -> str:
    if public_key is None:
        return ""
    key = signing.load_public_key(public_key)
    if signature is None:
        raise SignatureError("bundle is not signed, but a key was given")
    signing.verify(key, manifest_bytes, signature)
    return signing.key_id(key)


def _check_members(zf: zipfile.ZipFile, manifest: Manifest, present: set[str]) -> None:
    listed = {m.path for m in manifest.members}
    if len(listed) != len(manifest.members):
        raise IntegrityError("manifest lists a member twice")
    for extra in sorted(present - listed):
        raise IntegrityError(f"archive member {extra!r} is not listed in the manifest")
    for missing in sorted(listed - present):
        raise IntegrityError(f"member {missing!r} is listed in the manifest but missing")
    for variant in manifest.all_variants:
        model = variant.model
        if model.path not in listed:
            raise IntegrityError(f"model {model.path!r} is not a listed member")
        entry = manifest.member(model.path)
        if (model.sha256, model.size_bytes) != (entry.sha256, entry.size_bytes):
            raise IntegrityError(f"model {model.path!r}: sha256/size differ from its member entry")
    for member in manifest.members:
        _check_member_name(member.path)
        data = _read_member(zf, member.path, member.size_bytes)
        _check_digest(member.path, data, member.sha256)


def _read_member(zf: zipfile.ZipFile, name: str, expected_size: int | None,
                 limit: int = MAX_MEMBER_BYTES) -> bytes:
    """Read at most one byte past what is expected, so a lying header cannot exhaust memory."""
    cap = limit if expected_size is None else min(expected_size, MAX_MEMBER_BYTES)
    try:
        with zf.open(name) as f:
            data = f.read(cap + 1)
    except KeyError:
        raise IntegrityError(f"member {name!r} is missing from the archive") from None
    except _ARCHIVE_ERRORS as exc:
        raise IntegrityError(f"member {name!r} is corrupt ({type(exc).__name__}: {exc})") from None
    if len(data) > cap:
        if expected_size is None:
            raise BundleError(f"member {name!r} is larger than the {limit} byte limit")
        raise IntegrityError(f"member {name!r} is larger than the {expected_size} bytes listed")
    if expected_size is not None and len(data) != expected_size:
        raise IntegrityError(f"member {name!r} is {len(data)} bytes, manifest says {expected_size}")
    return data


def _check_digest(name: str, data: bytes, expected: str) -> None:
    actual = sha256_hex(data)
    if actual != expected:
        raise IntegrityError(f"member {name!r} sha256 mismatch: {actual[:12]}… != {expected[:12]}…")

