"""ONNX → float32 TFLite with onnx2tf, fully offline, checked against the ONNX model.

Needs the ``convert`` extra (onnx2tf + TensorFlow). onnx2tf runs in a child process
(``convert_worker``) inside a temporary working directory: it calls ``sys.exit`` on some errors, keeps global TensorFlow
state, and looks for its sample-data file in the working directory (downloading it when absent;
edgekit writes a generated one there first). The result keeps the ONNX model's I/O contract:
same input and output names, shapes and layouts (NCHW stays NCHW), with a SignatureDef. Its
fidelity to the ONNX model is measured on the calibration data (SQNR per output, ONNX Runtime
vs LiteRT) so that conversion error is reported apart from quantization error.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit_agent.bundle.manifest import TensorSpec
from edgekit_agent.runtime import load_backend

from ..dataset import (
    Dataset,
    check_array,  # one definition of 'samples fit this input'
)
from ..errors import CalibrationError, ModelError, UnsupportedOpError
from ..onnx_model import parse_onnx
from ..tflite import model as tfl
from .doctor_onnx import sanitize_names
from .evaluate import sqnr_db
from .ingest import onnx_value_spec

EXTRA_MESSAGE = "ONNX→TFLite conversion needs the convert extra: pip install 'edgekit[convert]'"
REQUIRED_MODULES = ("onnx2tf", "tensorflow", "tf_keras", "onnx_graphsurgeon", "sng4onnx", "psutil")
SAMPLE_DATA_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"
SIGNATURE_KEY = "serving_default"
DEFAULT_MIN_SQNR_DB = 30.0  # below this the converter changed what the model computes
CHECK_SAMPLES = 64
TIMEOUT_S = 900

WORKER_MODULE = "edgekit.packer.convert_worker"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class ConversionResult:
    tflite_bytes: bytes
    sqnr_db_per_output: dict[str, float]
    steps: tuple[str, ...]

    @property
    def min_sqnr_db(self) -> float:
        return min(self.sqnr_db_per_output.values())

    def to_dict(self) -> dict[str, Any]:
        return {"converter": "onnx2tf", "size_bytes": len(self.tflite_bytes),
                "sqnr_db": {k: "inf" if v == float("inf") else round(v, 2)
                            for k, v in self.sqnr_db_per_output.items()},
                "steps": list(self.steps)}


def onnx_to_tflite(onnx_bytes: bytes,
                   calib_inputs: Dataset | Mapping[str, np.ndarray] | Sequence[np.ndarray],
                   *, min_sqnr_db: float = DEFAULT_MIN_SQNR_DB, samples: int = CHECK_SAMPLES,
                   timeout_s: float = TIMEOUT_S) -> ConversionResult:
    """Convert, restore the ONNX I/O contract, and measure the conversion's SQNR per output."""
    require_convert_extra()

    inputs, outputs = _static_io(onnx_bytes)
    data = _calibration(calib_inputs, inputs)
    clean, steps = sanitize_names(onnx_bytes)
    raw = _run_onnx2tf(clean, [s.name for s in inputs], timeout_s)
    steps.append(f"onnx2tf {package_version('onnx2tf')} (inputs kept as declared: "
                 f"{', '.join(f'{s.name}{list(s.shape)}' for s in inputs)})")
    _reject_flex_ops(raw)
    model, fixes = _restore_io_contract(raw, onnx_bytes, inputs, outputs, data.sample(0))
    steps += fixes
    sqnr = conversion_sqnr(onnx_bytes, model, data, samples)
    steps.append(f"checked against ONNX Runtime on {min(samples, len(data))} "
                 f"{'synthetic' if data.synthetic else 'calibration'} sample(s): "
                 + ", ".join(f"{k} {v:.1f} dB" for k, v in sqnr.items()))
    worst = min(sqnr, key=sqnr.get)
    if sqnr[worst] < min_sqnr_db:
        raise ModelError(
            f"ONNX→TFLite conversion changed output {worst!r}: SQNR {sqnr[worst]:.1f} dB "
            f"against the ONNX model (< {min_sqnr_db:g} dB)"
        )
    return ConversionResult(model, sqnr, tuple(steps))


