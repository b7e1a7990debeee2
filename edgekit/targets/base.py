"""What every target family works with: the Profile it compiles for, option specs as data, and
a compile step with a report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from edgekit_agent.bundle.manifest import TargetReport
from edgekit_agent.power.energy import PowerFigures


@dataclass(frozen=True)
class Profile:
    name: str
    family: str
    description: str
    runtime: str
    arch: str
    flash_bytes: int
    ram_bytes: int
    dtypes: tuple[str, ...]
    power: PowerFigures  # the agent's type: the bundle's target_profile.power reads back as it
    cpu: str = ""
    clock_mhz: int = 0
    cores: int = 1
    accelerator: str = ""
    default_input_batch: int = 1
    options: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    latency: dict[str, float] = field(default_factory=dict)  # cost-model throughput figures

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "family": self.family, "description": self.description,
                "runtime": self.runtime, "arch": self.arch, "cpu": self.cpu,
                "clock_mhz": self.clock_mhz, "cores": self.cores, "accelerator": self.accelerator,
                "flash_bytes": self.flash_bytes, "ram_bytes": self.ram_bytes,
                "dtypes": list(self.dtypes), "default_input_batch": self.default_input_batch,
                "power": self.power.to_dict(), "options": dict(self.options),
                "latency": dict(self.latency), "source": self.source}

__all__ = ["Compiled", "TargetFamily", "TargetReport"]


@dataclass(frozen=True)
class Compiled:
    """A model as the target will run it, plus files to ship beside it (e.g. C sources).

    ``host_model`` is the form a host runs in its place when ``model`` needs hardware the host
    lacks (Vela's output runs on the Ethos-U NPU): the packer measures fidelity on it and ships
    it for the device's self-test."""

    model: bytes
    format: str
    report: TargetReport
    extra_files: dict[str, bytes] = field(default_factory=dict)
    host_model: bytes | None = None


class TargetFamily:
    NAME: ClassVar[str]
    # option name -> (type, allowed values or None)
    OPTIONS: ClassVar[dict[str, tuple[type, tuple[Any, ...] | None]]] = {}
    REQUIRED_OPTIONS: ClassVar[tuple[str, ...]] = ()
    # model formats the family's runtime executes, best first
    MODEL_FORMATS: ClassVar[tuple[str, ...]] = ("tflite",)
    # only fully integer-quantized models can run (no float fallback)
    FULL_INT8: ClassVar[bool] = False
    # the compiled model runs in LiteRT/ORT on the host (False: e.g. Vela output needs the NPU)
    HOST_RUNNABLE: ClassVar[bool] = True
    # quantizations the family's runtime can execute (see edgekit.packer.recipes.QUANTIZATIONS)
    QUANTIZATIONS: ClassVar[tuple[str, ...]] = ("static_int8",)
    # ops the runtime has no int16 kernel for: int8 activations for them in static_int16x8
    INT8_ONLY_OPS: ClassVar[frozenset[str]] = frozenset()

    def compile(self, model: bytes, fmt: str, profile: Profile, calib: Any = None) -> Compiled:
        """The model as the target runs it; ``calib`` (a Dataset) feeds checks that run it."""
        raise NotImplementedError

    def host_backend(self, compiled: Compiled, probe: bool = False) -> dict[str, Any]:
        """load_backend options for the runtime the host measures fidelity on: the target's
        own where the host has it (``probe``: a copy of the model with extra outputs)."""
        return {}


def size_violations(profile: Profile, flash_bytes: int | None,
                    ram_bytes: int | None) -> tuple[str, ...]:
    """Budget misses, each saying by how many bytes."""
    out = []
    if flash_bytes is not None and flash_bytes > profile.flash_bytes:
        out.append(f"flash: needs {flash_bytes} B, {profile.name} has {profile.flash_bytes} B "
                   f"({flash_bytes - profile.flash_bytes} B over)")
    if ram_bytes is not None and ram_bytes > profile.ram_bytes:
        out.append(f"ram: needs {ram_bytes} B, {profile.name} has {profile.ram_bytes} B "
                   f"({ram_bytes - profile.ram_bytes} B over)")
    return tuple(out)
