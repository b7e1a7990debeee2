"""Latency judged for the target, not the build host.

Host timing says something only when the host's ISA is the target's (an x86-64 gateway packed
on an x86-64 laptop). Otherwise each candidate gets a labelled *estimate* from the target's
``[latency]`` table (its TOML file): per op, multiply-accumulates over the core's throughput
for the op's arithmetic (fp32 / fp16 / int8), bytes moved over its memory bandwidth, and a
fixed per-op overhead; Vela's own cycle estimate for Ethos-U; CMSIS-NN-class cycles per MAC for
Cortex-M. Int8 is never rejected for an Arm target because x86 runs it slowly.

``[latency]`` keys (all optional, numbers):
  fp32_gmacs, fp16_gmacs, int8_gmacs   application-class cores: sustained GMAC/s, all cores
  fp32_cycles_per_mac, int8_cycles_per_mac, op_overhead_cycles   MCU cores (with clock_mhz)
  mem_gbps, op_overhead_us              memory bandwidth (GB/s), fixed cost per op
  accelerator_int8_gmacs, link_gbps     Edge TPU: sustained int8 GMAC/s, host link (GB/s)
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..flash.bench_ssh import bench_on_device, parse_profile_uri
from ..onnx_model import parse_onnx
from ..tflite import model as tfl
from .evaluate import Latency, interleaved_latency
from .ingest import onnx_value_spec

SOURCES = ("measured-host", "measured-device", "estimated")
PREFER_FASTER = 0.80  # a later recipe is worth trying for speed when predicted <= 0.8x
_ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "armv8l": "aarch64"}
_MAC_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "Conv",
            "ConvTranspose", "Gemm", "MatMul", "QLinearConv", "QLinearMatMul", "ConvInteger",
            "MatMulInteger"}


@dataclass(frozen=True)
class OpCost:
    op: str
    macs: int
    bytes: int
    dtype: str  # the arithmetic: float32, float16 or int8


def host_arch() -> str:
    machine = platform.machine().lower()
    return _ARCH_ALIASES.get(machine, machine)


def host_timing_applies(profile: Any) -> bool:
    """Host timing stands for the target only on a CPU target of the host's own ISA."""
    return profile.family == "cpu" and host_arch() == profile.arch


# --- per-op costs ---------------------------------------------------------------------------

def op_costs(model: bytes, fmt: str) -> list[OpCost]:
    return _onnx_costs(model) if fmt == "onnx" else _tflite_costs(model)


def _tflite_costs(model: bytes) -> list[OpCost]:
    m = tfl.load(model)
    sg = m.subgraphs[0]
    const = {i for i, t in enumerate(sg.tensors) if t.buffer and m.buffers[t.buffer].data is not None
             and len(m.buffers[t.buffer].data)}
    out = []
    for op in sg.operators or []:
        name = tfl.op_name(m, op)
        ins, outs = [i for i in tfl.ints(op.inputs) if i >= 0], tfl.ints(op.outputs)
        if name == "DEQUANTIZE" and ins and ins[0] in const:
            continue  # fp16/int8 weights expanded once, when the interpreter is built
        nbytes = sum(_tensor_bytes(sg.tensors[i], tfl) for i in (*ins, *outs))
        macs = _tflite_macs(name, sg, ins, outs)
        types = {tfl.tensor_type_name(sg.tensors[i].type) for i in ins}
        dtype = "int8" if name in _MAC_OPS and types & {"int8", "uint8"} else "float32"
        out.append(OpCost(name, macs, nbytes, dtype))
    return out


def _tensor_bytes(tensor: Any, tfl: Any) -> int:
    shape = tfl.ints(tensor.shape) if tensor.shape is not None else []
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(_np_name(tfl.tensor_type_name(
        tensor.type))).itemsize


def _np_name(name: str) -> str:
    return name if name in ("float32", "float16", "int8", "uint8", "int16", "int32", "int64",
                            "bool", "float64") else "float32"


def _tflite_macs(name: str, sg: Any, ins: list[int], outs: list[int]) -> int:
    if name not in _MAC_OPS or len(ins) < 2:
        return 0
    out = [int(d) for d in sg.tensors[outs[0]].shape]
    w = [int(d) for d in sg.tensors[ins[1]].shape]
    per_out = int(np.prod(w[1:3])) if name == "DEPTHWISE_CONV_2D" else int(np.prod(w[1:]))
    return int(np.prod(out)) * per_out


