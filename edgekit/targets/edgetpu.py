"""Edge TPU family (Coral USB / Dev Board): full-int8 TFLite, op compatibility and partition.

edgekit checks every op of the main graph against Coral's supported-operations table
(``data/edgetpu_ops.toml``) and the general model rules (int8/uint8 tensors, static shapes, at
most the 3 innermost dimensions larger than 1, one subgraph), then predicts the partition the
compiler makes: it cuts the graph once, so the first op that cannot map and every op after it
run on the CPU. Fallbacks that a graph rewrite removes (float I/O wrappers, an activation fused
into pooling, LEAKY_RELU, a float op left behind by the quantizer) are rewritten, run against
the original, and re-checked. When ``edgetpu_compiler`` is on PATH it is run and its log parsed;
otherwise the report says the compile step is pending.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import ConfigError, ModelError
from .base import Compiled, TargetFamily, TargetReport, size_violations
from .profiles import Profile

OPS_TABLE_PATH = Path(__file__).parent / "data" / "edgetpu_ops.toml"
RUNTIME_VERSIONS = (10, 11, 12, 13, 14)
DEFAULT_RUNTIME = 14
COMPILER = "edgetpu_compiler"
COMPILER_TIMEOUT_S = 180
COMPILE_PENDING = f"pending: runs on first use on a host with {COMPILER}"
TAIL_REASON = "after the first fallback: the compiler makes one Edge TPU subgraph"
MIN_REWRITE_SQNR_DB = 30.0
MAX_REWRITE_ROUNDS = 8
_INT8 = ("int8", "uint8")
_PARAM_INTS = ("int32", "int64")  # bias and shape/axis parameters
_CONTROL_FLOW = ("WHILE", "IF", "CALL_ONCE", "CALL")


def _tfl() -> Any:
    # Imported on use: edgekit.packer imports the target registry, which imports this module.
    from ..packer import tflite_model

    return tflite_model


def _rw() -> Any:
    from ..packer import rewrite_tflite

    return rewrite_tflite


# --- the supported-operations table ---------------------------------------------------------

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
        return self.min_runtime <= runtime and (self.max_runtime is None or runtime <= self.max_runtime)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "builtins": list(self.builtins), "min_runtime": self.min_runtime,
                "max_runtime": self.max_runtime, "limitations": self.limitations,
                "checks": [dict(c) for c in self.checks], "evidence": self.evidence}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "OpRule":
        return cls(name=d["name"], builtins=tuple(d["builtins"]), min_runtime=int(d["min_runtime"]),
                   max_runtime=d.get("max_runtime"), limitations=d.get("limitations", ""),
                   checks=tuple(d.get("checks", ())), evidence=d.get("evidence", ""))


@dataclass(frozen=True)
class OpsTable:
    source: dict[str, Any]
    runtime_to_compiler: dict[int, str]
    rules: tuple[OpRule, ...]

    def rule_for(self, builtin: str, runtime: int) -> OpRule | None:
        return next((r for r in self.rules if builtin in r.builtins and r.applies_to(runtime)), None)

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


# --- per-op analysis --------------------------------------------------------------------------

@dataclass(frozen=True)
class OpVerdict:
    index: int
    op: str
    mappable: bool
    reason: str = ""
    rule: str = ""  # which check failed ("dtype", "rank", "unsupported", or a table check name)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "op": self.op, "reason": self.reason}


@dataclass
class _Op:
    """One operator with the lookups the checks need."""

    model: Any
    sg: Any
    op: Any
    index: int

    @property
    def name(self) -> str:
        return _tfl().op_name(self.model, self.op)

    @property
    def options(self) -> Any:
        return self.op.builtinOptions

    def tensor(self, i: int) -> Any:
        return self.sg.tensors[i]

    def tensor_name(self, i: int) -> str:
        raw = self.sg.tensors[i].name
        return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)

    def shape(self, i: int) -> list[int]:
        shape = self.sg.tensors[i].shape
        return [] if shape is None else [int(s) for s in shape]

    def const(self, i: int) -> np.ndarray | None:
        return _tfl().tensor_array(self.model, i) if i >= 0 else None

    def inputs(self) -> list[int]:
        return [i for i in (self.op.inputs if self.op.inputs is not None else []) if i >= 0]

    def outputs(self) -> list[int]:
        return [i for i in (self.op.outputs if self.op.outputs is not None else []) if i >= 0]


def analyze(model: bytes, runtime: int = DEFAULT_RUNTIME, table: OpsTable | None = None) -> list[OpVerdict]:
    """Whether each op of the main graph could map on its own (before the one-cut partition)."""
    table = table or load_ops_table()
    m = _tfl().load(model)
    sg = m.subgraphs[0]
    many_subgraphs = len(m.subgraphs) > 1
    return [_verdict(_Op(m, sg, op, i), table, runtime, many_subgraphs)
            for i, op in enumerate(sg.operators or [])]


def _verdict(ctx: _Op, table: OpsTable, runtime: int, many_subgraphs: bool) -> OpVerdict:
    name = ctx.name

    def fail(rule: str, reason: str) -> OpVerdict:
        return OpVerdict(ctx.index, name, False, reason, rule)

    if name in _CONTROL_FLOW and many_subgraphs:
        return fail("subgraphs", f"{name} runs another subgraph; the Edge TPU supports one subgraph only")
    rule = table.rule_for(name, runtime)
    if rule is None:
        first = table.first_runtime(name)
        if first is None:
            return fail("unsupported", f"{name} is not in the Edge TPU supported-operations table")
        return fail("runtime", f"{name} needs Edge TPU runtime >= {first} (compiler "
                               f"{table.min_compiler(first)}); target runtime is {runtime}")
    for check, reason in ((_dtype_problem, "dtype"), (_dynamic_problem, "dynamic"), (_rank_problem, "rank")):
        problem = check(ctx)
        if problem:
            return fail(reason, problem)
    for spec in rule.checks:
        params = {k: v for k, v in spec.items() if k != "rule"}
        problem = CHECKS[spec["rule"]](ctx, **params)
        if problem:
            return fail(spec["rule"], f"{rule.name}: {problem} (limitation: {rule.limitations})")
    return OpVerdict(ctx.index, name, True)


def _dtype_problem(ctx: _Op) -> str | None:
    for i in ctx.inputs() + ctx.outputs():
        dtype = _tfl().tensor_type_name(ctx.tensor(i).type)
        allowed = _INT8 + _PARAM_INTS if ctx.const(i) is not None else _INT8
        if dtype not in allowed:
            return f"Operation is working on an unsupported data type: {dtype} tensor '{ctx.tensor_name(i)}'"
    return None


def _dynamic_problem(ctx: _Op) -> str | None:
    for i in ctx.inputs() + ctx.outputs():
        sig = ctx.tensor(i).shapeSignature
        if sig is not None and any(int(s) < 0 for s in sig):
            return (f"dynamic-sized tensor '{ctx.tensor_name(i)}' (shape {[int(s) for s in sig]}); "
                    "freeze the input shape")
    return None


def _rank_problem(ctx: _Op) -> str | None:
    for i in ctx.inputs() + ctx.outputs():
        shape = ctx.shape(i)
        if ctx.const(i) is None and any(s != 1 for s in shape[:-3]):
            return (f"Tensor has unsupported rank (up to 3 innermost dimensions mapped): "
                    f"'{ctx.tensor_name(i)}' has shape {shape}")
    return None


# --- the table's limitations as checks (name -> function(ctx, **params) -> problem or None) -----

def _dim_labels(rank: int) -> list[str]:
    return ["batch"] * max(rank - 3, 0) + ["y", "x", "z"][max(3 - rank, 0):]


def _axes_labels(values: np.ndarray | list[int], rank: int) -> list[str]:
    labels = _dim_labels(rank)
    return [labels[int(a) % rank] for a in np.ravel(values)] if rank else []


def _check_no_fused_activation(ctx: _Op) -> str | None:
    act = getattr(ctx.options, "fusedActivationFunction", 0)
    if act:
        names = {v: k for k, v in vars(_tfl().schema.ActivationFunctionType).items() if not k.startswith("_")}
        return f"has a fused {names.get(act, act)} activation"
    return None


def _check_same_dilation(ctx: _Op) -> str | None:
    h, w = getattr(ctx.options, "dilationHFactor", 1), getattr(ctx.options, "dilationWFactor", 1)
    return f"dilation differs in y ({h}) and x ({w})" if h != w else None


def _check_no_dilation(ctx: _Op) -> str | None:
    h, w = getattr(ctx.options, "dilationHFactor", 1), getattr(ctx.options, "dilationWFactor", 1)
    return f"dilated kernel ({h}x{w})" if (h, w) != (1, 1) else None


def _check_constant_inputs_zero_pair(ctx: _Op) -> str | None:
    ins = ctx.inputs()
    consts = [i for i in ins if ctx.const(i) is not None]
    if not consts:
        return None
    if len(ins) != 2:
        return f"{len(ins)} inputs with a constant among them (only 2 allowed)"
    q = ctx.tensor(consts[0]).quantization
    zero = int(q.zeroPoint[0]) if q is not None and q.zeroPoint is not None and len(q.zeroPoint) else 0
    if np.any(ctx.const(consts[0]) != zero):
        return f"constant input '{ctx.tensor_name(consts[0])}' is not all zeros"
    return None


def _check_default_weights_format(ctx: _Op) -> str | None:
    fmt = getattr(ctx.options, "weightsFormat", 0)
    return f"weights format {fmt} is not the default" if fmt else None


def _check_output_one_dimensional(ctx: _Op) -> str | None:
    shape = ctx.shape(ctx.outputs()[0])
    return f"output shape {shape} has more than one dimension > 1" if sum(s > 1 for s in shape) > 1 else None


def _check_reduce_axes_within(ctx: _Op, dims: list[str]) -> str | None:
    x, axes = ctx.inputs()[:2]
    values = ctx.const(axes)
    if values is None:
        return "reduction axes are not constant"
    labels = _axes_labels(values, len(ctx.shape(x)))
    bad = [lab for lab in labels if lab not in dims]
    return f"reduces along {'/'.join(bad)} (axes {np.ravel(values).tolist()})" if bad else None


def _check_z_reduction_multiple(ctx: _Op, multiple: int) -> str | None:
    x, axes = ctx.inputs()[:2]
    values = ctx.const(axes)
    shape = ctx.shape(x)
    if values is not None and "z" in _axes_labels(values, len(shape)) and shape[-1] % multiple:
        return f"z-reduction over {shape[-1]} channels (not a multiple of {multiple})"
    return None


def _check_pad_dims_within(ctx: _Op, dims: list[str]) -> str | None:
    x, pads = ctx.inputs()[:2]
    values = ctx.const(pads)
    if values is None:
        return "paddings are not constant"
    labels = _dim_labels(len(ctx.shape(x)))
    rows = np.asarray(values).reshape(-1, 2)
    bad = [lab for lab, row in zip(labels, rows) if np.any(row) and lab not in dims]
    return f"pads along {'/'.join(bad)}" if bad else None


def _check_pack_axis_not_batch(ctx: _Op) -> str | None:
    rank = len(ctx.shape(ctx.outputs()[0]))
    axis = getattr(ctx.options, "axis", 0)
    return "packs along the batch dimension" if _axes_labels([axis], rank) == ["batch"] else None


def _check_split_axis_not_batch(ctx: _Op) -> str | None:
    axis_t, x = ctx.inputs()[:2]
    values = ctx.const(axis_t)
    if values is None:
        return "split axis is not constant"
    return "splits along the batch dimension" if "batch" in _axes_labels(values, len(ctx.shape(x))) else None


def _check_alpha_innermost_only(ctx: _Op) -> str | None:
    shape = ctx.shape(ctx.inputs()[1])
    if any(s > 1 for s in shape[:-1]):
        return f"alpha shape {shape} varies outside the innermost dimension"
    return None


def _check_input_one_dimensional(ctx: _Op, max_elements: int) -> str | None:
    shape = ctx.shape(ctx.inputs()[0])
    if sum(s > 1 for s in shape) > 1:
        return f"input shape {shape} is not 1-D"
    size = int(np.prod(shape)) if shape else 1
    return f"input has {size} elements (max {max_elements})" if size > max_elements else None


def _check_squeeze_leading_ones(ctx: _Op) -> str | None:
    shape = ctx.shape(ctx.inputs()[0])
    dims = getattr(ctx.options, "squeezeDims", None)
    squeezed = [int(d) % len(shape) for d in dims] if dims is not None and len(dims) else \
        [i for i, s in enumerate(shape) if s == 1]
    first_big = next((i for i, s in enumerate(shape) if s > 1), len(shape))
    late = [d for d in squeezed if d > first_big]
    return f"squeezes dimension {late} after a dimension > 1 (needs a relayout)" if late else None


def _check_unit_strides_no_masks(ctx: _Op) -> str | None:
    strides = ctx.const(ctx.inputs()[3]) if len(ctx.inputs()) > 3 else None
    if strides is None or np.any(strides != 1):
        return f"strides {None if strides is None else strides.tolist()} are not all 1"
    for mask in ("ellipsisMask", "newAxisMask"):
        if getattr(ctx.options, mask, 0):
            return f"{mask} is {getattr(ctx.options, mask)}"
    return None


def _check_batch_of_one(ctx: _Op) -> str | None:
    shape = ctx.shape(ctx.inputs()[0])
    return f"input shape {shape} has a batch > 1" if len(shape) == 4 and shape[0] != 1 else None


CHECKS: dict[str, Callable[..., str | None]] = {
    "no_fused_activation": _check_no_fused_activation,
    "same_dilation": _check_same_dilation,
    "no_dilation": _check_no_dilation,
    "constant_inputs_zero_pair": _check_constant_inputs_zero_pair,
    "default_weights_format": _check_default_weights_format,
    "output_one_dimensional": _check_output_one_dimensional,
    "reduce_axes_within": _check_reduce_axes_within,
    "z_reduction_multiple": _check_z_reduction_multiple,
    "pad_dims_within": _check_pad_dims_within,
    "pack_axis_not_batch": _check_pack_axis_not_batch,
    "split_axis_not_batch": _check_split_axis_not_batch,
    "alpha_innermost_only": _check_alpha_innermost_only,
    "input_one_dimensional": _check_input_one_dimensional,
    "squeeze_leading_ones": _check_squeeze_leading_ones,
    "unit_strides_no_masks": _check_unit_strides_no_masks,
    "batch_of_one": _check_batch_of_one,
}


# --- partition ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Partition:
    on_tpu: tuple[OpVerdict, ...]
    on_cpu: tuple[OpVerdict, ...]

    @property
    def first_fallback(self) -> OpVerdict | None:
        return self.on_cpu[0] if self.on_cpu else None


def partition(verdicts: list[OpVerdict]) -> Partition:
    """The compiler cuts once: ops before the first unmappable op run on the Edge TPU, the rest on CPU."""
    cut = next((v.index for v in verdicts if not v.mappable), len(verdicts))
    tail = tuple(v if not v.mappable or v.index == cut else
                 OpVerdict(v.index, v.op, False, TAIL_REASON, "tail") for v in verdicts[cut:])
    return Partition(on_tpu=tuple(verdicts[:cut]), on_cpu=tail)


def require_int8(model: bytes) -> None:
    """Refuse float and dynamic-range models: nothing of them can map to the Edge TPU."""
    m = _tfl().load(model)
    sg = m.subgraphs[0]
    int_ops, float_ops = 0, []
    for index, op in enumerate(sg.operators or []):
        ctx = _Op(m, sg, op, index)
        types = {_tfl().tensor_type_name(ctx.tensor(i).type) for i in ctx.inputs() + ctx.outputs()
                 if ctx.const(i) is None}
        if types & {"float32", "float16"}:
            float_ops.append(f"{ctx.name}#{index}")
        elif types & set(_INT8):
            int_ops += 1
    if float_ops and not int_ops:
        listed = ", ".join(float_ops[:6]) + (f", … ({len(float_ops)} ops)" if len(float_ops) > 6 else "")
        raise ModelError("Edge TPU needs a fully int8-quantized model; got float32 tensors in ops "
                         f"{listed} (use an int8 recipe)")


# --- rewrites for fixable fallbacks ---------------------------------------------------------------

Rewrite = Callable[[bytes], tuple[bytes, list[str]]]


def _rewrites_for(verdict: OpVerdict, runtime: int, table: OpsTable) -> list[tuple[str, Rewrite]]:
    """Rewrites that may remove this fallback, in the order to try them."""
    out: list[tuple[str, Rewrite]] = []
    if verdict.op in ("QUANTIZE", "DEQUANTIZE"):
        out.append(("strip_float_io", _rw().strip_float_io))
    if verdict.op == "DEQUANTIZE":
        out.append(("requantize_float_islands", _rw().requantize_float_islands))
    if verdict.rule == "no_fused_activation":
        out.append(("split_fused_activation", lambda b: _rw().split_fused_activation(b, [verdict.op])))
    if verdict.op == "LEAKY_RELU" and table.rule_for("PRELU", runtime):
        out.append(("leaky_relu_to_prelu", _rw().leaky_relu_to_prelu))
    return out


def fix_fallbacks(model: bytes, runtime: int, table: OpsTable,
                  probes: list[list[np.ndarray]] | None = None) -> tuple[bytes, list[dict[str, Any]]]:
    """Rewrite while the first fallback has a known fix that puts more ops on the Edge TPU and
    keeps the outputs (within 1 LSB, or SQNR against the model before ≥ MIN_REWRITE_SQNR_DB) on
    ``probes`` (float input samples; seeded random inputs when None)."""
    applied: list[dict[str, Any]] = []
    for _ in range(MAX_REWRITE_ROUNDS):
        step = _next_fix(model, runtime, table, probes)
        if step is None:
            break
        candidate, record = step
        applied.append(record)
        if not record["kept"]:
            break
        model = candidate
    return model, applied


def _next_fix(model: bytes, runtime: int, table: OpsTable,
              probes: list[list[np.ndarray]] | None) -> tuple[bytes, dict[str, Any]] | None:
    before = partition(analyze(model, runtime, table))
    if before.first_fallback is None:
        return None
    for name, rewrite in _rewrites_for(before.first_fallback, runtime, table):
        candidate, changes = rewrite(model)
        if changes and len(partition(analyze(candidate, runtime, table)).on_tpu) > len(before.on_tpu):
            return candidate, {"rewrite": name, "changes": changes, **_checked(model, candidate, probes)}
    return None


def _checked(before: bytes, after: bytes, probes: list[list[np.ndarray]] | None) -> dict[str, Any]:
    try:
        diff = _rw().compare_outputs(before, after, probes)
    except Exception as exc:  # a model LiteRT cannot run cannot be verified: keep the original
        return {"kept": False, "why": f"could not run the rewritten model: {str(exc).splitlines()[0]}"}
    kept = diff["max_diff_lsb"] <= 1 or (diff["sqnr_db"] or 0.0) >= MIN_REWRITE_SQNR_DB
    return {"kept": kept, **diff}


# --- edgetpu_compiler -----------------------------------------------------------------------------

_SIZE = r"([\d.]+)\s*([KMG]?i?B)"
_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024 ** 2, "GiB": 1024 ** 3,
          "KB": 1000, "MB": 1000 ** 2, "GB": 1000 ** 3}
_LOG_FIELDS = {
    "onchip_param_bytes_used": rf"On-chip memory used for caching model parameters:\s*{_SIZE}",
    "onchip_param_bytes_remaining": rf"On-chip memory remaining for caching model parameters:\s*{_SIZE}",
    "offchip_param_bytes": rf"Off-chip memory used for streaming uncached model parameters:\s*{_SIZE}",
}
_LOG_COUNTS = {
    "edgetpu_subgraphs": r"Number of Edge TPU subgraphs:\s*(\d+)",
    "total_ops": r"Total number of operations:\s*(\d+)",
    "ops_mapped": r"Number of operations that will run on Edge TPU:\s*(\d+)",
    "ops_unmapped": r"Number of operations that will run on CPU:\s*(\d+)",
}
_OP_ROW = re.compile(r"^([A-Z][A-Z0-9_]*)\s+(\d+)\s+(\S.*?)\s*$")
MAPPED_STATUS = "Mapped to Edge TPU"


def parse_compiler_log(text: str) -> dict[str, Any]:
    """Figures from ``edgetpu_compiler --show_operations`` output (stdout and operation log)."""
    out: dict[str, Any] = {}
    version = re.search(r"Edge TPU Compiler version\s+(\S+)", text)
    if version:
        out["version"] = version.group(1)
    for key, pattern in _LOG_FIELDS.items():
        hit = re.search(pattern, text)
        if hit:
            out[key] = round(float(hit.group(1)) * _UNITS[hit.group(2)])
    for key, pattern in _LOG_COUNTS.items():
        hit = re.search(pattern, text)
        if hit:
            out[key] = int(hit.group(1))
    rows = [{"op": m.group(1), "count": int(m.group(2)), "status": m.group(3)}
            for m in map(_OP_ROW.match, text.splitlines()) if m]
    if rows:
        out["operations"] = rows
        mapped = sum(r["count"] for r in rows if r["status"] == MAPPED_STATUS)
        out.setdefault("ops_mapped", mapped)
        out.setdefault("ops_unmapped", sum(r["count"] for r in rows) - mapped)
    if "ops_mapped" in out and "ops_unmapped" in out:
        out.setdefault("total_ops", out["ops_mapped"] + out["ops_unmapped"])
    return out


def run_compiler(model: bytes, runtime: int, compiler: str = COMPILER) -> tuple[bytes, dict[str, Any]]:
    """Compile with ``edgetpu_compiler``; returns the compiled model and the parsed log."""
    with tempfile.TemporaryDirectory(prefix="edgekit-edgetpu-") as tmp:
        src = Path(tmp) / "model.tflite"
        src.write_bytes(model)
        cmd = [compiler, "--show_operations", "--out_dir", tmp, "--min_runtime_version", str(runtime),
               "--timeout_sec", str(COMPILER_TIMEOUT_S), str(src)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILER_TIMEOUT_S + 30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ModelError(f"{compiler} did not run: {exc}") from None
        text = proc.stdout + "\n" + proc.stderr
        out = Path(tmp) / "model_edgetpu.tflite"
        if proc.returncode != 0 or not out.is_file():
            raise ModelError(f"{compiler} failed: {_last_error_line(text)}")
        log = Path(tmp) / "model_edgetpu.log"
        if log.is_file():
            text += "\n" + log.read_text(errors="replace")
        return out.read_bytes(), parse_compiler_log(text)


def _last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors or lines or ["no output"])[-1][:300]


# --- the family -------------------------------------------------------------------------------------

class EdgeTpuFamily(TargetFamily):
    NAME = "edgetpu"
    OPTIONS = {"onchip_param_bytes": (int, None), "host": (str, None),
               "runtime_version": (int, RUNTIME_VERSIONS)}
    REQUIRED_OPTIONS = ("onchip_param_bytes",)
    FULL_INT8 = True

    @property
    def HOST_RUNNABLE(self) -> bool:  # noqa: N802 (the base class's constant, decided per host)
        # edgetpu_compiler output needs the Edge TPU delegate; without the compiler the
        # compiled model is the (rewritten) int8 TFLite model, which LiteRT runs.
        return shutil.which(COMPILER) is None

    def compile(self, model: bytes, fmt: str, profile: Profile, calib: Any = None) -> Compiled:
        if fmt != "tflite":
            raise ModelError(f"Edge TPU runs TFLite models only; got {fmt!r} (convert it to TFLite first)")
        runtime = int(profile.options.get("runtime_version", DEFAULT_RUNTIME))
        table = load_ops_table()
        require_int8(model)
        model, rewrites = fix_fallbacks(model, runtime, table, _rw().calibration_probes(calib))
        part = partition(analyze(model, runtime, table))
        compiled, compiler = model, None
        if shutil.which(COMPILER):
            compiled, compiler = run_compiler(model, runtime)
        report = self._report(model, compiled, part, compiler, rewrites, runtime, table, profile)
        return Compiled(model=compiled, format="tflite", report=report)

    def _report(self, model: bytes, compiled: bytes, part: Partition, compiler: dict[str, Any] | None,
                rewrites: list[dict[str, Any]], runtime: int, table: OpsTable,
                profile: Profile) -> TargetReport:
        first = part.first_fallback
        param_bytes = _param_bytes(model, {v.index for v in part.on_tpu})
        ops = ([{"index": v.index, "op": v.op, "on": "edgetpu"} for v in part.on_tpu]
               + [{"index": v.index, "op": v.op, "on": "cpu", "reason": v.reason} for v in part.on_cpu])
        done = f"done: {COMPILER} {compiler.get('version', '')}".strip() if compiler is not None else None
        details: dict[str, Any] = {
            "first_fallback": first.to_dict() if first else None,
            "ops": ops,
            "rewrites": rewrites,
            "compile_steps": [c for r in rewrites if r["kept"] for c in r["changes"]]
                             + [done or COMPILE_PENDING],
            "runtime_version": runtime,
            "min_compiler_version": table.min_compiler(runtime),
            "ops_table": {"url": table.source["url"], "table_runtime": table.source["table_runtime"],
                          "retrieved": table.source["retrieved"]},
            "param_bytes": param_bytes,
            "compiler": compiler if compiler is not None else "pending",
            "compile_step": done or COMPILE_PENDING,
            "notes": _notes(model, part, compiler, param_bytes, profile),
        }
        return TargetReport(family=self.NAME,
                            ops_on_accelerator=tuple(v.op for v in part.on_tpu),
                            ops_on_cpu=tuple(v.op for v in part.on_cpu),
                            sram_bytes=compiler.get("onchip_param_bytes_used") if compiler else None,
                            flash_bytes=len(compiled),
                            violations=size_violations(profile, len(compiled), None),
                            details=details)


def _param_bytes(model: bytes, op_indices: set[int]) -> int:
    """Bytes of constant data (weights, biases) the given ops read, each buffer counted once."""
    m = _tfl().load(model)
    sg = m.subgraphs[0]
    buffers: set[int] = set()
    for index in op_indices:
        for i in _Op(m, sg, sg.operators[index], index).inputs():
            buf = sg.tensors[i].buffer
            if buf and m.buffers[buf].data is not None and len(m.buffers[buf].data):
                buffers.add(buf)
    return sum(len(m.buffers[b].data) for b in buffers)


def _notes(model: bytes, part: Partition, compiler: dict[str, Any] | None, param_bytes: int,
           profile: Profile) -> list[str]:
    notes = []
    cache = int(profile.options["onchip_param_bytes"])
    streamed = compiler.get("offchip_param_bytes") if compiler else max(param_bytes - cache, 0)
    if streamed:
        source = "compiler" if compiler else "predicted"
        notes.append(f"parameters exceed the {cache} B on-chip cache: {streamed} B stream from host "
                     f"memory every inference ({source}); slower, not a failure")
    if len(_tfl().load(model).subgraphs) > 1:
        notes.append("model has more than one subgraph; only the main graph can map")
    if part.first_fallback and part.first_fallback.index == 0:
        notes.append("no op maps to the Edge TPU: the whole model runs on the CPU")
    return notes
