"""Recipes: plain, serialisable descriptions of what the packer does to a model.

Naming scheme: ``[prune<P>_][cluster<K>_]<quantization>[_<calibration>][_pertensor][_mixed]``,
e.g.
``fp16``, ``static_int8``, ``static_int8_percentile``, ``static_int8_mixed``,
``prune50_cluster16_static_int8``, ``weight_int4``. The ladder lists them from least to most
lossy; the search walks it in that order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..errors import ConfigError

QUANTIZATIONS = ("none", "fp16", "dynamic_int8", "static_int8", "static_int16x8", "weight_int8",
                 "weight_int4")
# "tuned": cross-layer equalisation + per-tensor range choice + bias correction (tuned.py)
CALIBRATIONS = ("minmax", "entropy", "percentile", "tuned")
# full integer: int8 weights with int8 (or, 16x8, int16) activations
FULL_INT8 = ("static_int8", "static_int16x8")


@dataclass(frozen=True)
class Recipe:
    quantization: str = "none"
    sparsity: float = 0.0
    clusters: int = 0
    calibration: str = "minmax"
    mixed_precision: bool = False
    per_channel: bool = True
    description: str = ""

    @property
    def name(self) -> str:
        parts = []
        if self.sparsity:
            parts.append(f"prune{round(self.sparsity * 100)}")
        if self.clusters:
            parts.append(f"cluster{self.clusters}")
        parts.append({"none": "fp32"}.get(self.quantization, self.quantization))
        if self.quantization == "static_int8" and self.calibration != "minmax":
            parts.append(self.calibration)
        if not self.per_channel:
            parts.append("pertensor")
        if self.mixed_precision:
            parts.append("mixed")
        return "_".join(parts)

    @property
    def needs_calibration(self) -> bool:
        return self.quantization in FULL_INT8

    @property
    def full_integer(self) -> bool:
        return self.quantization in FULL_INT8 and not self.mixed_precision

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        known = {k: d[k] for k in ("quantization", "sparsity", "clusters", "calibration",
                                   "mixed_precision", "per_channel", "description") if k in d}
        recipe = cls(**known)
        recipe.validate()
        return recipe

    def validate(self) -> None:
        if self.quantization not in QUANTIZATIONS:
            raise ConfigError("invalid recipe", key="quantization", value=self.quantization,
                              allowed=QUANTIZATIONS)
        if self.calibration not in CALIBRATIONS:
            raise ConfigError("invalid recipe", key="calibration", value=self.calibration,
                              allowed=CALIBRATIONS)
        if not 0.0 <= self.sparsity < 1.0:
            raise ConfigError("invalid recipe", key="sparsity", value=self.sparsity,
                              allowed="[0, 1)")
        if self.clusters < 0 or self.clusters == 1 or self.clusters > 256:
            raise ConfigError("invalid recipe", key="clusters", value=self.clusters,
                              allowed="0 or 2..256")


LADDER: tuple[Recipe, ...] = (
    Recipe("none",
           description="float32 as given (the reference; kept only if nothing better fits)"),
    Recipe("fp16", description="float16 weight storage, float32 compute"),
    Recipe("dynamic_int8", description="int8 weights, activations quantized at run time"),
    Recipe("static_int8", description="int8 weights and activations, calibrated min/max"),
    Recipe("static_int8", per_channel=False,
           description="int8 with one weight scale per tensor (sometimes beats per-channel)"),
    Recipe("static_int8", calibration="percentile",
           description="int8, activation ranges clipped at the 99.999th percentile"),
    Recipe("static_int8", calibration="tuned",
           description="int8 with cross-layer equalisation, per-tensor range choice "
                       "(min-max/percentile/MSE) and bias correction"),
    Recipe("static_int16x8",
           description="int16 activations, int8 weights (targets with 16x8 kernels)"),
    Recipe("static_int8", mixed_precision=True,
           description="int8 with the most sensitive layers left in float"),
    Recipe("static_int8", sparsity=0.5, clusters=16, per_channel=False,
           description="50% magnitude pruning + 16 weight clusters per tensor, then int8 "
                       "(per tensor, so the few distinct values survive and deflate well)"),
    Recipe("weight_int4", description="int4 weights (MatMul/FullyConnected), float activations"),
)


def ladder_names() -> list[str]:
    return [r.name for r in LADDER]


def recipe_by_name(name: str) -> Recipe:
    for r in LADDER:
        if r.name == name:
            return r
    aliases = {"int8": "static_int8", "float32": "fp32", "int4": "weight_int4"}
    if name in aliases:
        return recipe_by_name(aliases[name])
    raise ConfigError("unknown recipe", key="--recipe", value=name, allowed=ladder_names())
