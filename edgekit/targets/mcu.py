"""Microcontroller family: TensorFlow Lite Micro, measured arena, generated C sources.

Every figure comes from the real ``tflite-micro`` interpreter running the model on the host:
the op set (``data/tflm_ops.toml``, probed from the installed interpreter), the smallest tensor
arena that allocates and invokes (bisection, cross-checked with TFLM's recording allocator),
and the outputs, compared with LiteRT's on the same inputs.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from edgekit_agent.bundle.manifest import TensorSpec
from edgekit_agent.runtime import load_backend, quantize

from ..errors import CalibrationError, ModelError, UnsupportedOpError
from .base import Compiled, TargetFamily, TargetReport, size_violations
from .profiles import Profile

if TYPE_CHECKING:  # edgekit.packer imports the targets package: import it lazily here
    from ..packer.data import Dataset

OP_TABLE = Path(__file__).parent / "data" / "tflm_ops.toml"
DEFAULT_ALIGNMENT = 16
MAX_ARENA_BYTES = 1 << 30
MAX_LSB_DIFF = 1  # TFLM and LiteRT kernels may round differently by one step, not more
COMPARE_SAMPLES = 64
# dtypes of activations, as TFLite names them, that a profile must list to run the model
_COMPUTE_DTYPES = ("float32", "float16", "int16", "int8", "uint8")


def _tfl() -> Any:
    from ..packer import tflite_model

    return tflite_model


# ---------------------------------------------------------------- the TFLM op set

@dataclass(frozen=True)
class TflmOpSet:
    """Ops the TFLM interpreter resolves, each with its ``MicroMutableOpResolver`` method."""

    version: str
    builtin: dict[str, str]
    custom: dict[str, str]

    def method(self, op: str) -> str | None:
        """``'CONV_2D'`` → ``'AddConv2D'``; custom ops are named ``'CUSTOM:<name>'``."""
        if op.startswith("CUSTOM:"):
            return self.custom.get(op[len("CUSTOM:"):])
        return self.builtin.get(op)

    def to_dict(self) -> dict[str, Any]:
        return {"tflite_micro_version": self.version, "builtin": dict(self.builtin),
                "custom": dict(self.custom)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TflmOpSet":
        return cls(version=d["tflite_micro_version"], builtin=dict(d["builtin"]),
                   custom=dict(d.get("custom", {})))


@functools.cache
def tflm_op_set(path: Path = OP_TABLE) -> TflmOpSet:
    with path.open("rb") as f:
        return TflmOpSet.from_dict(tomllib.load(f))


def unsupported_ops(ops: Sequence[str], op_set: TflmOpSet | None = None) -> list[str]:
    """Ops (deduplicated, in order) that TFLM has no kernel for."""
    op_set = op_set or tflm_op_set()
    return list(dict.fromkeys(op for op in ops if op_set.method(op) is None))


# Resolver method names that do not follow CamelCase of the op name (from
# tensorflow/lite/micro/micro_mutable_op_resolver.h).
_METHOD_EXCEPTIONS = {
    "CONV_2D": "AddConv2D", "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D",
    "AVERAGE_POOL_2D": "AddAveragePool2D", "MAX_POOL_2D": "AddMaxPool2D",
    "L2_POOL_2D": "AddL2Pool2D", "BATCH_MATMUL": "AddBatchMatMul", "CUMSUM": "AddCumSum",
    "PADV2": "AddPadV2", "SELECT_V2": "AddSelectV2", "REVERSE_V2": "AddReverseV2",
    "SPLIT_V": "AddSplitV", "UNIDIRECTIONAL_SEQUENCE_LSTM": "AddUnidirectionalSequenceLSTM",
}
_CUSTOM_METHODS = {
    "TFLite_Detection_PostProcess": "AddDetectionPostprocess", "CIRCULAR_BUFFER": "AddCircularBuffer",
    "ethos-u": "AddEthosU", "TFLM_DECODE": "AddDecode", "SignalDelay": "AddDelay",
    "SignalEnergy": "AddEnergy", "SignalFftAutoScale": "AddFftAutoScale",
    "SignalFilterBank": "AddFilterBank", "SignalFilterBankLog": "AddFilterBankLog",
    "SignalFilterBankSpectralSubtraction": "AddFilterBankSpectralSubtraction",
    "SignalFilterBankSquareRoot": "AddFilterBankSquareRoot", "SignalFramer": "AddFramer",
    "SignalIrfft": "AddIrfft", "SignalOverlapAdd": "AddOverlapAdd", "SignalPCAN": "AddPCAN",
    "SignalRfft": "AddRfft", "SignalStacker": "AddStacker", "SignalWindow": "AddWindow",
}


def resolver_method(op: str) -> str:
    return _METHOD_EXCEPTIONS.get(op) or "Add" + "".join(p.capitalize() for p in op.split("_"))


def probe_tflm_op_set() -> TflmOpSet:
    """Ask the installed interpreter which ops it resolves.

    Each probe model holds the op under test followed by an op with an out-of-range builtin
    code. TFLM looks up every op's kernel before running any: if the op under test is missing
    the error names it, otherwise the lookup fails only at the sentinel. No kernel runs.
    """
    from tflite_micro.python.tflite_micro import _version, runtime as tflm
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    codes = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    builtin = {name: resolver_method(name) for code, name in sorted(codes.items())
               if name not in ("CUSTOM", "PLACEHOLDER_FOR_GREATER_OP_CODES")
               and _probe_resolves(tflm, schema, code, b"")}
    custom = {name: method for name, method in _CUSTOM_METHODS.items()
              if _probe_resolves(tflm, schema, schema.BuiltinOperator.CUSTOM, name.encode())}
    return TflmOpSet(version=_version.__version__, builtin=builtin, custom=custom)


_SENTINEL_CODE = 9999


def _probe_resolves(tflm: Any, schema: Any, code: int, custom: bytes) -> bool:
    model = _probe_model(schema, code, custom)
    with captured_stderr() as err:
        try:
            tflm.Interpreter.from_bytes(model, arena_size=1 << 16)
        except (RuntimeError, ValueError):
            pass
    return f"out of range: {_SENTINEL_CODE}" in err.text


def _probe_model(schema: Any, code: int, custom: bytes) -> bytes:
    def opcode(c: int, name: bytes) -> Any:
        oc = schema.OperatorCodeT()
        oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = c, min(c, 127), 1
        oc.customCode = name or None
        return oc

    def tensor(i: int) -> Any:
        t = schema.TensorT()
        t.shape, t.type, t.buffer, t.name = [1], schema.TensorType.FLOAT32, 0, f"t{i}".encode()
        return t

    def operator(index: int, i: int, o: int) -> Any:
        op = schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = index, [i], [o]
        if code == schema.BuiltinOperator.VAR_HANDLE and index == 0:  # the loader reads its options
            op.builtinOptionsType = schema.BuiltinOptions.VarHandleOptions
            op.builtinOptions = schema.VarHandleOptionsT()
        return op

    sg = schema.SubGraphT()
    sg.tensors, sg.inputs, sg.outputs = [tensor(i) for i in range(3)], [0], [2]
    sg.operators = [operator(0, 0, 1), operator(1, 1, 2)]
    model = schema.ModelT()
    model.version, model.buffers, model.subgraphs = 3, [schema.BufferT()], [sg]
    model.operatorCodes = [opcode(code, custom), opcode(_SENTINEL_CODE, b"")]
    return _tfl().save(model)


def write_op_table(path: Path = OP_TABLE) -> TflmOpSet:
    """Regenerate ``data/tflm_ops.toml`` from the installed interpreter."""
    op_set = probe_tflm_op_set()
    lines = [
        "# TensorFlow Lite Micro op set: the ops the installed tflite-micro interpreter resolves,",
        "# each with its tflite::MicroMutableOpResolver method.",
        "# Derived by probing the real interpreter (edgekit.targets.mcu.write_op_table): one model",
        "# per builtin op of the TFLite schema (and per known custom-op name), followed by a",
        "# sentinel op; an op is listed when TFLM's kernel lookup passes it and stops at the",
        "# sentinel. Method names follow micro_mutable_op_resolver.h. Regenerate after upgrading",
        "# tflite-micro; tests/targets/test_mcu.py checks this file against a fresh probe.",
        f'tflite_micro_version = "{op_set.version}"',
        "", "[builtin]",
        *(f'{op} = "{m}"' for op, m in sorted(op_set.builtin.items())),
        "", "[custom]",
        *(f'"{op}" = "{m}"' for op, m in sorted(op_set.custom.items())),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    tflm_op_set.cache_clear()
    return op_set


# ---------------------------------------------------------------- stderr of the C++ runtime

@dataclass
class _Captured:
    text: str = ""


@contextmanager
def captured_stderr() -> Iterator[_Captured]:
    """Capture what C/C++ code writes to file descriptor 2 (TFLM logs there, not to sys.stderr)."""
    out = _Captured()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.text = tmp.read().decode(errors="replace")


# ---------------------------------------------------------------- arena measurement

@dataclass(frozen=True)
class ArenaMeasurement:
    measured_bytes: int       # smallest arena that allocates and invokes (bisection)
    recorded_bytes: int       # TFLM's RecordingMicroAllocator total
    recorded_head_bytes: int
    recorded_tail_bytes: int
    probes: int               # interpreter instances created to find it

    def with_margin(self, alignment: int) -> int:
        """The measured arena rounded up to the alignment, plus one alignment unit: an arena
        buffer that does not start aligned loses up to ``alignment - 1`` bytes to TFLM."""
        return -(-self.measured_bytes // alignment) * alignment + alignment


def measure_arena(model: bytes) -> ArenaMeasurement:
    """The smallest arena with which the model allocates and invokes.

    Double the arena until the model runs; read TFLM's recorded allocation there; then search
    the edge starting from that figure (usually exact, sometimes low: it counts only what stays
    allocated) by galloping up from it and bisecting. The result ``n`` runs and ``n - 1`` does not.
    """
    with _ArenaProbe(model) as probe:
        size = max(4096, 1 << (len(model) - 1).bit_length())
        while True:
            ok, log = probe.run(size)
            if ok:
                break
            if size >= MAX_ARENA_BYTES or _not_an_arena_problem(log):
                raise _tflm_error(log)
            size *= 2
        recorded = probe.record(size)
        lo, hi = _bracket(probe, recorded["total"], size)
        while lo < hi:  # invariant: hi runs; everything below lo fails
            mid = (lo + hi) // 2
            if probe.run(mid)[0]:
                hi = mid
            else:
                lo = mid + 1
        return ArenaMeasurement(measured_bytes=lo, recorded_bytes=recorded["total"],
                                recorded_head_bytes=recorded["head"],
                                recorded_tail_bytes=recorded["tail"], probes=probe.count)


def _bracket(probe: "_ArenaProbe", guess: int, works: int) -> tuple[int, int]:
    """(lo, hi) around the edge, with hi known to run and lo - 1 known to fail (or lo = 1)."""
    if guess >= works:
        return 1, works
    if probe.run(guess)[0]:
        return (guess, guess) if not probe.run(guess - 1)[0] else (1, guess - 1)
    lo, step = guess + 1, DEFAULT_ALIGNMENT
    while True:
        candidate = min(lo + step - 1, works)
        if candidate == works or probe.run(candidate)[0]:
            return lo, candidate
        lo, step = candidate + 1, step * 4


# Runs in a child process: TFLM can crash (SIGSEGV) inside a kernel's Prepare when the arena
# is too small, so each request is answered from a process that may die; a death means "no".
_PROBE_WORKER = r"""
import json, os, re, sys, tempfile
import numpy as np
from tflite_micro.python.tflite_micro import runtime as tflm