def require_convert_extra() -> None:
    missing = [m for m in REQUIRED_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise ModelError(f"{EXTRA_MESSAGE} (missing: {', '.join(missing)})")


def conversion_sqnr(onnx_bytes: bytes, tflite_bytes: bytes, data: Dataset,
                    samples: int = CHECK_SAMPLES) -> dict[str, float]:
    """SQNR (dB) of the TFLite model's outputs against the ONNX model's, per ONNX output name."""
    ort, lite = load_backend(onnx_bytes, "onnx"), load_backend(tflite_bytes, "tflite")
    ref: list[list[np.ndarray]] = [[] for _ in ort.outputs]
    got: list[list[np.ndarray]] = [[] for _ in ort.outputs]
    for sample in data.samples(samples):
        for acc, out in zip(ref, ort.run(sample), strict=True):
            acc.append(np.asarray(out, np.float32))
        for acc, out in zip(got, lite.run(sample), strict=True):
            acc.append(np.asarray(out, np.float32))
    return {spec.name: sqnr_db(np.concatenate(r),
                               np.concatenate(g).reshape(np.concatenate(r).shape))
            for spec, r, g in zip(ort.outputs, ref, got, strict=True)}


# --- input checks ---------------------------------------------------------------------------

def _static_io(onnx_bytes: bytes) -> tuple[list[TensorSpec], list[TensorSpec]]:
    graph = parse_onnx(onnx_bytes).graph
    init_names = {i.name for i in graph.initializer}
    inputs = [onnx_value_spec(v) for v in graph.input if v.name not in init_names]
    outputs = [onnx_value_spec(v) for v in graph.output]
    for spec in inputs:
        if any(d <= 0 for d in spec.shape):  # rank 0 ([]) is a static scalar
            raise ModelError(
                f"input {spec.name!r} has a dynamic shape "
                f"{['?' if d <= 0 else d for d in spec.shape]}; ONNX→TFLite needs static "
                f"shapes (freeze it with --input-shape {spec.name}:...)"
            )
    return inputs, outputs


def _calibration(calib: Dataset | Mapping[str, np.ndarray] | Sequence[np.ndarray],
                 inputs: Sequence[TensorSpec]) -> Dataset:
    if isinstance(calib, Dataset):
        return calib.with_inputs(inputs)
    if isinstance(calib, Mapping):
        missing = [s.name for s in inputs if s.name not in calib]
        if missing:
            raise CalibrationError(f"no calibration array for input(s) {', '.join(missing)}")
        arrays = [calib[s.name] for s in inputs]
    else:
        arrays = [calib] if isinstance(calib, np.ndarray) else list(calib)
    if len(arrays) != len(inputs):
        raise CalibrationError(f"the model has {len(inputs)} input(s), got {len(arrays)} array(s)")
    checked = tuple(
        check_array(np.asarray(a), spec, "calibration data")
        for a, spec in zip(arrays, inputs, strict=True)
    )
    return Dataset(tuple(inputs), checked)


# --- running onnx2tf ------------------------------------------------------------------------

def _run_onnx2tf(onnx_bytes: bytes, input_names: list[str], timeout_s: float) -> bytes:
    with tempfile.TemporaryDirectory(prefix="edgekit-onnx2tf-") as tmp:
        work = Path(tmp)
        (work / "model.onnx").write_bytes(onnx_bytes)
        # onnx2tf loads this file from the working directory and downloads it when it is missing
        rng = np.random.default_rng(0)
        np.save(work / SAMPLE_DATA_FILE, rng.random((20, 128, 128, 3), dtype=np.float32))
        kwargs = {"input_onnx_file_path": "model.onnx", "output_folder_path": "out",
                  "keep_shape_absolutely_input_names": input_names, "non_verbose": True}
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "-1"}
        try:
            proc = subprocess.run([sys.executable, "-m", WORKER_MODULE, json.dumps(kwargs)],
                                  cwd=work, env=env, capture_output=True, text=True,
                                  timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise ModelError(f"onnx2tf did not finish within {timeout_s:g} s") from None
        result = work / "out" / "model_float32.tflite"
        if proc.returncode != 0 or not result.exists():
            raise _conversion_error(proc.stdout + proc.stderr)
        return result.read_bytes()


def _conversion_error(log: str) -> ModelError:
    # Imported here: a module that `python -m` runs must not be loaded by its package first.
    from .convert_worker import MISSING_MARK

    log = _ANSI.sub("", log)
    missing = re.search(rf"{MISSING_MARK} (\S+)|No module named '([^']+)'", log)
    if missing:
        return ModelError(f"{EXTRA_MESSAGE} (missing: {missing.group(1) or missing.group(2)})")
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.search(r"error|exception", ln, re.I)]
    detail = (errors or lines or ["no output"])[-1]
    return ModelError(f"onnx2tf could not convert the model: {detail[:300]}")


