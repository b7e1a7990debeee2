"""The TFLM op set: which ops the installed tflite-micro interpreter resolves, and how to ask it.

``data/tflm_ops.toml`` is probed from the real interpreter; ``captured_stderr`` reads what its
C++ code logs (to file descriptor 2, not to ``sys.stderr``).
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from ...tflite import model as tfl

OP_TABLE = Path(__file__).parent.parent / "data" / "tflm_ops.toml"


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
    def from_dict(cls, d: dict[str, Any]) -> TflmOpSet:
        return cls(version=d["tflite_micro_version"], builtin=dict(d["builtin"]),
                   custom=dict(d.get("custom", {})))


@functools.cache
def tflm_op_set(path: Path = OP_TABLE) -> TflmOpSet:
    with path.open("rb") as f:
        return TflmOpSet.from_dict(tomllib.load(f))


# TFLM kernels without int16 (selfie segmentation's 16x8 candidate: "Output type is 7 [int16],
# requires float or int8" from RESIZE_BILINEAR)
TFLM_INT8_ONLY_OPS = frozenset({"RESIZE_BILINEAR"})


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
    "TFLite_Detection_PostProcess": "AddDetectionPostprocess",
                   "CIRCULAR_BUFFER": "AddCircularBuffer",
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
    from tflite_micro.python.tflite_micro import _version
    from tflite_micro.python.tflite_micro import runtime as tflm
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
    return tfl.save(model)


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
        "# tflite-micro; tests/edgekit/targets/mcu/test_mcu.py checks this file against a fresh",
        "# probe.",
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


