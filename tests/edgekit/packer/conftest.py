"""Fixtures for the packer tests: the digits TFLite model, its data, and small model builders."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.examples import get_example
from edgekit.tflite import model as tm
from edgekit_agent.runtime import Runner, load_backend


@pytest.fixture(scope="session")
def digits_tflite() -> bytes:
    """The float digits TFLite model (input 'image' (1,8,8,1) float32, output (1,10))."""
    return get_example("digits").tflite.read_bytes()


@pytest.fixture(scope="session")
def digits_calib() -> list[dict[str, np.ndarray]]:
    """200 calibration samples as signature feeds: [{'image': (1,8,8,1) float32}, ...]."""
    images = np.load(get_example("digits").calib)["image"]
    return [{"image": images[i:i + 1]} for i in range(len(images))]


@pytest.fixture(scope="session")
def digits_test() -> tuple[np.ndarray, np.ndarray]:
    """(images (500,8,8,1) float32, labels (500,) int64): the held-out labelled set."""
    ex = get_example("digits")
    return np.load(ex.eval)["image"], np.load(ex.labels)


@pytest.fixture(scope="session")
def tflite_logits(digits_test):
    """tflite_logits(model bytes) -> (500, 10) float logits of the test set (dequantized)."""
    images = digits_test[0]

    def run(model: bytes) -> np.ndarray:
        runner = Runner(load_backend(model, "tflite"))
        return np.concatenate([runner([images[i:i + 1]])[0] for i in range(len(images))])

    return run


@pytest.fixture(scope="session")
def digits_float_logits(digits_tflite, tflite_logits) -> np.ndarray:
    return tflite_logits(digits_tflite)


@pytest.fixture(scope="session")
def make_fc_tflite():
    """make_fc_tflite(n_in, n_out, seed=0, signature=True) -> bytes of a one-op float model
    y = x @ W.T + b, built with the flatbuffer object API (input 'x' (1, n_in), output 'y')."""

    def make(n_in: int, n_out: int, seed: int = 0, signature: bool = True) -> bytes:
        rng = np.random.default_rng(seed)
        model_t = tm.schema.ModelT()
        model_t.version, model_t.buffers, model_t.operatorCodes = 3, [tm.schema.BufferT()], []
        sg = tm.schema.SubGraphT()
        sg.tensors, sg.operators = [], []
        model_t.subgraphs = [sg]
        x = tm.add_tensor(model_t, "x", (1, n_in), np.float32)
        w = tm.add_tensor(model_t, "w", (n_out, n_in), np.float32,
                          data=rng.normal(0, 0.05, (n_out, n_in)).astype(np.float32))
        b = tm.add_tensor(model_t, "b", (n_out,), np.float32,
                          data=rng.normal(0, 0.1, n_out).astype(np.float32))
        y = tm.add_tensor(model_t, "y", (1, n_out), np.float32)
        tm.insert_op(model_t, "FULLY_CONNECTED", [x, w, b], [y], 0)
        sg.operators[0].builtinOptionsType = tm.schema.BuiltinOptions.FullyConnectedOptions
        sg.operators[0].builtinOptions = tm.schema.FullyConnectedOptionsT()
        sg.inputs, sg.outputs = np.array([x], dtype=np.int32), np.array([y], dtype=np.int32)
        if signature:
            sig = tm.schema.SignatureDefT()
            sig.signatureKey, sig.subgraphIndex = b"serving_default", 0
            sig.inputs, sig.outputs = [tm.schema.TensorMapT()], [tm.schema.TensorMapT()]
            sig.inputs[0].name, sig.inputs[0].tensorIndex = b"x", x
            sig.outputs[0].name, sig.outputs[0].tensorIndex = b"y", y
            model_t.signatureDefs = [sig]
        return tm.save(model_t)

    return make
