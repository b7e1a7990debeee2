"""Per-op verdicts and the one-cut partition the compiler makes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...errors import ModelError
from ...tflite import model as tfl
from .checks import CHECKS, OpContext
from .table import DEFAULT_RUNTIME, OpsTable, load_ops_table

TAIL_REASON = "after the first fallback: the compiler makes one Edge TPU subgraph"
_INT8 = ("int8", "uint8")
_PARAM_INTS = ("int32", "int64")  # bias and shape/axis parameters
_CONTROL_FLOW = ("WHILE", "IF", "CALL_ONCE", "CALL")


@dataclass(frozen=True)
class OpVerdict:
    index: int
    op: str
    mappable: bool
    reason: str = ""
    rule: str = ""  # which check failed ("dtype", "rank", "unsupported", or a table check name)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "op": self.op, "reason": self.reason}


def analyze(model: bytes, runtime: int = DEFAULT_RUNTIME,
            table: OpsTable | None = None) -> list[OpVerdict]:
    """Whether each op of the main graph could map on its own (before the one-cut partition)."""
    table = table or load_ops_table()
    m = tfl.load(model)
    sg = m.subgraphs[0]
    many_subgraphs = len(m.subgraphs) > 1
    return [_verdict(OpContext(m, sg, op, i), table, runtime, many_subgraphs)
            for i, op in enumerate(sg.operators or [])]


def _verdict(ctx: OpContext, table: OpsTable, runtime: int, many_subgraphs: bool) -> OpVerdict:
    name = ctx.name

    def fail(rule: str, reason: str) -> OpVerdict:
        return OpVerdict(ctx.index, name, False, reason, rule)

    if name in _CONTROL_FLOW and many_subgraphs:
        return fail("subgraphs",
                    f"{name} runs another subgraph; the Edge TPU supports one subgraph only")
    rule = table.rule_for(name, runtime)
    if rule is None:
        first = table.first_runtime(name)
        if first is None:
            return fail("unsupported", f"{name} is not in the Edge TPU supported-operations table")
        return fail("runtime", f"{name} needs Edge TPU runtime >= {first} (compiler "
                               f"{table.min_compiler(first)}); target runtime is {runtime}")
    for check, reason in ((_dtype_problem, "dtype"), (_dynamic_problem, "dynamic"),
                          (_rank_problem, "rank")):
        problem = check(ctx)
        if problem:
            return fail(reason, problem)
    for spec in rule.checks:
        params = {k: v for k, v in spec.items() if k != "rule"}
        problem = CHECKS[spec["rule"]](ctx, **params)
        if problem:
            return fail(spec["rule"], f"{rule.name}: {problem} (limitation: {rule.limitations})")
    return OpVerdict(ctx.index, name, True)


def _dtype_problem(ctx: OpContext) -> str | None:
    for i in ctx.inputs() + ctx.outputs():
        dtype = tfl.tensor_type_name(ctx.tensor(i).type)
        allowed = _INT8 + _PARAM_INTS if ctx.const(i) is not None else _INT8
        if dtype not in allowed:
            return (f"Operation is working on an unsupported data type: {dtype} tensor "
                    f"'{ctx.tensor_name(i)}'")
    return None


def _dynamic_problem(ctx: OpContext) -> str | None:
    for i in ctx.inputs() + ctx.outputs():
        sig = ctx.tensor(i).shapeSignature
        if sig is not None and any(int(s) < 0 for s in sig):
            return (f"dynamic-sized tensor '{ctx.tensor_name(i)}' (shape {[int(s) for s in sig]}); "
                    "freeze the input shape")
    return None


def _rank_problem(ctx: OpContext) -> str | None:
    for i in ctx.inputs() + ctx.outputs():
        shape = ctx.shape(i)
        if ctx.const(i) is None and any(s != 1 for s in shape[:-3]):
            return (f"Tensor has unsupported rank (up to 3 innermost dimensions mapped): "
                    f"'{ctx.tensor_name(i)}' has shape {shape}")
    return None


@dataclass(frozen=True)
class Partition:
    on_tpu: tuple[OpVerdict, ...]
    on_cpu: tuple[OpVerdict, ...]

    @property
    def first_fallback(self) -> OpVerdict | None:
        return self.on_cpu[0] if self.on_cpu else None


def partition(verdicts: list[OpVerdict]) -> Partition:
    """The compiler cuts once: ops before the first unmappable op run on the Edge TPU, the rest
    on the CPU."""
    cut = next((v.index for v in verdicts if not v.mappable), len(verdicts))
    tail = tuple(v if not v.mappable or v.index == cut else
                 OpVerdict(v.index, v.op, False, TAIL_REASON, "tail") for v in verdicts[cut:])
    return Partition(on_tpu=tuple(verdicts[:cut]), on_cpu=tail)


def require_int8(model: bytes) -> None:
    """Refuse float and dynamic-range models: nothing of them can map to the Edge TPU."""
    m = tfl.load(model)
    sg = m.subgraphs[0]
    int_ops, float_ops = 0, []
    for index, op in enumerate(sg.operators or []):
        ctx = OpContext(m, sg, op, index)
        types = {tfl.tensor_type_name(ctx.tensor(i).type) for i in ctx.inputs() + ctx.outputs()
                 if ctx.const(i) is None}
        if types & {"float32", "float16"}:
            float_ops.append(f"{ctx.name}#{index}")
        elif types & set(_INT8):
            int_ops += 1
    if float_ops and not int_ops:
        listed = ", ".join(float_ops[:6]) + (
            f", … ({len(float_ops)} ops)" if len(float_ops) > 6 else ""
        )
        raise ModelError("Edge TPU needs a fully int8-quantized model; got float32 tensors in ops "
                         f"{listed} (use an int8 recipe)")
