"""What a flash ends with: the device's own account of its active and previous bundles."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import FlashError


@dataclass(frozen=True)
class BundleRef:
    name: str
    version: str
    id: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "id": self.id}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> BundleRef | None:
        """From `edgekit-agent status --json` slots ({bundle_id, name, version}) or our own form."""
        if not d:
            return None
        ident = d.get("id", d.get("bundle_id"))
        if not all(isinstance(v, str) for v in (d.get("name"), d.get("version"), ident)):
            raise FlashError(f"the device reported a bundle without name/version/id: {d!r:.120}")
        return cls(name=d["name"], version=d["version"], id=ident)


@dataclass(frozen=True)
class DeviceState:
    """Active and previous bundle as the device reports them after the install."""

    active: BundleRef | None
    previous: BundleRef | None
    install: dict[str, Any] = field(default_factory=dict)  # the device's install report, if any

    @classmethod
    def from_dict(cls, d: dict[str, Any], install: dict[str, Any] | None = None) -> DeviceState:
        if not isinstance(d, dict):
            raise FlashError(f"the device's status is not a JSON object: {d!r:.120}")
        return cls(active=BundleRef.from_dict(d.get("active")),
                   previous=BundleRef.from_dict(d.get("previous")),
                   install=dict(install if install is not None else d.get("install") or {}))

    def to_dict(self) -> dict[str, Any]:
        return {"active": self.active.to_dict() if self.active else None,
                "previous": self.previous.to_dict() if self.previous else None,
                "install": dict(self.install)}


@dataclass(frozen=True)
class FlashResult:
    uri: str
    scheme: str
    bundle: str
    bytes: int
    seconds: float
    device: DeviceState

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "scheme": self.scheme, "bundle": self.bundle, "bytes": self.bytes,
                "seconds": round(self.seconds, 3), **self.device.to_dict()}

    def render(self) -> str:
        a = self.device.active
        active = f"active {a.name} v{a.version} ({a.id})" if a else "no active bundle"
        return f"flashed {self.bundle} to {self.uri}: {active}"
