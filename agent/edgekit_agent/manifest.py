"""Bundle manifest v1: frozen dataclasses that round-trip to JSON.

The manifest is the bundle's contract. Its top level describes the primary model (the one the
packer chose); ``variants`` holds alternates (e.g. an accurate and a fast one) with the same
fields, so a device can switch between them without a new download.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .errors import BundleError

SCHEMA = "edgekit.bundle/1"
SUPPORTED_SCHEMAS = (SCHEMA,)
MODEL_FORMATS = ("tflite", "onnx", "tflm-c")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float | None = None
    zero_point: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TensorSpec":
        return cls(name=_get(d, "name", str), shape=_items(d, "shape", int), dtype=_get(d, "dtype", str),
                   scale=_get(d, "scale", _NUMBER, None), zero_point=_get(d, "zero_point", int, None))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "scale": self.scale, "zero_point": self.zero_point}


@dataclass(frozen=True)
class Member:
    """One file inside the bundle archive."""

    path: str
    sha256: str
    size_bytes: int
    role: str = "extra"  # model | variant | labels | selftest | source | extra

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Member":
        return cls(path=_get(d, "path", str), sha256=_get(d, "sha256", str),
                   size_bytes=_get(d, "size_bytes", int), role=_get(d, "role", str, "extra"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ModelRef:
    path: str
    format: str
    sha256: str
    size_bytes: int
    compressed_bytes: int | None = None  # deflated size inside the bundle archive

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelRef":
        fmt = _get(d, "format", str)
        if fmt not in MODEL_FORMATS:
            raise BundleError(f"unknown model format {fmt!r} (allowed: {', '.join(MODEL_FORMATS)})")
        return cls(path=_get(d, "path", str), format=fmt, sha256=_get(d, "sha256", str),
                   size_bytes=_get(d, "size_bytes", int),
                   compressed_bytes=_get(d, "compressed_bytes", int, None))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Variant:
    """A runnable model with its own evidence."""

    name: str
    model: ModelRef
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    recipe: tuple[dict[str, Any], ...] = ()
    fidelity: dict[str, Any] = field(default_factory=dict)
    latency_ms: float | None = None
    target_report: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Variant":
        return cls(name=_get(d, "name", str, "primary"), model=ModelRef.from_dict(_get(d, "model", dict)),
                   inputs=tuple(TensorSpec.from_dict(t) for t in _items(d, "inputs", dict)),
                   outputs=tuple(TensorSpec.from_dict(t) for t in _items(d, "outputs", dict)),
                   recipe=tuple(dict(s) for s in _items(d, "recipe", dict, [])),
                   fidelity=dict(_get(d, "fidelity", dict, {})),
                   latency_ms=_get(d, "latency_ms", _NUMBER, None),
                   target_report=dict(_get(d, "target_report", dict, {})))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model.to_dict(),
                "inputs": [t.to_dict() for t in self.inputs],
                "outputs": [t.to_dict() for t in self.outputs],
                "recipe": [dict(s) for s in self.recipe], "fidelity": dict(self.fidelity),
                "latency_ms": self.latency_ms, "target_report": dict(self.target_report)}


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    target: str
    family: str
    primary: Variant
    members: tuple[Member, ...]
    source: dict[str, Any] = field(default_factory=dict)
    variants: tuple[Variant, ...] = ()
    target_profile: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, str] = field(default_factory=dict)  # role -> member path
    notes: tuple[str, ...] = ()
    created: str = ""
    schema: str = SCHEMA

    # The contract (DESIGN.md) puts the primary model's fields at the top level.
    @property
    def model(self) -> ModelRef:
        return self.primary.model

    @property
    def all_variants(self) -> tuple[Variant, ...]:
        return (self.primary, *self.variants)

    def variant(self, name: str) -> Variant:
        for v in self.all_variants:
            if v.name == name:
                return v
        names = ", ".join(v.name for v in self.all_variants)
        raise BundleError(f"bundle has no variant {name!r} (has: {names})")

    def member(self, path: str) -> Member:
        for m in self.members:
            if m.path == path:
                return m
        raise BundleError(f"manifest lists no member {path!r}")

    def to_dict(self) -> dict[str, Any]:
        primary = self.primary.to_dict()
        primary.pop("name")
        return {"schema": self.schema, "name": self.name, "version": self.version,
                "created": self.created, "target": self.target, "family": self.family,
                **primary, "primary_variant": self.primary.name,
                "variants": [v.to_dict() for v in self.variants],
                "source": dict(self.source), "target_profile": dict(self.target_profile),
                "members": [m.to_dict() for m in self.members], "extras": dict(self.extras),
                "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Manifest":
        if not isinstance(d, dict):
            raise BundleError("manifest is not a JSON object")
        schema = d.get("schema")
        if schema not in SUPPORTED_SCHEMAS:
            raise BundleError(f"unknown bundle schema {schema!r} (this reader supports "
                              f"{', '.join(SUPPORTED_SCHEMAS)})")
        try:
            primary = Variant.from_dict({**d, "name": d.get("primary_variant", "primary")})
            return cls(schema=schema, name=_get(d, "name", str), version=_get(d, "version", str),
                       created=_get(d, "created", str, ""), target=_get(d, "target", str),
                       family=_get(d, "family", str), primary=primary,
                       members=tuple(Member.from_dict(m) for m in _items(d, "members", dict)),
                       source=dict(_get(d, "source", dict, {})),
                       variants=tuple(Variant.from_dict(v) for v in _items(d, "variants", dict, [])),
                       target_profile=dict(_get(d, "target_profile", dict, {})),
                       extras=dict(_items(d, "extras", str, {}, values=True)),
                       notes=_items(d, "notes", str, []))
        except BundleError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BundleError(f"manifest is malformed: {type(exc).__name__} {exc}") from None

    def to_json_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    @classmethod
    def from_json_bytes(cls, data: bytes) -> "Manifest":
        try:
            obj = json.loads(data.decode("utf-8"))
        except (ValueError, RecursionError) as exc:  # ValueError: also an over-long integer
            raise BundleError(f"manifest.json is not valid JSON: {exc}") from None
        return cls.from_dict(obj)

    def replace(self, **changes: Any) -> "Manifest":
        return replace(self, **changes)


_NUMBER = (int, float)
_KIND_NAMES = {str: "a string", int: "an integer", _NUMBER: "a number", list: "a list",
               dict: "an object"}
_NO_DEFAULT: Any = object()


def _get(d: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any = _NO_DEFAULT) -> Any:
    """``d[key]`` if it has the JSON type ``kind`` (``default`` when absent or null)."""
    if default is not _NO_DEFAULT and d.get(key) is None:
        return default
    value = d[key]
    _check_type(key, value, kind)
    return value


def _items(d: dict[str, Any], key: str, kind: type, default: Any = _NO_DEFAULT,
           values: bool = False) -> Any:
    """A list (or, with ``values``, an object) whose items all have the JSON type ``kind``."""
    container = _get(d, key, dict if values else list, default)
    for item in (container.values() if values else container):
        _check_type(key, item, kind)
    return container if values else tuple(container)


def _check_type(key: str, value: Any, kind: type | tuple[type, ...]) -> None:
    # JSON has no int/bool distinction in Python's eyes, and json.loads accepts Infinity/NaN.
    if (not isinstance(value, kind) or isinstance(value, bool)
            or (isinstance(value, float) and not math.isfinite(value))):
        raise TypeError(f"{key!r} must be {_KIND_NAMES.get(kind, kind)}, not {value!r:.60}")


def canonical_json(obj: Any) -> bytes:
    """The exact bytes that are signed: sorted keys, no spaces, UTF-8, NaN forbidden."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