model = open(sys.argv[1], "rb").read()
inputs = [np.zeros(shape, dtype) for shape, dtype in json.loads(sys.argv[2])]

def attempt(size, record):
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            it = tflm.Interpreter.from_bytes(model, arena_size=size)
            for i, x in enumerate(inputs):
                it.set_input(x, i)
            it.invoke()
            if record:
                it.print_allocations()
            ok = True
        except (RuntimeError, ValueError):
            ok = False
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        return ok, tmp.read().decode(errors="replace")

for line in sys.stdin:
    kind, size = line.split()
    ok, log = attempt(int(size), kind == "record")
    sys.stdout.write(json.dumps({"ok": ok, "log": log[-4000:]}) + "\n")
    sys.stdout.flush()
"""


class _ArenaProbe:
    """Allocate and invoke the model with a given arena in a TFLM child process."""

    def __init__(self, model: bytes) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="edgekit-tflm-")
        self._path = Path(self._dir.name) / "model.tflite"
        self._path.write_bytes(model)
        self._io = json.dumps([[list(x.shape), x.dtype.name] for x in _zero_inputs(model)])
        self._proc: subprocess.Popen[str] | None = None
        self.count = 0

    def __enter__(self) -> "_ArenaProbe":
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()
        self._dir.cleanup()

    def run(self, size: int) -> tuple[bool, str]:
        answer = self._ask("run", size)
        return (False, "TFLM crashed while allocating the arena") if answer is None else (answer["ok"], answer["log"])

    def record(self, size: int) -> dict[str, int]:
        answer = self._ask("record", size)
        found = dict(re.findall(r"Arena allocation (total|head|tail) (\d+) bytes",
                                answer["log"] if answer else ""))
        if "total" not in found:
            raise ModelError("TFLM printed no arena allocation record")
        return {k: int(found.get(k, 0)) for k in ("total", "head", "tail")}

    def _ask(self, kind: str, size: int) -> dict[str, Any] | None:
        self.count += 1
        if self._proc is None:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _PROBE_WORKER, str(self._path), self._io],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            self._proc.stdin.write(f"{kind} {size}\n")
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:  # the child died on this size
            self._stop()
            return None
        return json.loads(line)

    def _stop(self) -> None:
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _not_an_arena_problem(message: str) -> bool:
    return not re.search(r"Failed to (allocate|resize)|missing: \d+|arena", message, re.I)


def _tflm_error(message: str) -> ModelError:
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    missing = next((m for ln in lines for m in re.findall(r"Didn't find op for \w+ opcode '([^']+)'", ln)), None)
    if missing:
        return UnsupportedOpError(f"TFLM has no kernel for {missing}")
    return ModelError(f"TFLM cannot run the model: {lines[0] if lines else 'unknown error'}")


def _zero_inputs(model: bytes) -> list[np.ndarray]:
    model_t = _tfl().load(model)
    sg = model_t.subgraphs[0]
    return [np.zeros([max(int(d), 1) for d in sg.tensors[i].shape],
                     dtype=_tfl().tensor_type_name(sg.tensors[i].type)) for i in sg.inputs]


# ---------------------------------------------------------------- TFLM vs LiteRT

def compare_tflm_litert(model: bytes, inputs: Dataset | Sequence[np.ndarray] | np.ndarray,
                        limit: int = COMPARE_SAMPLES, arena_size: int | None = None) -> float:
    """Largest |TFLM − LiteRT| over all outputs and samples: in quantization steps (LSB) for
    integer outputs, in output units for float outputs. ``inputs`` is a Dataset or one
    (N, *sample_shape) array per model input; float data is quantized for integer inputs."""
    litert = load_backend(model, "tflite")
    arena = arena_size or max(10 * len(model), 1 << 22)
    with captured_stderr():  # the backend probes input/output indices until TFLM complains
        tflm = load_backend(model, "tflite", prefer_micro=True, arena_size=arena)
    arrays = _input_arrays(inputs, len(litert.inputs))
    worst = 0.0
    for i in range(min(limit, min(len(a) for a in arrays))):
        feed = [_as_input(a[i:i + 1], spec) for a, spec in zip(arrays, litert.inputs)]
        for a, b in zip(litert.run(feed), tflm.run(feed)):
            diff = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64).reshape(np.shape(a)))
            worst = max(worst, float(diff.max(initial=0.0)))
    return worst


def _input_arrays(inputs: Dataset | Sequence[np.ndarray] | np.ndarray, n_inputs: int) -> list[np.ndarray]:
    from ..packer.data import Dataset

    # A Dataset's own sample() casts to its specs' dtypes; read its arrays as given instead.
    arrays = list(inputs.arrays) if isinstance(inputs, Dataset) else (
        [inputs] if isinstance(inputs, np.ndarray) else list(inputs))
    if len(arrays) != n_inputs:
        raise CalibrationError(f"the model has {n_inputs} input(s), got {len(arrays)} array(s)")
    return [np.asarray(a) for a in arrays]


def _as_input(x: np.ndarray, spec: TensorSpec) -> np.ndarray:
    batch_one = bool(spec.shape) and spec.shape[0] == 1
    fits = x.shape[1:] == tuple(spec.shape[1:]) if batch_one else x.size == int(np.prod(spec.shape))
    if not fits:
        raise CalibrationError(f"input {spec.name!r} takes shape {list(spec.shape)}, "
                               f"got samples of shape {list(x.shape[1:])}")
    x = x.reshape(spec.shape)
    if np.dtype(spec.dtype).kind in "iu" and x.dtype.kind == "f":
        return quantize(x, spec)
    return x.astype(spec.dtype, copy=False)


def random_inputs(specs: Sequence[TensorSpec], n: int = 16, seed: int = 0) -> Dataset:
    """Seeded samples over each input's whole range (integers) or [0, 1) (floats)."""
    from ..packer.data import Dataset

    rng = np.random.default_rng(seed)
    arrays = []
    for s in specs:
        shape = (n, *s.shape[1:]) if s.shape and s.shape[0] == 1 else (n, *s.shape)
        dt = np.dtype(s.dtype)
        if dt.kind in "iu":
            info = np.iinfo(dt)
            arrays.append(rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dt))
        else:
            arrays.append(rng.random(shape, dtype=np.float32).astype(dt))
    return Dataset(tuple(specs), tuple(arrays), synthetic=True, source="random")


