"""The bundle on the wire: a signed ``offer`` per device, then ``chunk`` messages on its ``ota``
topic (payloads from :mod:`edgekit_agent.telemetry.schema`), each with its index, the total, the
chunk's sha256 and the whole bundle's sha256. The device asks for ``window`` chunks at a time from
the next one it lacks, so a transfer resumes where it stopped."""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit_agent.bundle.manifest import bundle_id
from edgekit_agent.bundle.reader import open_bundle
from edgekit_agent.errors import BundleError, ConfigError
from edgekit_agent.telemetry import schema

OFFER_TTL_S = 7 * 86400  # a retained offer for a device that stays away goes stale after this


@dataclass(frozen=True)
class BundleFile:
    path: Path
    sha256: str
    size: int
    name: str
    version: str
    bundle_id: str

    @classmethod
    def open(cls, path: Path) -> BundleFile:
        """Read and check (hashes; the signature is the devices' to check) a bundle to deploy."""
        try:
            bundle = open_bundle(path)
        except BundleError as exc:
            raise BundleError(f"cannot deploy {path}: {exc}") from None
        data = path.read_bytes()
        if len(data) > schema.MAX_OTA_BUNDLE_BYTES:
            raise ConfigError(f"{path} is {len(data)} bytes, over the OTA limit of "
                              f"{schema.MAX_OTA_BUNDLE_BYTES}")
        m = bundle.manifest
        return cls(path=path, sha256=hashlib.sha256(data).hexdigest(), size=len(data), name=m.name,
                   version=m.version, bundle_id=bundle_id(m))

    def chunks(self, chunk_size: int) -> int:
        return -(-self.size // chunk_size)

    def read_chunk(self, index: int, chunk_size: int) -> bytes:
        with self.path.open("rb") as f:
            f.seek(index * chunk_size)
            return f.read(chunk_size)


def offer(key: Any, device: str, rollout: str, bundle: BundleFile, *, chunk_size: int,
          window: int, health: dict[str, float], now: float | None = None,
          allow_downgrade: bool = False) -> bytes:
    now = time.time() if now is None else now
    extra = {"allow_downgrade": True} if allow_downgrade else {}  # signed with the offer
    body = schema.ota_body("offer", device, rollout, now, sha256=bundle.sha256, size=bundle.size,
                           chunk_size=chunk_size, chunks=bundle.chunks(chunk_size), window=window,
                           name=bundle.name, version=bundle.version, bundle_id=bundle.bundle_id,
                           expires=round(now + OFFER_TTL_S, 3), health=health, **extra)
    return schema.sign_ota(key, body)


def cancel(key: Any, device: str, rollout: str, reason: str) -> bytes:
    return schema.sign_ota(key, schema.ota_body("cancel", device, rollout, reason=reason))


def chunk(device: str, rollout: str, bundle: BundleFile, index: int, chunk_size: int) -> bytes:
    data = bundle.read_chunk(index, chunk_size)
    return schema.encode(schema.ota_body(
        "chunk", device, rollout, sha256=bundle.sha256, index=index,
        total=bundle.chunks(chunk_size), chunk_sha256=hashlib.sha256(data).hexdigest(),
        data=base64.b64encode(data).decode("ascii")))