def package_version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return "?"


def _reject_flex_ops(model: bytes) -> None:
    flex = sorted(
        {
            op
            for i in range(len(tfl.load(model).subgraphs))
            for op in tfl.op_names(model, i)
            if op.startswith("CUSTOM:Flex")
        }
    )
    if flex:
        raise UnsupportedOpError("ONNX→TFLite conversion needed TensorFlow (Flex) ops that TFLite "
                                 f"builtins lack: {', '.join(f[len('CUSTOM:'):] for f in flex)}")


# --- restoring the ONNX I/O contract --------------------------------------------------------

def _restore_io_contract(model: bytes, onnx_bytes: bytes, inputs: Sequence[TensorSpec],
                         outputs: Sequence[TensorSpec],
                         sample: list[np.ndarray]) -> tuple[bytes, list[str]]:
    """ONNX names on the I/O tensors and in a SignatureDef; channel-last outputs transposed back."""
    m = tfl.load(model)
    if len(m.subgraphs) != 1:
        raise ModelError(f"onnx2tf produced {len(m.subgraphs)} subgraphs; expected 1")
    sg = m.subgraphs[0]
    if len(sg.inputs) != len(inputs) or len(sg.outputs) != len(outputs):
        raise ModelError(
            f"onnx2tf produced {len(sg.inputs)} input(s) / {len(sg.outputs)} output(s) "
            f"for an ONNX model with {len(inputs)} / {len(outputs)}"
        )
    order = _input_order(sg, inputs)
    sg.inputs = [sg.inputs[i] for i in order]
    for t, spec in zip(sg.inputs, inputs, strict=True):
        got = tuple(int(d) for d in sg.tensors[t].shape)
        if got != spec.shape:
            raise ModelError(
                f"onnx2tf changed input {spec.name!r} from {list(spec.shape)} to {list(got)}"
            )
    steps = []
    to_tflite_order = [sample[order.index(j)] for j in range(len(order))]
    perms = _output_permutations(model, to_tflite_order, onnx_bytes, sample, outputs)
    for pos, (spec, perm) in enumerate(zip(outputs, perms, strict=True)):
        if perm is not None:
            sg.outputs[pos] = _append_transpose(m, sg, sg.outputs[pos], perm, spec.shape)
            steps.append(
                f"output {spec.name}: transposed back to the ONNX layout {list(spec.shape)} "
                f"(perm {list(perm)})"
            )
    for t, spec in zip([*sg.inputs, *sg.outputs], [*inputs, *outputs], strict=True):
        sg.tensors[t].name = spec.name.encode()
    m.signatureDefs = [_signature(sg, inputs, outputs)]
    steps.append(f"added SignatureDef {SIGNATURE_KEY!r} with the ONNX input/output names")
    return tfl.save(m), steps


def _input_order(sg: Any, inputs: Sequence[TensorSpec]) -> list[int]:
    """Positions of the TFLite inputs in ONNX input order: by name where onnx2tf kept names."""
    names = [(sg.tensors[t].name or b"").decode(errors="replace") for t in sg.inputs]
    if sorted(names) == sorted(s.name for s in inputs):
        return [names.index(s.name) for s in inputs]
    return list(range(len(inputs)))


