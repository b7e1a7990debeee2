"""An MCU bundle is judged in TFLM, the runtime the device runs, not in LiteRT.

TFLM's int8 kernels round differently from LiteRT's, and a deep model compounds it: the OCR
direction classifier's outputs differ by 51 LSB between the two. A candidate measured in LiteRT
said nothing about the device, and a self-test recorded from LiteRT failed on it.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np

import edgekit
from edgekit.packer.evaluate import sqnr_db
from edgekit_agent.runtime import Runner, load_backend


def _outputs(runner: Runner, images: np.ndarray) -> np.ndarray:
    return np.concatenate([runner([x[None]])[0] for x in images])


def test_mcu_candidates_are_measured_in_tflm(mobile_v3, tmp_path):
    path, calib, evals = mobile_v3
    np.save(tmp_path / "calib.npy", calib)
    np.save(tmp_path / "eval.npy", evals)
    out = tmp_path / "m.ekb"
    result = edgekit.pack(str(path), "stm32h7", out, calib=tmp_path / "calib.npy",
                          eval_data=tmp_path / "eval.npy", min_sqnr=15.0)
    chosen = result.chosen[0]
    assert chosen.recipe.quantization in ("static_int8", "static_int16x8"), chosen.recipe.name
    assert chosen.runner.backend.name == "tflm"
    report = chosen.compiled.report
    tflm = Runner(load_backend(chosen.shipped, "tflite", prefer_micro=True,
                               arena_size=report.arena_bytes))
    litert = Runner(load_backend(chosen.shipped, "tflite"))
    ref = _outputs(Runner(load_backend(path.read_bytes(), "tflite")), evals)
    on_tflm, on_litert = sqnr_db(ref, _outputs(tflm, evals)), sqnr_db(ref, _outputs(litert, evals))
    assert chosen.fidelity.min_sqnr_db >= 15.0
    assert abs(chosen.fidelity.min_sqnr_db - on_tflm) < 1e-4, (on_tflm, on_litert)
    # the self-test the device re-runs holds TFLM's own outputs, bit for bit
    with zipfile.ZipFile(out) as z:
        selftest = np.load(io.BytesIO(z.read("selftest.npz")))
    for i, x in enumerate(selftest["input_0"]):
        np.testing.assert_array_equal(tflm([x[None]])[0][0], selftest["output_0"][i])


def test_16x8_keeps_ops_tflm_has_no_int16_kernel_for_in_int8(tmp_path):
    """TFLM's RESIZE_BILINEAR runs float or int8 only ("Output type is 7, requires float or
    int8"): selfie segmentation's 16x8 candidate failed on every TFLM target for it. Packed for
    an MCU, the 16x8 rung gives that op int8 activations and the rest int16."""
    import tensorflow as tf

    from edgekit.tflite import model as tm

    tf.keras.utils.set_random_seed(0)
    inp = tf.keras.Input((16, 16, 3), batch_size=1, name="image")
    x = tf.keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inp)
    x = tf.keras.layers.UpSampling2D(interpolation="bilinear")(x)
    out = tf.keras.layers.Conv2D(2, 3, padding="same")(x)
    model = tf.lite.TFLiteConverter.from_keras_model(tf.keras.Model(inp, out)).convert()
    assert "RESIZE_BILINEAR" in tm.op_names(model)
    path = tmp_path / "up.tflite"
    path.write_bytes(model)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "calib.npy", rng.random((32, 16, 16, 3), np.float32))
    result = edgekit.pack(str(path), "stm32h7", tmp_path / "up.ekb", calib=tmp_path / "calib.npy",
                          recipe="static_int16x8")
    chosen = result.chosen[0]
    assert chosen.recipe.name == "static_int16x8" and chosen.runner.backend.name == "tflm"
    assert chosen.stats["tuning"]["int8_ops"] == ["RESIZE_BILINEAR"]
    q = tm.load(chosen.shipped)
    sg = q.subgraphs[0]
    types = {tm.op_name(q, op): tm.tensor_type_name(sg.tensors[tm.ints(op.outputs)[0]].type)
             for op in sg.operators}
    assert types["RESIZE_BILINEAR"] == "int8" and types["CONV_2D"] == "int16"
    assert chosen.fidelity.min_sqnr_db > 30.0
