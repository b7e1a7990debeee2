"""Small trained MobileNet-style models for the quantization tests.

Random weights hide the failures real models show: trained convolutions with batch norm folded
in give per-channel scales and activation ranges that differ by orders of magnitude, which is
what breaks per-tensor int8 activations. These models are trained for a few seconds on real
data (scikit-learn's digits, upsampled to 32x32 and tiled to 3 channels).
"""

from __future__ import annotations

import numpy as np

SIDE = 32


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 32, 32, 3) float32 in [0, 1], labels (1797,) int64)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    small = d.images.astype(np.float32) / 16.0
    big = np.kron(small, np.ones((SIDE // 8, SIDE // 8), np.float32))
    # a per-image brightness/contrast jitter: natural-ish input statistics, not clean 0/1
    rng = np.random.default_rng(0)
    gain = rng.uniform(0.6, 1.0, (len(big), 1, 1)).astype(np.float32)
    offset = rng.uniform(0.0, 0.3, (len(big), 1, 1)).astype(np.float32)
    img = np.clip(big * gain + offset, 0.0, 1.0)
    rgb = np.stack([img, img * 0.9 + 0.05, 1.0 - img * 0.8], axis=-1)
    return rgb.astype(np.float32), d.target.astype(np.int64)


def _hard_swish(x):
    import tensorflow as tf

    return x * tf.nn.relu6(x + 3.0) / 6.0


def _block(x, expand: int, out: int, stride: int, act: str, se: bool):
    import tensorflow as tf

    L = tf.keras.layers
    inp = x
    ch = int(x.shape[-1])

    def activation(y):
        if act == "hswish":
            return L.Activation(_hard_swish)(y)
        if act == "prelu":  # MediaPipe's face landmark model uses PReLU throughout
            return L.PReLU(shared_axes=[1, 2])(y)
        return L.ReLU(6.0 if act == "relu6" else None)(y)

    y = L.Conv2D(ch * expand, 1, use_bias=False)(x)
    y = activation(L.BatchNormalization(momentum=0.8)(y))
    y = L.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(y)
    y = activation(L.BatchNormalization(momentum=0.8)(y))
    if se:
        s = L.GlobalAveragePooling2D(keepdims=True)(y)
        s = L.Conv2D(max(8, ch * expand // 4), 1, activation="relu")(s)
        s = L.Conv2D(ch * expand, 1, activation="hard_sigmoid")(s)
        y = L.Multiply()([y, s])
    y = L.BatchNormalization(momentum=0.8)(L.Conv2D(out, 1, use_bias=False)(y))
    if stride == 1 and out == ch:
        y = L.Add()([inp, y])
    return y


def build_mobile(kind: str, seed: int = 0, batch: int | None = 1):
    """A Keras MobileNetV2/V3-style classifier (32x32x3 -> 10 logits), untrained."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    L = tf.keras.layers
    act = {"v2": "relu", "v3": "hswish", "prelu": "prelu"}[kind]
    x_in = tf.keras.Input((SIDE, SIDE, 3), batch_size=batch, name="image")
    x = L.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(x_in)
    x = L.BatchNormalization(momentum=0.8)(x)
    if act == "prelu":
        x = L.PReLU(shared_axes=[1, 2])(x)
    else:
        x = L.Activation(_hard_swish)(x) if act == "hswish" else L.ReLU(6.0)(x)
    x = _block(x, 1, 16, 1, act, se=False)
    x = _block(x, 4, 24, 2, act, se=kind == "v3")
    x = _block(x, 3, 24, 1, act, se=kind == "v3")
    x = _block(x, 3, 32, 2, act, se=True)
    x = _block(x, 3, 32, 1, "relu6", se=False)
    x = L.GlobalAveragePooling2D()(x)
    out = L.Dense(10, name="logits")(x)
    return tf.keras.Model(x_in, out)


def trained_tflite(kind: str, images: np.ndarray, labels: np.ndarray, epochs: int = 4) -> bytes:
    """Train for a few seconds, convert to float TFLite (the converter folds batch norm)."""
    import tensorflow as tf

    model = build_mobile(kind)
    flexible = build_mobile(kind, batch=None)
    flexible.compile(optimizer=tf.keras.optimizers.Adam(3e-3),
                     loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    flexible.fit(images, labels, batch_size=64, epochs=epochs, verbose=0, shuffle=True)
    model.set_weights(flexible.get_weights())
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    return converter.convert()
