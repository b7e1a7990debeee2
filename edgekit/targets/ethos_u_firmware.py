"""What an Ethos-U firmware needs from a bundle: the Vela model as C sources, a TFLM op resolver
with ``AddEthosU``, and the tensor arena size; plus the arena the host form (the int8 model
before Vela) needs under TFLM, which the self-test runs.

The arena of the Vela model cannot be measured on a host: its ``ethos-u`` op only runs on the
NPU. It is built from two figures that are measured: Vela's own memory plan, which it stores in
the model (``OfflineMemoryAllocation`` metadata: arena offsets of the scratch and I/O tensors;
TFLM places those tensors there instead of planning them; without a plan, the SRAM use Vela
reports stands in), and TFLM's persistent allocations
(interpreter, tensor and op structures) recorded while the host form runs. The host form has at
least as many tensors and ops as the Vela model, so that overhead is an upper bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit_agent.bundle.manifest import TensorSpec

from ..errors import ModelError
from ..tflite import model as tfl
from .mcu.arena import measure_arena
from .mcu.csource import generate_sources

OFFLINE_PLAN = b"OfflineMemoryAllocation"
NPU_METHODS = {"CUSTOM:ethos-u": "AddEthosU"}  # TFLM's MicroMutableOpResolver method


@dataclass(frozen=True)
class EthosUArena:
    arena_bytes: int            # what the firmware allocates for the Vela model
    scratch_bytes: int          # Vela's offline plan: the span of its scratch and I/O tensors
    persistent_bytes: int       # TFLM's persistent allocations, recorded on the host form
    host_arena_bytes: int       # smallest arena the host form allocates and invokes with
    planned_by: str = "offline plan"

    def to_details(self) -> dict[str, Any]:
        return {"arena_scratch_bytes": self.scratch_bytes,
                "arena_persistent_bytes": self.persistent_bytes,
                "host_arena_bytes": self.host_arena_bytes,
                "arena_basis": f"Vela {self.planned_by} + TFLM persistent bytes of the host form"}


def offline_plan_bytes(optimised: bytes) -> int | None:
    """The arena span of Vela's offline plan: max(offset + size) over the planned tensors
    (None when the model carries no plan)."""
    model_t = tfl.load(optimised)
    meta = next((m for m in model_t.metadata or [] if m.name == OFFLINE_PLAN), None)
    if meta is None:
        return None
    plan = np.frombuffer(bytes(model_t.buffers[meta.buffer].data), dtype="<i4")
    sg = model_t.subgraphs[0]
    count = int(plan[2])
    offsets = plan[3:3 + count]
    if count != len(sg.tensors) or len(offsets) != count:
        raise ModelError(f"Vela's memory plan lists {count} tensors, the model has "
                         f"{len(sg.tensors)}")
    span = 0
    for index, offset in enumerate(offsets):
        if offset >= 0:
            span = max(span, int(offset) + _tensor_bytes(sg.tensors[index]))
    return span


def _tensor_bytes(tensor: Any) -> int:
    shape = [max(int(d), 1) for d in (tensor.shape if tensor.shape is not None else [])]
    itemsize = np.dtype(tfl.tensor_type_name(tensor.type)).itemsize
    return int(np.prod(shape, dtype=np.int64)) * itemsize


def ethos_u_arena(optimised: bytes, host_model: bytes, alignment: int,
                  vela_sram_bytes: int) -> EthosUArena:
    """The arena for the Vela model; without an offline plan in it, Vela's reported SRAM use
    (the tensor arena it planned) stands in for the plan's span."""
    host = measure_arena(host_model)
    plan = offline_plan_bytes(optimised)
    scratch = vela_sram_bytes if plan is None else plan
    need = scratch + host.recorded_tail_bytes
    arena = -(-need // alignment) * alignment + alignment  # same margin as the MCU family
    return EthosUArena(arena_bytes=arena, scratch_bytes=scratch,
                       persistent_bytes=host.recorded_tail_bytes,
                       host_arena_bytes=host.with_margin(alignment),
                       planned_by="offline plan" if plan is not None else "Vela summary SRAM")


def firmware_sources(optimised: bytes, arena: EthosUArena, inputs: tuple[TensorSpec, ...],
                     outputs: tuple[TensorSpec, ...]) -> dict[str, bytes]:
    """``mcu/model_data.{c,h}`` (the Vela model) and ``mcu/op_resolver.{h,cc}``: the same files,
    under the same names, as an MCU bundle, so one firmware skeleton builds either."""
    ops = [name for i in range(len(tfl.load(optimised).subgraphs))
           for name in tfl.op_names(optimised, i)]
    note = (f"Vela plan {arena.scratch_bytes} B + TFLM persistent {arena.persistent_bytes} B "
            "(host form), + alignment margin")
    return generate_sources(optimised, arena_bytes=arena.arena_bytes, inputs=inputs,
                            outputs=outputs, ops=ops, arena_note=note,
                            extra_methods=NPU_METHODS)
