"""Runtime backends behind one small interface.

Backends (imported lazily, so a device only needs the one it uses):
- ``tflite``: ai_edge_litert → tflite_runtime → tensorflow.lite; Edge TPU delegate when asked
  for and ``libedgetpu.so.1`` loads, XNNPACK (the interpreter default) otherwise.
- ``onnx``: onnxruntime on the CPU execution provider.
- ``tflm``: the tflite-micro interpreter, to simulate a microcontroller on a host.

A backend takes and returns arrays in the model's own dtypes (``runner.Runner`` speaks float).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from ..bundle.manifest import TensorSpec
from ..bundle.modelcheck import check_tflite
from ..errors import ModelError, RuntimeBackendError, UnsupportedOpError, first_line

BACKENDS = ("tflite", "onnx", "tflm")
EDGETPU_LIBRARY = "libedgetpu.so.1"


class Backend(Protocol):
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]: ...


def _load_tflite_interpreter_class() -> tuple[Any, Any]:
    """(Interpreter, load_delegate) from the first TFLite runtime that imports."""
    for module in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"):
        try:
            mod = importlib.import_module(module)
            return mod.Interpreter, mod.load_delegate
        except ImportError:
            continue
    try:
        import tensorflow as tf  # last resort, heavy
        return tf.lite.Interpreter, tf.lite.experimental.load_delegate
    except ImportError:
        raise RuntimeBackendError("no TFLite runtime: pip install ai-edge-litert "
                                  "(or tflite-runtime)") from None


def _spec_from_tflite(detail: dict[str, Any], name: str) -> TensorSpec:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    quantized = bool(scale) and np.dtype(detail["dtype"]).kind in "iu"
    return TensorSpec(name=name, shape=tuple(int(s) for s in detail["shape"]),
                      dtype=np.dtype(detail["dtype"]).name,
                      scale=float(scale) if quantized else None,
                      zero_point=int(zero_point) if quantized else None)


class TFLiteBackend:
    name = "tflite"

    def __init__(self, model: bytes, threads: int | None = None, edgetpu: bool = False) -> None:
        interpreter_cls, load_delegate = _load_tflite_interpreter_class()
        delegates = [load_delegate(EDGETPU_LIBRARY)] if edgetpu else None
        try:
            with _native_stderr_filtered(_LITERT_NOISE):
                self._it = interpreter_cls(model_content=bytes(model), num_threads=threads,
                                           experimental_delegates=delegates)
                self._it.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"TFLite cannot load the model: {first_line(exc)}") from None
        ins, outs = self._it.get_input_details(), self._it.get_output_details()
        names_in, names_out = _signature_names(self._it, ins, outs)
        self.inputs = tuple(_spec_from_tflite(d, n) for d, n in zip(ins, names_in))
        self.outputs = tuple(_spec_from_tflite(d, n) for d, n in zip(outs, names_out))
        self._in_idx = [d["index"] for d in ins]
        self._out_idx = [d["index"] for d in outs]

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        it = self._it
        for idx, arr in zip(self._in_idx, inputs):
            it.set_tensor(idx, arr)
        it.invoke()
        return [it.get_tensor(idx) for idx in self._out_idx]


# Native runtimes write these straight to fd 2 (LiteRT's INFO once per process, TFLM when its
# tensors are counted by probing); they would become part of every CLI's stderr, which must be
# one `error: …` line on failure.
_LITERT_NOISE = re.compile(rb"INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.")
_TFLM_NOISE = re.compile(rb"(Input|Output) index \d+ out of range \(length is \d+\)")


@contextlib.contextmanager
def _native_stderr_filtered(noise: re.Pattern[bytes]):
    """Capture fd 2 during a native call and replay every line except the known noise."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().splitlines(keepends=True)
                    if not noise.fullmatch(line.rstrip())]
            if kept:
                os.write(2, b"".join(kept))


def _signature_names(it: Any, ins: list[dict], outs: list[dict]) -> tuple[list[str], list[str]]:
    """Prefer the SignatureDef's friendly names ('image') over tensor names ('serving_default_image:0')."""
    names_in = [d["name"] for d in ins]
    names_out = [d["name"] for d in outs]
    try:
        sigs = it._get_full_signature_list()  # noqa: SLF001 - the only way to map names to indices
    except AttributeError:
        return names_in, names_out
    if len(sigs) != 1:
        return names_in, names_out
    sig = next(iter(sigs.values()))
    by_index_in = {v: k for k, v in sig.get("inputs", {}).items()}
    by_index_out = {v: k for k, v in sig.get("outputs", {}).items()}
    return ([by_index_in.get(d["index"], d["name"]) for d in ins],
            [by_index_out.get(d["index"], d["name"]) for d in outs])


