"""Small full-int8 TFLite models built with TensorFlow for the target-family tests.

Nothing is trained: the Keras models keep their seeded initial weights and are quantized with
the digits example's calibration images, which is all a compile/partition check needs.
Helpers here are plain functions so that tests can build their own variants:
``int8_tflite(keras_model, calib)`` converts any Keras model to full int8 (int8 I/O).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

DIGITS_DIR = Path(__file__).resolve().parents[3] / "edgekit" / "examples" / "digits"
SEED = 7


def keras():
    import tf_keras

    return tf_keras


def digits_calib(n: int = 64) -> np.ndarray:
    return np.load(DIGITS_DIR / "calib.npz")["image"][:n].astype(np.float32)


def int8_tflite(model, calib: np.ndarray, int_io: bool = True) -> bytes:
    """Full-integer TFLite (TFLITE_BUILTINS_INT8) of a Keras model; int8 input and output, or
    float I/O (QUANTIZE/DEQUANTIZE at the graph edges) with ``int_io=False``."""
    import tensorflow as tf

    def representative():
        for x in calib:
            yield [x[None].astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if int_io:
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    with warnings.catch_warnings():  # "Statistics for quantized inputs were expected": int8 I/O
        warnings.simplefilter("ignore", UserWarning)
        return converter.convert()


def float_tflite(model) -> bytes:
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def digits_keras(conv1: int = 16, conv2: int = 32, dense: int = 64):
    """The digits CNN of tools/make_examples.py (untrained, seeded); widths scale its size."""
    import tensorflow as tf

    k = keras()
    tf.random.set_seed(SEED)
    return k.Sequential([
        k.layers.InputLayer(input_shape=(8, 8, 1), batch_size=1, name="image"),
        k.layers.Conv2D(conv1, 3, padding="same", activation="relu"),
        k.layers.Conv2D(conv2, 3, padding="same", activation="relu"),
        k.layers.MaxPool2D(2),
        k.layers.Flatten(),
        k.layers.Dense(dense, activation="relu"),
        k.layers.Dense(10, name="logits"),
    ])


@pytest.fixture(scope="session")
def calib() -> np.ndarray:
    """64 digits calibration images, (64, 8, 8, 1) float32 in [0, 1]."""
    return digits_calib()


@pytest.fixture(scope="session")
def digits_int8(calib) -> bytes:
    """The digits CNN as full-int8 TFLite: CONV_2D, CONV_2D, MAX_POOL_2D, RESHAPE,
    FULLY_CONNECTED, FULLY_CONNECTED (int8 in/out, ReLUs fused)."""
    return int8_tflite(digits_keras(), calib)


@pytest.fixture(scope="session")
def digits_float() -> bytes:
    """The built-in example's float32 TFLite model (for 'needs int8' errors)."""
    return (DIGITS_DIR / "digits.tflite").read_bytes()


@pytest.fixture(scope="session")
def digits_int8_float_io(calib) -> bytes:
    """The digits CNN, full-int8 inside but with float32 I/O: QUANTIZE first, DEQUANTIZE last."""
    return int8_tflite(digits_keras(), calib, int_io=False)


@pytest.fixture(scope="session")
def build_int8(calib) -> Callable[..., bytes]:
    """``build_int8(keras_model, data=None, int_io=True)`` → full-int8 TFLite bytes (digits
    calibration images by default)."""

    def build(model, data: np.ndarray | None = None, int_io: bool = True) -> bytes:
        return int8_tflite(model, calib if data is None else data, int_io=int_io)

    return build


def digits_trained_keras():
    """The digits CNN with the trained weights of the built-in example (read from digits.tflite)."""
    from edgekit.tflite import model as tfl

    model_t = tfl.load((DIGITS_DIR / "digits.tflite").read_bytes())
    weights = []
    for op in model_t.subgraphs[0].operators:
        name = tfl.op_name(model_t, op)
        if name in ("CONV_2D", "FULLY_CONNECTED"):
            w, b = (tfl.tensor_array(model_t, i) for i in op.inputs[1:3])
            weights.append([w.transpose(1, 2, 3, 0) if name == "CONV_2D" else w.T, b])
    model = digits_keras()
    for layer, wb in zip([la for la in model.layers if la.get_weights()], weights, strict=True):
        layer.set_weights(wb)
    return model


@pytest.fixture(scope="session")
def digits_int8_trained() -> bytes:
    """The built-in *trained* digits CNN as full-int8 TFLite, calibrated on all 200 calibration
    images (about 98 % test accuracy): for figures that need real weights."""
    return int8_tflite(digits_trained_keras(), digits_calib(200))