def _output_permutations(model: bytes, tfl_sample: list[np.ndarray], onnx_bytes: bytes,
                         onnx_sample: list[np.ndarray],
                         outputs: Sequence[TensorSpec]) -> list[tuple[int, ...] | None]:
    """Per output, None if it already has the ONNX layout, else the permutation that restores it.

    onnx2tf emits channel-last outputs; shapes alone are ambiguous when dims are equal, so each
    candidate layout is compared numerically with the ONNX output on one sample."""
    lite = load_backend(model, "tflite")
    feed = [x.reshape(s.shape) for x, s in zip(tfl_sample, lite.inputs, strict=True)]
    got = [np.asarray(o) for o in lite.run(feed)]
    ref = [np.asarray(o) for o in load_backend(onnx_bytes, "onnx").run(onnx_sample)]
    perms: list[tuple[int, ...] | None] = []
    for spec, out, want in zip(outputs, got, ref, strict=True):
        rank = out.ndim
        back = (0, rank - 1, *range(1, rank - 1)) if rank >= 3 else None
        candidates = [(None, out)] + ([(back, out.transpose(back))] if back else [])
        fits = [(float(np.abs(c.astype(np.float64) - want).max()), perm) for perm, c in candidates
                if c.shape == want.shape]
        if not fits:
            raise ModelError(f"onnx2tf output {spec.name!r} has shape {list(out.shape)}, "
                             f"the ONNX model {list(want.shape)}")
        perms.append(min(fits, key=lambda f: f[0])[1])
    return perms


def _append_transpose(m: Any, sg: Any, src: int, perm: tuple[int, ...],
                      shape: tuple[int, ...]) -> int:
    from ai_edge_litert import schema_py_generated as schema

    perm_tensor = schema.TensorT()
    perm_tensor.shape, perm_tensor.type = np.array([len(perm)], np.int32), schema.TensorType.INT32
    perm_tensor.name = (sg.tensors[src].name or b"out") + b"/perm"
    buf = schema.BufferT()
    buf.data = np.frombuffer(np.array(perm, np.int32).tobytes(), np.uint8)
    m.buffers.append(buf)
    perm_tensor.buffer = len(m.buffers) - 1
    out = schema.TensorT()
    out.shape, out.type, out.buffer = np.array(shape, np.int32), sg.tensors[src].type, 0
    out.name = (sg.tensors[src].name or b"out") + b"/onnx_layout"
    sg.tensors += [perm_tensor, out]
    op = schema.OperatorT()
    op.opcodeIndex = _opcode(m, schema, schema.BuiltinOperator.TRANSPOSE)
    op.inputs, op.outputs = [src, len(sg.tensors) - 2], [len(sg.tensors) - 1]
    op.builtinOptionsType, op.builtinOptions = (
        schema.BuiltinOptions.TransposeOptions,
        schema.TransposeOptionsT(),
    )
    sg.operators.append(op)
    return len(sg.tensors) - 1


def _opcode(m: Any, schema: Any, builtin: int) -> int:
    for i, code in enumerate(m.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            return i
    code = schema.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), 1
    m.operatorCodes.append(code)
    return len(m.operatorCodes) - 1


def _signature(sg: Any, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> Any:
    from ai_edge_litert import schema_py_generated as schema

    def tensor_map(name: str, index: int) -> Any:
        tm = schema.TensorMapT()
        tm.name, tm.tensorIndex = name.encode(), int(index)
        return tm

    sig = schema.SignatureDefT()
    sig.signatureKey, sig.subgraphIndex = SIGNATURE_KEY.encode(), 0
    sig.inputs = [tensor_map(s.name, t) for s, t in zip(inputs, sg.inputs, strict=True)]
    sig.outputs = [tensor_map(s.name, t) for s, t in zip(outputs, sg.outputs, strict=True)]
    return sig