# ---------------------------------------------------------------- the family

class McuFamily(TargetFamily):
    NAME = "mcu"
    OPTIONS = {"runtime_code_bytes": (int, None), "arena_alignment": (int, None)}
    REQUIRED_OPTIONS = ("runtime_code_bytes",)
    QUANTIZATIONS = ("static_int8", "none")  # int8 first; float32 where the profile lists it

    def compile(self, model: bytes, fmt: str, profile: Profile, calib: Dataset | None = None) -> Compiled:
        from .csource import generate_sources

        if fmt != "tflite":
            raise ModelError(f"the {self.NAME} family runs TFLite models (TFLM), not {fmt}")
        model, rewrites = rewrite_for_tflm(model)
        ops = all_ops(model)
        missing = unsupported_ops(ops)
        if missing:
            raise UnsupportedOpError(f"TFLM has no kernel for {', '.join(missing)} "
                                     f"(and edgekit has no rewrite for it)")
        precision = _check_dtypes(model, profile)
        alignment = int(profile.options.get("arena_alignment", DEFAULT_ALIGNMENT))
        arena = measure_arena(model)
        arena_bytes = arena.with_margin(alignment)
        litert = load_backend(model, "tflite")
        io_bytes = sum(_nbytes(s) for s in (*litert.inputs, *litert.outputs))
        data = calib if calib is not None else random_inputs(litert.inputs)
        max_diff = compare_tflm_litert(model, data, arena_size=arena.measured_bytes)
        flash = len(model) + int(profile.options["runtime_code_bytes"])
        ram = arena_bytes + io_bytes
        violations = size_violations(profile, flash, ram) + _fidelity_violation(max_diff, litert.outputs)
        report = TargetReport(
            family=self.NAME, ops_on_cpu=tuple(ops), arena_bytes=arena_bytes, sram_bytes=ram,
            flash_bytes=flash, violations=violations,
            details={"runtime": "tflm", "precision": precision,
                     "arena_measured_bytes": arena.measured_bytes,
                     "arena_recorded_bytes": arena.recorded_bytes,
                     "arena_recorded_agrees": arena.recorded_bytes == arena.measured_bytes,
                     "arena_alignment": alignment, "arena_probes": arena.probes,
                     "io_buffer_bytes": io_bytes, "model_bytes": len(model),
                     "runtime_code_bytes": int(profile.options["runtime_code_bytes"]),
                     _diff_key(litert.outputs): max_diff,
                     "tflm_vs_litert_inputs": "synthetic" if data.synthetic else "calibration",
                     "rewrites": list(rewrites),
                     "resolver_ops": len(dict.fromkeys(ops)),
                     "tflite_micro_version": tflm_op_set().version})
        files = generate_sources(model, arena_bytes=arena_bytes, inputs=litert.inputs,
                                 outputs=litert.outputs, ops=ops,
                                 arena_note=f"TFLM measured {arena.measured_bytes} B, "
                                            f"+ alignment margin ({alignment} B)")
        return Compiled(model=model, format=fmt, report=report, extra_files=files)