def _onnx_costs(model: bytes) -> list[OpCost]:
    import onnx  # deferred like everywhere in the packer: ~0.65 s, and TFLite packs never need it

    m = parse_onnx(model)
    try:
        m = onnx.shape_inference.infer_shapes(m)
    except Exception:  # best effort: unknown shapes cost only their fixed overhead
        pass
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    shapes = {v.name: (onnx_value_spec(v).shape, onnx_value_spec(v).dtype)
              for v in (*g.value_info, *g.output, *g.input)}
    shapes.update({n: (tuple(i.dims), _onnx_dtype(i.data_type)) for n, i in inits.items()})
    produced_by = {o: n for n in g.node for o in n.output}
    outputs = {o.name for o in g.output}
    out = []
    for node in g.node:
        if node.op_type in ("DequantizeLinear", "Cast") and node.input[0] in inits:
            continue  # constant-folded when the session is built
        if _fused(node, produced_by, outputs):
            continue  # ONNX Runtime fuses Q/DQ pairs into the int8 kernels between them
        nbytes = sum(_nbytes(shapes.get(t)) for t in (*node.input, *node.output) if t)
        dq_in = any(produced_by.get(t) is not None and produced_by[t].op_type ==
                    "DequantizeLinear" for t in node.input[:1])
        int8 = node.op_type.startswith("QLinear") or node.op_type.endswith("Integer") or (
            node.op_type in _MAC_OPS and dq_in)
        elem = shapes.get(node.output[0], ((), "float32"))[1]
        dtype = "int8" if int8 else ("float16" if elem == "float16" else "float32")
        out.append(OpCost(node.op_type, _onnx_macs(node, shapes), nbytes, dtype))
    return out


def _fused(node: Any, produced_by: dict[str, Any], outputs: set[str]) -> bool:
    """Only the Quantize of a graph input and the Dequantize of a graph output stay real ops."""
    if node.op_type == "DequantizeLinear":
        return node.output[0] not in outputs
    return node.op_type == "QuantizeLinear" and node.input[0] in produced_by


def _onnx_dtype(code: int) -> str:
    return {1: "float32", 10: "float16", 3: "int8", 2: "uint8", 6: "int32", 7: "int64"}.get(
        code, "float32")


def _nbytes(entry: tuple[tuple[int, ...], str] | None) -> int:
    if entry is None or any(d < 0 for d in entry[0]):
        return 0
    return int(np.prod(entry[0], dtype=np.int64)) * np.dtype(_np_name(entry[1])).itemsize


def _onnx_macs(node: Any, shapes: dict[str, tuple[tuple[int, ...], str]]) -> int:
    if node.op_type not in _MAC_OPS:
        return 0
    out = shapes.get(node.output[0], ((), ""))[0]
    w_name = node.input[3] if node.op_type == "QLinearConv" else node.input[1]
    w = shapes.get(w_name, ((), ""))[0]
    if not out or not w or any(d < 0 for d in (*out, *w)):
        return 0
    if "Conv" in node.op_type:
        return int(np.prod(out)) * int(np.prod(w[1:]))
    return int(np.prod(out)) * int(w[0] if node.op_type != "Gemm" else w[-2])


# --- estimates ------------------------------------------------------------------------------

def estimate_ms(costs: list[OpCost], profile: Any, report: Any = None) -> float:
    """The target's p50 estimate for one inference of the model ``costs`` describes."""
    table = profile.latency
    if profile.family == "ethos-u" and report is not None:
        vela = report.details.get("vela", {})
        if vela.get("inference_time_ms"):
            return float(vela["inference_time_ms"])
    if profile.family == "edgetpu" and report is not None and report.ops_on_accelerator:
        return _edgetpu_ms(costs, profile, report)
    if "fp32_cycles_per_mac" in table or "int8_cycles_per_mac" in table:
        return _mcu_ms(costs, profile)
    return sum(_cpu_op_ms(c, table) for c in costs)


def _cpu_op_ms(c: OpCost, table: dict[str, float]) -> float:
    fp32 = table.get("fp32_gmacs", 10.0)
    rate = {"int8": table.get("int8_gmacs", fp32), "float16": table.get("fp16_gmacs", fp32)}.get(
        c.dtype, fp32)
    compute = c.macs / (rate * 1e9)
    memory = c.bytes / (table.get("mem_gbps", 4.0) * 1e9)
    return (max(compute, memory) + table.get("op_overhead_us", 2.0) * 1e-6) * 1e3


