"""Regenerate the built-in digits example (float TFLite + float ONNX + calibration/test data).

    pip install tensorflow-cpu tf-keras onnx scikit-learn
    python tools/make_examples.py [--out edgekit/examples/digits]

Trains a small CNN on scikit-learn's bundled 8x8 digits (no download), exports it as a float
TFLite model (with a SignatureDef) and as a float ONNX model built from the same weights, and
writes a calibration set and a labelled held-out test set. Both models take NHWC
float32 input `image` of shape (1, 8, 8, 1) in [0, 1] and return `logits` (1, 10).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

SEED = 7
N_CALIB = 200
N_TEST = 500


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[..., None]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(x))
    x, y = x[order], y[order]
    return x[N_TEST:], y[N_TEST:], x[:N_TEST], y[:N_TEST]


def train(x: np.ndarray, y: np.ndarray):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    import tf_keras as keras

    tf.random.set_seed(SEED)
    model = keras.Sequential([
        keras.layers.InputLayer(input_shape=(8, 8, 1), batch_size=1, name="image"),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPool2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10, name="logits"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(2e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    # Train with a free batch size, then copy the weights into the batch-1 model.
    trainer = keras.Sequential([keras.layers.InputLayer(input_shape=(8, 8, 1))] + model.layers[:])
    trainer.compile(optimizer=keras.optimizers.Adam(2e-3),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    trainer.fit(x, y, epochs=25, batch_size=32, verbose=0, shuffle=True)
    return model


def export_tflite(model) -> bytes:
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec((1, 8, 8, 1), tf.float32, name="image")])
    def serve(image):
        return {"logits": model(image)}

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [serve.get_concrete_function()], model)
    return converter.convert()


def export_onnx(model) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    (k1, b1), (k2, b2), (w3, b3), (w4, b4) = [
        layer.get_weights() for layer in model.layers if layer.get_weights()]
    # Keras flattens (h, w, c); ONNX after NCHW pooling flattens (c, h, w): permute rows once.
    w3 = w3.reshape(4, 4, 32, 64).transpose(2, 0, 1, 3).reshape(512, 64)
    inits = {
        "conv1.w": k1.transpose(3, 2, 0, 1), "conv1.b": b1,
        "conv2.w": k2.transpose(3, 2, 0, 1), "conv2.b": b2,
        "fc1.w": w3.T, "fc1.b": b3, "fc2.w": w4.T, "fc2.b": b4,
        "flat.shape": np.array([1, 512], dtype=np.int64),
    }
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2], name="to_nchw"),
        helper.make_node("Conv", ["nchw", "conv1.w", "conv1.b"], ["c1"], pads=[1, 1, 1, 1],
                         name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "conv2.w", "conv2.b"], ["c2"], pads=[1, 1, 1, 1],
                         name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("MaxPool", ["r2"], ["p"], kernel_shape=[2, 2],
                         strides=[2, 2], name="pool"),
        helper.make_node("Reshape", ["p", "flat.shape"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc1.w", "fc1.b"], ["d1"], transB=1, name="fc1"),
        helper.make_node("Relu", ["d1"], ["r3"], name="relu3"),
        helper.make_node("Gemm", ["r3", "fc2.w", "fc2.b"], ["logits"], transB=1, name="fc2"),
    ]
    graph = helper.make_graph(
        nodes, "digits",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 8, 8, 1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(np.ascontiguousarray(v), k) for k, v in inits.items()])
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                   producer_name="edgekit-tools")
    onnx_model.ir_version = 8
    onnx.checker.check_model(onnx_model)
    return onnx_model.SerializeToString()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).resolve().parents[1] / "edgekit" / "examples" / "digits")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    x_train, y_train, x_test, y_test = load_data()
    model = train(x_train, y_train)
    (args.out / "digits.tflite").write_bytes(export_tflite(model))
    (args.out / "digits.onnx").write_bytes(export_onnx(model))
    np.savez_compressed(args.out / "calib.npz", image=x_train[:N_CALIB])
    np.savez_compressed(args.out / "test.npz", image=x_test)
    np.save(args.out / "test_labels.npy", y_test)
    logits = model.predict(x_test, batch_size=64, verbose=0)
    print(f"float test accuracy: {(logits.argmax(1) == y_test).mean():.4f} on {len(y_test)} images")


if __name__ == "__main__":
    main()