_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int8)": "int8",
               "tensor(uint8)": "uint8", "tensor(int64)": "int64", "tensor(int32)": "int32",
               "tensor(bool)": "bool", "tensor(double)": "float64"}


class OnnxBackend:
    name = "onnx"

    def __init__(self, model: bytes, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise RuntimeBackendError("no ONNX runtime: pip install onnxruntime") from None
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        try:
            self._sess = ort.InferenceSession(bytes(model), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types, one per failure kind
            msg = first_line(exc)
            if "NOT_IMPLEMENTED" in msg or "Could not find an implementation" in msg:
                raise UnsupportedOpError(f"ONNX Runtime cannot run the model: {msg}") from None
            raise ModelError(f"ONNX Runtime cannot load the model: {msg}") from None
        self.inputs = tuple(_spec_from_ort(i) for i in self._sess.get_inputs())
        self.outputs = tuple(_spec_from_ort(o) for o in self._sess.get_outputs())
        self._in_names = [s.name for s in self.inputs]

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self._sess.run(None, dict(zip(self._in_names, inputs)))


def _spec_from_ort(arg: Any) -> TensorSpec:
    shape = tuple(int(s) if isinstance(s, int) else -1 for s in arg.shape)
    return TensorSpec(name=arg.name, shape=shape, dtype=_ORT_DTYPES.get(arg.type, arg.type))


class TFLMBackend:
    """TensorFlow Lite Micro on the host: what a microcontroller would compute, bit for bit."""

    name = "tflm"

    def __init__(self, model: bytes, arena_size: int | None = None) -> None:
        try:
            from tflite_micro.python.tflite_micro import runtime as tflm
        except ImportError:
            raise RuntimeBackendError("no TFLM runtime: pip install tflite-micro") from None
        # TFLM trusts the flatbuffer completely: only verified, dense ones reach it
        check_tflite(model, allow_sparse=False)
        try:
            self._it = tflm.Interpreter.from_bytes(bytes(model), arena_size=arena_size)
        except (RuntimeError, ValueError) as exc:
            raise ModelError(f"TFLM cannot allocate the model: {first_line(exc)}") from None
        with _native_stderr_filtered(_TFLM_NOISE):
            self.inputs = tuple(self._specs(self._it.get_input_details, "input"))
            self.outputs = tuple(self._specs(self._it.get_output_details, "output"))

    @staticmethod
    def _specs(details_fn, prefix: str) -> list[TensorSpec]:
        specs, i = [], 0
        while True:
            try:
                d = details_fn(i)
            except (RuntimeError, ValueError, IndexError):
                return specs
            q = d.get("quantization_parameters", {})
            scales = q.get("scales", np.zeros(0))
            quantized = len(scales) > 0 and np.dtype(d["dtype"]).kind in "iu"
            specs.append(TensorSpec(
                name=f"{prefix}{i}", shape=tuple(int(s) for s in d["shape"]), dtype=np.dtype(d["dtype"]).name,
                scale=float(scales[0]) if quantized else None,
                zero_point=int(q["zero_points"][0]) if quantized else None))
            i += 1

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        try:
            for i, arr in enumerate(inputs):
                self._it.set_input(arr, i)
            self._it.invoke()
            return [np.array(self._it.get_output(i)) for i in range(len(self.outputs))]
        except RuntimeError as exc:
            raise RuntimeBackendError(f"TFLM invoke failed: {first_line(exc)}") from None


def load_backend(model: bytes, fmt: str, *, threads: int | None = None, edgetpu: bool = False,
                 arena_size: int | None = None, prefer_micro: bool = False) -> Backend:
    if fmt == "onnx":
        return OnnxBackend(model, threads)
    if fmt in ("tflite", "tflm-c"):
        if prefer_micro or fmt == "tflm-c":
            return TFLMBackend(model, arena_size)
        return TFLiteBackend(model, threads, edgetpu)
    raise RuntimeBackendError(f"no backend for model format {fmt!r} (known: {', '.join(BACKENDS)})")


def edgetpu_available() -> bool:
    import ctypes

    try:
        ctypes.CDLL(EDGETPU_LIBRARY)
        return True
    except OSError:
        return False