def rewrite_for_tflm(model: bytes) -> tuple[bytes, list[str]]:
    """Rewrite ops TFLM lacks into ops it has, where edgekit knows an equivalent."""
    from ..packer import rewrite_tflite as rw

    rewrites = {"RELU_0_TO_1": rw.relu_0_to_1_to_relu_minimum}
    notes: list[str] = []
    for op in unsupported_ops(all_ops(model)):
        if op in rewrites:
            model, done = rewrites[op](model)
            notes += done
    return model, notes


def all_ops(model: bytes) -> list[str]:
    """Op names over every subgraph (IF/WHILE bodies need their kernels registered too)."""
    model_t = _tfl().load(model)
    return [name for i in range(len(model_t.subgraphs)) for name in _tfl().op_names(model_t, i)]


def _check_dtypes(model: bytes, profile: Profile) -> str:
    """The activation dtypes the model computes in; each must be one the profile lists."""
    model_t = _tfl().load(model)
    used = []
    for sg in model_t.subgraphs:
        for op in sg.operators or []:
            for i in op.outputs if op.outputs is not None else []:
                name = _tfl().tensor_type_name(sg.tensors[i].type)
                if name in _COMPUTE_DTYPES and name not in used:
                    used.append(name)
    missing = [d for d in used if d not in profile.dtypes]
    if missing:
        raise ModelError(f"the model computes in {', '.join(missing)}, which {profile.name} does "
                         f"not run (it runs {', '.join(profile.dtypes)}); quantize it to int8")
    if not used:
        return "none"
    return used[0] if len(used) == 1 else "mixed:" + "+".join(sorted(used))


def _nbytes(spec: TensorSpec) -> int:
    return int(np.prod([max(d, 1) for d in spec.shape], dtype=np.int64)) * np.dtype(spec.dtype).itemsize


def _diff_key(outputs: Sequence[TensorSpec]) -> str:
    quantized = all(s.scale is not None for s in outputs)
    return "tflm_vs_litert_max_lsb" if quantized else "tflm_vs_litert_max_abs"


def _fidelity_violation(max_diff: float, outputs: Sequence[TensorSpec]) -> tuple[str, ...]:
    if _diff_key(outputs) == "tflm_vs_litert_max_lsb" and max_diff > MAX_LSB_DIFF:
        return (f"tflm: outputs differ from LiteRT by {max_diff:g} LSB (> {MAX_LSB_DIFF})",)
    return ()
