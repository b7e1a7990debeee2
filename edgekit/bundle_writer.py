"""Write `.ekb` bundles: members + manifest + optional ed25519 signature, atomically."""

from __future__ import annotations

import os
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from edgekit_agent.bundle import signing
from edgekit_agent.bundle.manifest import Manifest, Member, sha256_hex
from edgekit_agent.bundle.reader import MANIFEST_NAME, SIGNATURE_NAME, open_bundle
from edgekit_agent.errors import BundleError, EdgekitError

# A fixed timestamp keeps archives reproducible for identical inputs.
_ZIP_EPOCH = (2020, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class MemberFile:
    path: str
    data: bytes
    role: str = "extra"

    def member(self) -> Member:
        return Member(path=self.path, sha256=sha256_hex(self.data), size_bytes=len(self.data),
                      role=self.role)


def write_bundle(out: str | Path, manifest: Manifest, files: list[MemberFile],
                 sign_key: str | Path | None = None) -> Path:
    """Write ``files`` and ``manifest`` (its member list filled in here) to ``out``.

    Written to a temporary file beside ``out``, fsynced and renamed: a crash leaves either the
    old file or the complete new one, never half a bundle.
    """
    out = Path(out)
    private = signing.load_private_key(sign_key) if sign_key else None
    manifest = manifest.replace(members=tuple(f.member() for f in files),
                                created=manifest.created or _now())
    try:
        manifest_bytes = manifest.to_json_bytes()
    except (TypeError, ValueError) as exc:  # e.g. a numpy scalar or NaN in the evidence
        raise BundleError(f"manifest cannot be stored as JSON: {exc}") from None
    if not out.parent.exists():
        raise EdgekitError(f"output folder {out.parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        try:
            with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w") as zf:
                _add(zf, MANIFEST_NAME, manifest_bytes)
                if private is not None:
                    _add(zf, SIGNATURE_NAME, signing.sign(private, manifest_bytes))
                for f in files:
                    _add(zf, f.path, f.data)
                zf.close()
                raw.flush()
                os.fsync(raw.fileno())
            _check_readable(Path(tmp), out)
            os.replace(tmp, out)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise EdgekitError(f"cannot write {out}: {exc.strerror or exc}") from None
    return out


def _check_readable(tmp: Path, out: Path) -> None:
    """Never leave a bundle that the device-side reader would refuse (bad names, missing model…)."""
    try:
        open_bundle(tmp)
    except BundleError as exc:
        raise BundleError(f"{out} not written: {str(exc).replace(str(tmp), out.name)}") from None


def _add(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    zf.writestr(info, data, compresslevel=9)


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()
