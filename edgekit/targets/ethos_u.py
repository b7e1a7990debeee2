"""Arm Ethos-U family: full-int8 TFLite compiled by Vela for the profile's accelerator config.

The compile step is the real ``vela`` CLI (ethos-u-vela) with the profile's accelerator, system
config and memory mode from Vela's bundled ``Arm/vela.ini``. Its summary CSV gives SRAM, DRAM and
flash use, cycles and the inference-time estimate; its stdout gives the NPU and CPU op counts;
the optimised model it writes (NPU work folded into ``ethos-u`` custom ops, the rest left as
TFLite ops for the Cortex-M) is what ships, and which original ops stayed on the CPU is read
from it. Budgets: SRAM against ``ram_bytes``; the optimised model plus
``options.runtime_code_bytes`` against ``flash_bytes``.

What makes the bundle deployable (``ethos_u_firmware``): the firmware's C sources of the Vela
model with an op resolver that registers ``AddEthosU``, its tensor arena size, and the int8 model
Vela compiled as ``Compiled.host_model``: the form a host without the NPU runs, so the packer's
fidelity figures and the device's self-test are measured on the very network the NPU runs.
"""

from __future__ import annotations

import csv
import importlib.util
import re
import shutil
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from edgekit_agent.runtime import load_backend
from edgekit_agent.validate import invalid

from ..errors import ModelError
from ..tflite import model as tfl
from ..tflite import rewrite as rw
from .base import Compiled, Profile, TargetFamily, TargetReport, size_violations
from .ethos_u_firmware import ethos_u_arena, firmware_sources
from .mcu.arena import DEFAULT_ALIGNMENT
from .mcu.ops import TFLM_INT8_ONLY_OPS

SYSTEM_CONFIGS = ("Ethos_U55_Deep_Embedded", "Ethos_U55_High_End_Embedded", "Ethos_U65_Embedded",
                  "Ethos_U65_Mid_End", "Ethos_U65_High_End", "Ethos_U65_Client_Server")
MEMORY_MODES = ("Sram_Only", "Shared_Sram", "Dedicated_Sram")
ACCELERATOR_CONFIGS = ("ethos-u55-32", "ethos-u55-64", "ethos-u55-128", "ethos-u55-256",
                       "ethos-u65-256", "ethos-u65-512")
VELA = "vela"
VELA_TIMEOUT_S = 600
NPU_OP = "CUSTOM:ethos-u"
SUMMARY_FILE = "vela_summary.csv"
MIN_REWRITE_SQNR_DB = 30.0
_INTEGER_ACTIVATIONS = ("int8", "int16")
_KIB_FIELDS = {"sram_bytes": "sram_memory_used", "dram_bytes": "dram_memory_used",
               "onchip_flash_bytes": "on_chip_flash_memory_used",
               "offchip_flash_bytes": "off_chip_flash_memory_used"}
_NUMBER_FIELDS = {"cycles_npu": "cycles_npu", "cycles_total": "cycles_total", "macs": "nn_macs",
                  "weights_original_bytes": "total_original_weights",
                  "weights_encoded_bytes": "total_npu_encoded_weights",
                  "core_clock_hz": "core_clock"}


def vela_config_file() -> Path:
    """Vela's bundled ``Arm/vela.ini`` (system configs and memory modes)."""
    spec = importlib.util.find_spec("ethosu")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("ethos-u-vela is not installed: pip install ethos-u-vela")
    return Path(list(spec.submodule_search_locations)[0]) / "config_files" / "Arm" / "vela.ini"


def parse_vela_stdout(text: str) -> dict[str, int]:
    """NPU and CPU operator counts from Vela's network summary."""
    out = {}
    for key, label in (("npu_ops", "NPU"), ("cpu_ops", "CPU")):
        hit = re.search(rf"^{label} operators = (\d+)", text, re.MULTILINE)
        if hit:
            out[key] = int(hit.group(1))
    return out


