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
        return tm.dense_model(n_in, n_out, seed=seed, bias_std=0.1, signature=signature)

    return make


@pytest.fixture(scope="session")
def mobile_v3(tmp_path_factory):
    """A trained MobileNetV3-style TFLite model (hard-swish, squeeze-excite, depthwise, residual
    adds, batch norm folded) and its data: (path, calib (64,32,32,3), eval (32,32,32,3))."""
    from mobile_models import digits_images, trained_tflite

    images, labels = digits_images()
    model = trained_tflite("v3", images[:1297], labels[:1297])
    d = tmp_path_factory.mktemp("mobile_v3")
    path = d / "mobile_v3.tflite"
    path.write_bytes(model)
    return path, images[:64], images[1297:1329]
