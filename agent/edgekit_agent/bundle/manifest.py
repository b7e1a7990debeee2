"""Bundle manifest v1: frozen dataclasses that round-trip to JSON.

The manifest is the bundle's contract. Its top level describes the primary model (the one the
packer chose); ``variants`` holds alternates (e.g. an accurate and a fast one) with the same
fields, so a device can switch between them without a new download. Each variant carries its
evidence, typed here and written by the host packer: the ``recipe`` (:class:`RecipeStep`, in
the order applied), the ``fidelity`` against the float model (:class:`Fidelity`) and the
``target_report`` (:class:`TargetReport`). ``to_dict(from_dict(d)) == d`` for every manifest
the packer writes (the keys it always writes are always written back; unknown keys are kept).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..errors import BundleError
from ..validate import NUMBER, Table, loads_strict

SCHEMA = "edgekit.bundle/1"
SUPPORTED_SCHEMAS = (SCHEMA,)
MODEL_FORMATS = ("tflite", "onnx", "tflm-c")
MANIFEST_FILE = "manifest.json"
# The anti-rollback counter (MCUboot's security counter, TUF's metadata version): a device never
# runs a lower one without an explicit operator override. Absent (bundles made before it) = 0.
MAX_SECURITY_VERSION = (1 << 63) - 1
# What a TFLM arena may be: below 1 KiB no model allocates (0 crashed TFLM); above 64 MiB is no
# microcontroller's SRAM, and a huge figure would only make the host allocate it.
MIN_ARENA_BYTES = 1 << 10
MAX_ARENA_BYTES = 64 << 20


def _table(d: Any, key: str) -> Table:
    return Table(d, MANIFEST_FILE, key, error=BundleError)


def _rows(t: Table, key: str, default: Any = None) -> list[Table]:
    """The tables of a list of tables, each keyed ``key[i]``."""
    rows = t.items(key, dict) if default is None else t.items(key, dict, default)
    return [_table(r, t.dotted(f"{key}[{i}]")) for i, r in enumerate(rows)]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float | None = None
    zero_point: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any], key: str = "") -> TensorSpec:
        t = _table(d, key)
        return cls(name=t.get("name", str), shape=t.items("shape", int), dtype=t.get("dtype", str),
                   scale=t.get("scale", NUMBER, None), zero_point=t.get("zero_point", int, None))

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
    def from_dict(cls, d: dict[str, Any], key: str = "") -> Member:
        t = _table(d, key)
        return cls(path=t.get("path", str), sha256=t.get("sha256", str),
                   size_bytes=t.get("size_bytes", int), role=t.get("role", str, "extra"))

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
    def from_dict(cls, d: dict[str, Any], key: str = "") -> ModelRef:
        t = _table(d, key)
        return cls(path=t.get("path", str), format=t.choice("format", MODEL_FORMATS),
                   sha256=t.get("sha256", str), size_bytes=t.get("size_bytes", int),
                   compressed_bytes=t.get("compressed_bytes", int, None))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Variant:
    """A runnable model with its own evidence."""

    name: str
    model: ModelRef
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    recipe: tuple[RecipeStep, ...] = ()
    fidelity: Fidelity | None = None  # None: not measured (written as {})
    latency_ms: float | None = None
    target_report: TargetReport | None = None  # None: no target checks (written as {})
    # where latency_ms came from: measured-host | measured-device | estimated (None: not said)
    latency_source: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any], key: str = "") -> Variant:
        t = _table(d, key)
        fidelity, report = t.table("fidelity"), t.table("target_report")
        return cls(name=t.get("name", str, "primary"),
                   model=ModelRef.from_dict(t.get("model", dict), t.dotted("model")),
                   inputs=tuple(TensorSpec.from_dict(r.data, r.key) for r in _rows(t, "inputs")),
                   outputs=tuple(TensorSpec.from_dict(r.data, r.key) for r in _rows(t, "outputs")),
                   recipe=tuple(RecipeStep.from_dict(r.data, r.key) for r in _rows(t, "recipe", [])),
                   fidelity=Fidelity.from_dict(fidelity.data, fidelity.key) if fidelity.data else None,
                   latency_ms=t.get("latency_ms", NUMBER, None),
                   target_report=(TargetReport.from_dict(report.data, report.key)
                                  if report.data else None),
                   latency_source=t.get("latency_source", str, None))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model.to_dict(),
                "inputs": [t.to_dict() for t in self.inputs],
                "outputs": [t.to_dict() for t in self.outputs],
                "recipe": [s.to_dict() for s in self.recipe],
                "fidelity": self.fidelity.to_dict() if self.fidelity else {},
                "latency_ms": self.latency_ms,
                "target_report": self.target_report.to_dict() if self.target_report else {},
                **({"latency_source": self.latency_source} if self.latency_source else {})}


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
    security_version: int | None = None  # None: not written (an older bundle); counts as 0

    @property
    def counter(self) -> int:
        """The anti-rollback counter the device compares (0 for bundles without one)."""
        return self.security_version or 0

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
                "notes": list(self.notes),
                **({} if self.security_version is None
                   else {"security_version": self.security_version})}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        t = _table(d, "")
        schema = t.choice("schema", SUPPORTED_SCHEMAS)
        primary = Variant.from_dict({**t.data, "name": t.get("primary_variant", str, "primary")})
        return cls(schema=schema, name=t.get("name", str), version=t.get("version", str),
                   created=t.get("created", str, ""), target=t.get("target", str),
                   family=t.get("family", str), primary=primary,
                   members=tuple(Member.from_dict(r.data, r.key) for r in _rows(t, "members")),
                   source=t.get("source", dict, {}),
                   variants=tuple(Variant.from_dict(r.data, r.key)
                                  for r in _rows(t, "variants", [])),
                   target_profile=t.get("target_profile", dict, {}),
                   extras=t.mapping("extras", str, {}), notes=t.items("notes", str, ()),
                   security_version=t.integer("security_version", None, lo=0,
                                              hi=MAX_SECURITY_VERSION))

    def to_json_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    @classmethod
    def from_json_bytes(cls, data: bytes) -> Manifest:
        try:
            obj = loads_strict(data)
        except (ValueError, RecursionError) as exc:  # ValueError: also an over-long integer
            raise BundleError(f"manifest.json is not valid JSON: {exc}") from None
        return cls.from_dict(obj)

    def replace(self, **changes: Any) -> Manifest:
        return replace(self, **changes)


# --- evidence ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RecipeStep:
    """One step the packer applied: ``{"step": KIND, "detail": TEXT}`` or, for the recipe
    itself, ``{"step": "recipe", <recipe fields>, <measured stats>}`` (kept in ``params``)."""

    step: str
    detail: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any], key: str = "") -> RecipeStep:
        t = _table(d, key)
        return cls(step=t.get("step", str), detail=t.get("detail", str, None),
                   params={k: v for k, v in t.data.items() if k not in ("step", "detail")})

    def to_dict(self) -> dict[str, Any]:
        detail = {} if self.detail is None else {"detail": self.detail}
        return {"step": self.step, **detail, **self.params}


def json_float(x: float) -> float | str:
    """A measured figure as stored: 4 decimals, infinity as "inf" (JSON has none)."""
    return "inf" if x == math.inf else round(float(x), 4)


def _figure(t: Table, key: str) -> float:
    value = t.data.get(key)
    if value == "inf":
        return math.inf
    return float(t.get(key, NUMBER))


@dataclass(frozen=True)
class OutputFidelity:
    """One output against the float model: signal-to-quantization-noise ratio and cosine."""

    sqnr_db: float
    cosine: float

    @classmethod
    def from_dict(cls, d: dict[str, Any], key: str = "") -> OutputFidelity:
        t = _table(d, key)
        t.only(("sqnr_db", "cosine"))
        return cls(sqnr_db=_figure(t, "sqnr_db"), cosine=_figure(t, "cosine"))

    def to_dict(self) -> dict[str, Any]:
        return {"sqnr_db": json_float(self.sqnr_db), "cosine": json_float(self.cosine)}


@dataclass(frozen=True)
class Fidelity:
    """How close a variant is to the float model, measured on ``samples`` inputs.

    ``accuracy``/``accuracy_drop`` are fractions 0-1 (when labels were given); ``synthetic`` is
    written as ``synthetic_data``; ``latency_ratio`` (p50 against float) only when measured.
    ``pre_activation`` holds, for outputs behind a final sigmoid/softmax (named in
    ``final_activation``), the same figures measured before that activation; the packer judges
    those. They sit beside ``outputs`` (not inside), so agents that predate them keep them as
    extras and read the manifest unchanged.
    """

    outputs: dict[str, OutputFidelity]
    top1_agreement: float | None = None
    accuracy: float | None = None
    accuracy_drop: float | None = None
    samples: int | None = None
    synthetic: bool | None = None
    latency_ratio: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    pre_activation: dict[str, OutputFidelity] = field(default_factory=dict)
    final_activation: dict[str, str] = field(default_factory=dict)  # output -> sigmoid | softmax

    _KEYS = ("outputs", "min_sqnr_db", "top1_agreement", "accuracy", "accuracy_drop", "samples",
             "synthetic_data", "latency_ratio", "pre_activation", "pre_activation_sqnr_db",
             "final_activation")

    @property
    def min_sqnr_db(self) -> float | None:
        return min((o.sqnr_db for o in self.outputs.values()), default=None)

    @property
    def pre_activation_sqnr_db(self) -> float | None:
        return min((o.sqnr_db for o in self.pre_activation.values()), default=None)

    @property
    def decision_sqnr_db(self) -> float | None:
        """The lowest SQNR the packer judges (before final activations where measured)."""
        return min(((self.pre_activation.get(n) or o).sqnr_db for n, o in self.outputs.items()),
                   default=None)

    @classmethod
    def from_dict(cls, d: dict[str, Any], key: str = "") -> Fidelity:
        t = _table(d, key)
        return cls(outputs=_output_table(t.table("outputs")),
                   top1_agreement=t.get("top1_agreement", NUMBER, None),
                   accuracy=t.get("accuracy", NUMBER, None),
                   accuracy_drop=t.get("accuracy_drop", NUMBER, None),
                   samples=t.get("samples", int, None), synthetic=t.get("synthetic_data", bool, None),
                   latency_ratio=t.get("latency_ratio", NUMBER, None),
                   extra={k: v for k, v in t.data.items() if k not in cls._KEYS},
                   pre_activation=_output_table(t.table("pre_activation")),
                   final_activation=t.mapping("final_activation", str, {}))

    def to_dict(self) -> dict[str, Any]:
        low = self.min_sqnr_db
        d = {"outputs": {k: o.to_dict() for k, o in self.outputs.items()},
             "min_sqnr_db": None if low is None else json_float(low),
             "top1_agreement": self.top1_agreement, "accuracy": self.accuracy,
             "accuracy_drop": self.accuracy_drop, "samples": self.samples,
             "synthetic_data": self.synthetic}
        if self.latency_ratio is not None:
            d["latency_ratio"] = self.latency_ratio
        if self.pre_activation:
            d["pre_activation"] = {k: o.to_dict() for k, o in self.pre_activation.items()}
            d["pre_activation_sqnr_db"] = json_float(self.pre_activation_sqnr_db)
            d["final_activation"] = dict(self.final_activation)
        return {**d, **self.extra}


def _output_table(t: Table) -> dict[str, OutputFidelity]:
    return {name: OutputFidelity.from_dict(t.table(name).data, t.dotted(name)) for name in t.data}


@dataclass(frozen=True)
class TargetReport:
    """Per-target evidence with the common keys of DESIGN.md; ``details`` holds family extras
    (written beside the common keys). ``fits`` is derived: no violations. ``selftest_model``
    names the member a host runs in the model's place (written only when set): the shipped
    model needs hardware a host lacks (Vela's ``ethos-u`` op), this is the same int8 network
    before compilation, which the self-test runs."""

    family: str
    ops_on_accelerator: tuple[str, ...] = ()
    ops_on_cpu: tuple[str, ...] = ()
    arena_bytes: int | None = None
    sram_bytes: int | None = None
    flash_bytes: int | None = None
    violations: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)
    selftest_model: str | None = None

    _KEYS = ("family", "ops_on_accelerator", "ops_on_cpu", "arena_bytes", "sram_bytes",
             "flash_bytes", "fits", "violations", "selftest_model")

    @property
    def fits(self) -> bool:
        return not self.violations

    @classmethod
    def from_dict(cls, d: dict[str, Any], key: str = "") -> TargetReport:
        t = _table(d, key)
        return cls(family=t.get("family", str, ""),
                   ops_on_accelerator=t.items("ops_on_accelerator", str, ()),
                   ops_on_cpu=t.items("ops_on_cpu", str, ()),
                   arena_bytes=t.integer("arena_bytes", None, lo=MIN_ARENA_BYTES,
                                         hi=MAX_ARENA_BYTES),
                   sram_bytes=t.get("sram_bytes", int, None),
                   flash_bytes=t.get("flash_bytes", int, None),
                   violations=t.items("violations", str, ()),
                   details={k: v for k, v in t.data.items() if k not in cls._KEYS},
                   selftest_model=t.get("selftest_model", str, None))

    def to_dict(self) -> dict[str, Any]:
        host = {} if self.selftest_model is None else {"selftest_model": self.selftest_model}
        return {"family": self.family, "ops_on_accelerator": list(self.ops_on_accelerator),
                "ops_on_cpu": list(self.ops_on_cpu), "arena_bytes": self.arena_bytes,
                "sram_bytes": self.sram_bytes, "flash_bytes": self.flash_bytes, "fits": self.fits,
                "violations": list(self.violations), **self.details, **host}

def canonical_json(obj: Any) -> bytes:
    """The exact bytes that are signed: sorted keys, no spaces, UTF-8, NaN forbidden."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def bundle_id(manifest: Manifest) -> str:
    """A short, stable identity: the sha256 of the canonical (signed) manifest bytes."""
    return sha256_hex(manifest.to_json_bytes())[:16]