def parse_vela_summary(path: Path) -> dict[str, Any]:
    """Figures from Vela's summary CSV (memory in bytes, cycles, inference time in ms)."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ModelError(f"Vela wrote an empty summary {path.name}")
    row = rows[-1]
    out: dict[str, Any] = {key: round(float(row[col]) * 1024) for key, col in _KIB_FIELDS.items()}
    out.update({key: round(float(row[col])) for key, col in _NUMBER_FIELDS.items()})
    out["inference_time_ms"] = round(float(row["inference_time"]) * 1000, 6)
    out["inferences_per_second"] = round(float(row["inferences_per_second"]), 2)
    out["accelerator_configuration"] = row["accelerator_configuration"]
    out["system_config"], out["memory_mode"] = row["system_config"], row["memory_mode"]
    return out


def run_vela(model: bytes, accelerator: str, system_config: str,
             memory_mode: str) -> tuple[bytes, dict[str, Any], bytes]:
    """Compile with the ``vela`` CLI; returns the optimised model, its figures and Vela's
    summary CSV as written."""
    exe = shutil.which(VELA)
    if exe is None:
        raise ModelError("vela not found on PATH: pip install ethos-u-vela")
    with tempfile.TemporaryDirectory(prefix="edgekit-vela-") as tmp:
        src = Path(tmp) / "model.tflite"
        src.write_bytes(model)
        out_dir = Path(tmp) / "out"
        cmd = [exe, str(src), "--accelerator-config", accelerator, "--system-config", system_config,
               "--memory-mode", memory_mode, "--config", str(vela_config_file()),
               "--output-dir", str(out_dir)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=VELA_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise ModelError(f"vela did not finish within {VELA_TIMEOUT_S} s") from None
        optimised = out_dir / "model_vela.tflite"
        summaries = sorted(out_dir.glob("model_summary_*.csv"))
        if proc.returncode != 0 or not optimised.is_file() or not summaries:
            raise ModelError(f"vela failed: {_vela_error(proc.stderr or proc.stdout)}")
        figures = {**parse_vela_summary(summaries[0]), **parse_vela_stdout(proc.stdout)}
        return optimised.read_bytes(), figures, summaries[0].read_bytes()


def _vela_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    last = lines[-1] if lines else "no output"
    last = re.sub(r"^[\w.]*(Error|Exception)\w*:\s*", "", last).strip().strip('"')
    return re.sub(r"^Error:\s*", "", last)[:300]


def split_ops(original: bytes, optimised: bytes) -> tuple[list[str], list[str]]:
    """(ops on the NPU, ops left on the CPU) of the original model, in its order: an original op
    is on the CPU when the optimised model still has it as a TFLite op producing the same tensor."""
    def outputs_by_op(model: bytes) -> list[tuple[str, set[bytes]]]:
        m = tfl.load(model)
        sg = m.subgraphs[0]
        return [(tfl.op_name(m, op), {sg.tensors[i].name for i in op.outputs if i >= 0})
                for op in sg.operators or []]

    cpu_outputs = set().union(*[outs for name, outs in outputs_by_op(optimised) if name != NPU_OP])
    npu, cpu = [], []
    for name, outs in outputs_by_op(original):
        (cpu if outs & cpu_outputs else npu).append(name)
    return npu, cpu


def integer_model(model: bytes,
                  probes: list[list[Any]] | None = None) -> tuple[bytes, list[dict[str, Any]]]:
    """The model with float I/O wrappers and float islands turned integer (each change checked
    against the model before it on ``probes``, float input samples; seeded random inputs when
    None), or ModelError if float activations remain."""
    applied: list[dict[str, Any]] = []
    for name, rewrite in (("strip_float_io", rw.strip_float_io),
                          ("requantize_float_islands", rw.requantize_float_islands)):
        candidate, changes = rewrite(model)
        if not changes:
            continue
        diff = rw.compare_outputs(model, candidate, probes)
        kept = diff["max_diff_lsb"] <= 1 or (diff["sqnr_db"] or 0.0) >= MIN_REWRITE_SQNR_DB
        applied.append({"rewrite": name, "changes": changes, "kept": kept, **diff})
        if kept:
            model = candidate
    float_ops = _float_ops(model)
    if float_ops:
        listed = ", ".join(float_ops[:6]) + (
            f", … ({len(float_ops)} ops)" if len(float_ops) > 6 else ""
        )
        raise ModelError(
            "Vela needs an int8/int16-quantized TFLite model; got float32 tensors in ops "
            f"{listed} (use an int8 recipe)"
        )
    return model, applied


def _float_ops(model: bytes) -> list[str]:
    m = tfl.load(model)
    sg = m.subgraphs[0]
    out = []
    for index, op in enumerate(sg.operators or []):
        tensors = [
            i for i in [*op.inputs, *op.outputs] if i >= 0 and tfl.tensor_array(m, i) is None
        ]
        allowed = (*_INTEGER_ACTIVATIONS, "int32", "bool")
        if any(tfl.tensor_type_name(sg.tensors[i].type) not in allowed for i in tensors):
            out.append(f"{tfl.op_name(m, op)}#{index}")
    return out


class EthosUFamily(TargetFamily):
    NAME = "ethos-u"
    OPTIONS = {"system_config": (str, SYSTEM_CONFIGS), "memory_mode": (str, MEMORY_MODES),
               "runtime_code_bytes": (int, None), "arena_alignment": (int, None)}
    REQUIRED_OPTIONS = ("system_config", "memory_mode")
    FULL_INT8 = True
    QUANTIZATIONS = ("static_int8", "static_int16x8")  # 16x8 where the profile lists int16
    INT8_ONLY_OPS = TFLM_INT8_ONLY_OPS  # ops Vela leaves on the CPU run in TFLM
    HOST_RUNNABLE = False  # Vela's output runs its NPU work in an ethos-u custom op: the host
    # runs ``Compiled.host_model`` (the int8 model Vela compiled) in its place

    def compile(self, model: bytes, fmt: str, profile: Profile, calib: Any = None) -> Compiled:
        if fmt != "tflite":
            raise ModelError(
                f"Vela compiles TFLite models only; got {fmt!r} (convert it to TFLite first)"
            )
        accelerator = _accelerator(profile)
        model, rewrites = integer_model(model, rw.calibration_probes(calib))
        optimised, vela, summary = run_vela(model, accelerator, profile.options["system_config"],
                                            profile.options["memory_mode"])
        npu, cpu = split_ops(model, optimised)
        alignment = int(profile.options.get("arena_alignment", DEFAULT_ALIGNMENT))
        arena = ethos_u_arena(optimised, model, alignment, vela["sram_bytes"])
        host = load_backend(model, "tflite")
        runtime_code = int(profile.options.get("runtime_code_bytes", 0))
        flash = len(optimised) + runtime_code
        vela["version"] = metadata.version("ethos-u-vela")
        step = (
            f"vela {vela['version']} for {accelerator} ({vela['system_config']}, "
            f"{vela['memory_mode']}): {vela.get('npu_ops')} NPU ops, {vela.get('cpu_ops')} CPU ops"
        )
        details = {
            "vela": vela,
            "model_bytes": len(optimised),
            "runtime_code_bytes": runtime_code,
            "rewrites": rewrites,
            "compile_steps": [c for r in rewrites if r["kept"] for c in r["changes"]] + [step],
            **arena.to_details(),
        }
        report = TargetReport(family=self.NAME, ops_on_accelerator=tuple(npu),
                              ops_on_cpu=tuple(cpu), arena_bytes=arena.arena_bytes,
                              sram_bytes=vela["sram_bytes"], flash_bytes=flash,
                              violations=size_violations(profile, flash, vela["sram_bytes"]),
                              details=details)
        sources = firmware_sources(optimised, arena, host.inputs, host.outputs)
        return Compiled(model=optimised, format="tflite", report=report,
                        extra_files={SUMMARY_FILE: summary, **sources}, host_model=model)


def _accelerator(profile: Profile) -> str:
    if profile.accelerator not in ACCELERATOR_CONFIGS:
        raise invalid(profile.source, "accelerator", profile.accelerator,
                      "an Ethos-U accelerator config", list(ACCELERATOR_CONFIGS))
    return profile.accelerator