def _mcu_ms(costs: list[OpCost], profile: Any) -> float:
    table, hz = profile.latency, max(profile.clock_mhz, 1) * 1e6
    fp32 = table.get("fp32_cycles_per_mac", 8.0)
    cycles = 0.0
    for c in costs:
        per_mac = table.get("int8_cycles_per_mac", fp32) if c.dtype == "int8" else fp32
        # element-wise work: about one cycle per byte moved
        cycles += c.macs * per_mac + (0 if c.macs else c.bytes) + table.get(
            "op_overhead_cycles", 500.0)
    return cycles / hz * 1e3


def _edgetpu_ms(costs: list[OpCost], profile: Any, report: Any) -> float:
    table = profile.latency
    on_tpu = len(report.ops_on_accelerator) / max(
        len(report.ops_on_accelerator) + len(report.ops_on_cpu), 1)
    macs = sum(c.macs for c in costs)
    tpu = macs * on_tpu / (table.get("accelerator_int8_gmacs", 100.0) * 1e9)
    cpu = sum(_cpu_op_ms(c, table) for c in costs) * (1 - on_tpu) / 1e3
    link = (costs[0].bytes + costs[-1].bytes if costs else 0) / (table.get("link_gbps", 0.3) * 1e9)
    return (tpu + cpu + link) * 1e3


class Timing:
    """How candidates are timed for a target; the cost model also says which recipes are worth
    building for speed after one already fits."""

    source = "estimated"

    def __init__(self, profile: Any, model: bytes, fmt: str) -> None:
        self.profile = profile
        self.reference_costs = op_costs(model, fmt)
        self.reference_estimate_ms = estimate_ms(self.reference_costs, profile)

    def latency(self, cand: Any, ctx: Any) -> Latency:
        raise NotImplementedError

    def worth_trying(self, recipe: Any) -> bool:
        """Plain full int8 predicted clearly faster than float on the target's cores."""
        if not (recipe.full_integer and recipe.per_channel and recipe.calibration == "minmax"
                and not recipe.sparsity):
            return False
        # int8 weights and activations: a quarter of the float bytes through the MAC ops
        costs = [OpCost(c.op, c.macs, c.bytes // 4, "int8") if c.macs else c
                 for c in self.reference_costs]
        return estimate_ms(costs, self.profile) <= PREFER_FASTER * self.reference_estimate_ms


class EstimatedTiming(Timing):
    """The target's cost model (or Vela's estimate), labelled ``estimated``."""

    def latency(self, cand: Any, ctx: Any) -> Latency:
        report = cand.compiled.report if cand.compiled else None
        ms = estimate_ms(op_costs(cand.model, cand.format), self.profile, report)
        ref = self.reference_estimate_ms
        return Latency(ms, ms, ref, ms / max(ref, 1e-12), source=self.source)


class HostTiming(Timing):
    """Candidate and float model interleaved on this host: valid when its ISA is the target's."""

    source = "measured-host"

    def latency(self, cand: Any, ctx: Any) -> Latency:
        return interleaved_latency(cand.runner, ctx.reference, ctx.eval.sample(0))


def target_timing(profile: Any, model: bytes, fmt: str, profile_on: str | None = None,
                  ssh: tuple[tuple[str, ...], str] = ((), "edgekit-agent")) -> Timing:
    """Device timing when asked for (``ssh``: ssh -o options, agent command), host timing on
    the host's ISA, the cost model otherwise."""
    if profile_on:
        return DeviceTiming(profile, model, fmt, profile_on, *ssh)
    cls = HostTiming if host_timing_applies(profile) else EstimatedTiming
    return cls(profile, model, fmt)


class DeviceTiming(Timing):
    """Each candidate (as shipped) and the float model timed on the real board over ssh."""

    source = "measured-device"

    def __init__(self, profile: Any, model: bytes, fmt: str, uri: str,
                 ssh_options: tuple[str, ...] = (), agent_cmd: str = "edgekit-agent") -> None:
        super().__init__(profile, model, fmt)
        if profile.family != "cpu":
            raise ConfigError(f"measures on Linux boards running edgekit-agent (CPU targets); "
                              f"{profile.name} is {profile.family}", key="--profile-on",
                              value=uri)
        self._bench = bench_on_device
        self._target = parse_profile_uri(uri, ssh_options, agent_cmd)
        self.reference = bench_on_device(self._target, model)

    def latency(self, cand: Any, ctx: Any) -> Latency:
        got = self._bench(self._target, cand.shipped)
        ref = self.reference.p50_ms
        return Latency(got.p50_ms, got.p95_ms, ref, got.p50_ms / max(ref, 1e-9),
                       source=self.source)
