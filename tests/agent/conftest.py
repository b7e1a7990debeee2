"""Bundles for the device-agent tests, built from the digits example with the real bundle writer.

``bundle_factory(kind, version=..., selftest=..., sign_key=..., variants=...)`` writes a bundle
whose manifest specs come from the model itself (``load_backend(...).inputs/.outputs``) and
whose self-test vectors are the model's outputs on real digits test images. Kinds: ``tflite``
(float), ``onnx`` (float), ``int8`` (full-int8 TFLite with int8 I/O, quantized here with
ai-edge-quantizer, a host library: tests using it are marked ``host``) and ``gather`` (an ONNX
model that fails at run time on out-of-range indices). Models are made on first use.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgekit_agent.bundle.manifest import Manifest, ModelRef, Variant, sha256_hex
from edgekit_agent.runtime import Runner, load_backend

FORMATS = {"tflite": "tflite", "int8": "tflite", "onnx": "onnx", "gather": "onnx"}


def _int8_digits(digits) -> bytes:
    from ai_edge_quantizer import quantizer, recipe

    calib = np.load(digits.calib)["image"][:64].astype(np.float32)
    q = quantizer.Quantizer(str(digits.tflite), recipe.static_wi8_ai8())
    result = q.calibrate({"serving_default": [{"image": calib[i:i + 1]} for i in range(len(calib))]})
    return bytes(q.quantize(result).quantized_model)


def _gather_onnx() -> bytes:
    """y = table[idx]: valid specs, but an index >= 4 makes ONNX Runtime fail at run time."""
    import onnx
    from onnx import TensorProto, helper

    table = helper.make_tensor("table", TensorProto.FLOAT, [4, 3], np.arange(12, dtype=np.float32))
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "idx"], ["y"], axis=0)], "gather",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [table])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


class _Models(dict):
    """kind -> model bytes, each built when first asked for."""

    def __init__(self, digits) -> None:
        super().__init__()
        self._make = {"tflite": digits.tflite.read_bytes, "onnx": digits.onnx.read_bytes,
                      "int8": lambda: _int8_digits(digits), "gather": _gather_onnx}

    def __missing__(self, kind: str) -> bytes:
        self[kind] = self._make[kind]()
        return self[kind]


@pytest.fixture(scope="session")
def models(digits) -> dict[str, bytes]:
    return _Models(digits)


@pytest.fixture(scope="session")
def images(digits) -> np.ndarray:
    return np.load(digits.eval)["image"][:16].astype(np.float32)


def _variant(name: str, path: str, model: bytes, fmt: str) -> Variant:
    backend = load_backend(model, fmt)
    return Variant(name=name, model=ModelRef(path=path, format=fmt, sha256=sha256_hex(model),
                                             size_bytes=len(model)),
                   inputs=backend.inputs, outputs=backend.outputs)


def _selftest_npz(model: bytes, fmt: str, images: np.ndarray, mode: str, family: str) -> bytes:
    runner = Runner(load_backend(model, fmt, prefer_micro=family == "mcu"))  # as the device will
    if fmt == "onnx" and runner.inputs[0].dtype == "int64":
        cases = [np.array([i % 4], dtype=np.int64) for i in range(4)]
    else:
        cases = [images[i:i + 1] for i in range(8)]
    expected = np.stack([runner([c])[0] for c in cases])
    if mode == "bad":
        expected = expected + 1.0
    stack = np.concatenate if mode == "batch" else np.stack  # the packer concatenates on the batch axis
    buf = io.BytesIO()
    np.savez(buf, input_0=stack(cases), output_0=stack(list(expected)), atol=np.float32(1e-5))
    return buf.getvalue()


@pytest.fixture(scope="session")
def bundle_factory(tmp_path_factory, models, images, write_bundle_file) -> Callable[..., Path]:
    """make(kind="tflite", version="1", selftest="good"|"batch"|"bad"|None, sign_key=None, variants=()).

    "good" stacks the 8 vectors on an extra leading axis, "batch" concatenates them along the
    batch axis (what the packer writes), "bad" expects outputs off by 1.0."""

    def make(kind: str = "tflite", *, version: str = "1", selftest: str | None = "good",
             sign_key: Path | None = None, variants: tuple[str, ...] = (), name: str = "digits",
             family: str = "cpu") -> Path:
        fmt = FORMATS[kind]
        model = models[kind]
        path = f"model.{fmt}"
        files = [(path, model, "model")]
        extras: dict[str, str] = {}
        if selftest:
            npz = _selftest_npz(model, fmt, images, selftest, family)
            files.append(("selftest.npz", npz, "selftest"))
            extras["selftest"] = "selftest.npz"
        alternates = []
        for v in variants:
            vpath = f"variant-{v}.{FORMATS[v]}"
            files.append((vpath, models[v], "variant"))
            alternates.append(_variant(v, vpath, models[v], FORMATS[v]))
        manifest = Manifest(name=name, version=version, target="x86-64", family=family,
                            primary=_variant("primary", path, model, fmt), members=(),
                            variants=tuple(alternates), extras=extras)
        out = tmp_path_factory.mktemp("bundle") / f"{name}-{kind}-{version}.ekb"
        return write_bundle_file(out, manifest, files, sign_key)

    return make


@pytest.fixture
def run_python() -> Callable[..., subprocess.CompletedProcess]:
    """run_python(code, env_extra) -> CompletedProcess of a fresh interpreter."""

    def run(code: str, env_extra: dict[str, str] | None = None, timeout: float = 60) -> Any:
        env = {**os.environ, **(env_extra or {})}
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=timeout)

    return run


@pytest.fixture
def agent_cli() -> Callable[..., subprocess.CompletedProcess]:
    """agent_cli(*args) -> CompletedProcess of the real `edgekit-agent` entry point module."""

    def run(*args: Any, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "edgekit_agent.cli", *map(str, args)],
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout)

    return run
