"""Packer acceptance on TFLite input (ai-edge-quantizer path) and the TFLite doctor."""

from __future__ import annotations

import edgekit
from edgekit.tflite import model as tflite_model
from edgekit_agent.bundle.reader import open_bundle
from edgekit_agent.runtime import load_backend


def test_digits_tflite_int8_cpu(tmp_path, digits):
    out = tmp_path / "t8.ekb"
    edgekit.pack(str(digits.tflite), "rpi4", out, calib=digits.calib, eval_data=digits.eval,
                 labels=digits.labels, recipe="static_int8")
    m = open_bundle(out).manifest
    assert m.model.format == "tflite"
    assert m.model.size_bytes <= 0.30 * digits.tflite.stat().st_size
    assert m.primary.fidelity.accuracy_drop <= 0.01
    assert m.primary.fidelity.top1_agreement >= 0.98


def test_tflite_without_signature_packs(tmp_path, digits):
    model_t = tflite_model.load(digits.tflite.read_bytes())
    model_t.signatureDefs = []
    bare = tmp_path / "bare.tflite"
    bare.write_bytes(tflite_model.save(model_t))
    assert not tflite_model.load(bare.read_bytes()).signatureDefs
    assert load_backend(bare.read_bytes(), "tflite").inputs[0].name == "serving_default_image:0"
    out = tmp_path / "bare.ekb"
    edgekit.pack(str(bare), "rpi4", out, calib=digits.calib, eval_data=digits.eval,
                 labels=digits.labels, recipe="static_int8")
    m = open_bundle(out).manifest
    doctor = " ".join((s.detail or "") for s in m.primary.recipe if s.step == "doctor")
    assert "signature" in doctor.lower(), doctor
    assert m.primary.fidelity.accuracy_drop <= 0.01


def test_keras_model_through_the_tf_extra(tmp_path):
    import numpy as np
    import tensorflow as tf

    model = tf.keras.Sequential([tf.keras.Input((16,), batch_size=1),
                                 tf.keras.layers.Dense(32, activation="relu"),
                                 tf.keras.layers.Dense(4)])
    path = tmp_path / "mlp.keras"
    model.save(path)
    calib = tmp_path / "c.npy"
    np.save(calib, np.random.default_rng(0).random((40, 16), dtype=np.float32))
    result = edgekit.pack(str(path), "x86-64", tmp_path / "mlp.ekb", calib=calib, recipe="fp16")
    m = open_bundle(tmp_path / "mlp.ekb").manifest
    assert m.model.format == "tflite" and m.source["format"] == "tflite"
    assert m.primary.inputs[0].shape == (1, 16)
    assert result.chosen[0].fidelity.min_sqnr_db > 40  # fp16 weights: near-lossless


def test_selftest_of_a_large_input_model_keeps_the_bundle_small(tmp_path):
    """The self-test's inputs ride in every bundle and OTA update: a model taking 300 KB per
    sample ships one self-test sample, not four."""
    import io
    import zipfile

    import numpy as np

    from edgekit.packer.pack import SELFTEST_INPUT_BYTES

    n_in = 75_000  # 300 KB of float32 per sample
    model = tmp_path / "wide.tflite"
    model.write_bytes(tflite_model.dense_model(n_in, 4, seed=0, signature=True))
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).random((16, n_in), np.float32))
    out = tmp_path / "wide.ekb"
    edgekit.pack(str(model), "rpi4", out, calib=tmp_path / "calib.npy", recipe="fp16")
    with zipfile.ZipFile(out) as z:
        selftest = np.load(io.BytesIO(z.read("selftest.npz")))
        packed = z.getinfo("selftest.npz").file_size
    assert selftest["input_0"].shape[0] == 1
    assert 4 * n_in <= packed < 4 * n_in + 4096  # one input sample, the outputs and atol
    assert 4 * n_in > SELFTEST_INPUT_BYTES
