"""Coral's supported-operations table (``data/edgetpu_ops.toml``): which op maps on which
runtime."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import tomllib

from ...errors import ConfigError
from .checks import CHECKS

OPS_TABLE_PATH = Path(__file__).parent.parent / "data" / "edgetpu_ops.toml"
RUNTIME_VERSIONS = (10, 11, 12, 13, 14)
DEFAULT_RUNTIME = 14


@dataclass(frozen=True)
class OpRule:
    """One row of Coral's table: an op, the runtimes it applies to, its limits as checks."""

    name: str
    builtins: tuple[str, ...]
    min_runtime: int
    max_runtime: int | None
    limitations: str
    checks: tuple[dict[str, Any], ...]
    evidence: str

    def applies_to(self, runtime: int) -> bool:
        return self.min_runtime <= runtime and (
            self.max_runtime is None or runtime <= self.max_runtime
        )

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "builtins": list(self.builtins), "min_runtime": self.min_runtime,
                "max_runtime": self.max_runtime, "limitations": self.limitations,
                "checks": [dict(c) for c in self.checks], "evidence": self.evidence}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OpRule:
        return cls(name=d["name"], builtins=tuple(d["builtins"]), min_runtime=int(d["min_runtime"]),
                   max_runtime=d.get("max_runtime"), limitations=d.get("limitations", ""),
                   checks=tuple(d.get("checks", ())), evidence=d.get("evidence", ""))


@dataclass(frozen=True)
class OpsTable:
    source: dict[str, Any]
    runtime_to_compiler: dict[int, str]
    rules: tuple[OpRule, ...]

    def rule_for(self, builtin: str, runtime: int) -> OpRule | None:
        return next(
            (r for r in self.rules if builtin in r.builtins and r.applies_to(runtime)), None
        )

    def first_runtime(self, builtin: str) -> int | None:
        versions = [r.min_runtime for r in self.rules if builtin in r.builtins]
        return min(versions) if versions else None

    def min_compiler(self, runtime: int) -> str:
        known = [v for v in self.runtime_to_compiler if v <= runtime]
        return self.runtime_to_compiler[max(known)] if known else "?"


@lru_cache(maxsize=4)
def load_ops_table(path: Path = OPS_TABLE_PATH) -> OpsTable:
    with path.open("rb") as f:
        raw = tomllib.load(f)
    rules = tuple(OpRule.from_dict(d) for d in raw["op"])
    for rule in rules:
        for check in rule.checks:
            if check.get("rule") not in CHECKS:
                raise ConfigError("unknown check", source=str(path), key=f"op.{rule.name}.checks",
                                  value=check.get("rule"), allowed=list(CHECKS))
    return OpsTable(source=raw["source"], rules=rules,
                    runtime_to_compiler={int(k): v for k, v in raw["runtime_to_compiler"].items()})
