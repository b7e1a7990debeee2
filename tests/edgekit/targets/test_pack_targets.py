"""`edgekit pack` end to end for one target of each non-CPU family, ONNX and TFLite input.

The report's figures must be the ones the real tools produce: re-run TFLM / Vela / the Edge TPU
analysis on the model inside the bundle and compare.
"""

from __future__ import annotations

import csv
import io
import subprocess

import pytest

import edgekit
from edgekit.targets import edgetpu, mcu
from edgekit_agent.bundle.reader import open_bundle


@pytest.fixture(scope="module", params=["onnx", "tflite"])
def digits_model(request, digits):
    return digits.onnx if request.param == "onnx" else digits.tflite


def _pack(tmp_path, model, target, **kw):
    out = tmp_path / f"{target}.ekb"
    ex = edgekit.examples.get_example("digits")
    edgekit.pack(str(model), target, out, calib=ex.calib, eval_data=ex.eval, labels=ex.labels, **kw)
    return out, open_bundle(out)


def test_mcu_arena_and_sources_come_from_tflm(tmp_path, digits_model):
    out, bundle = _pack(tmp_path, digits_model, "stm32h7")
    m = bundle.manifest
    rep = m.primary.target_report.to_dict()
    model = bundle.read_model()
    assert m.model.format == "tflite" and rep["fits"] is True
    again = mcu.measure_arena(model)
    assert rep["arena_measured_bytes"] == again.measured_bytes
    assert again.measured_bytes < rep["arena_bytes"] <= again.measured_bytes + 2 * 16
    assert rep["flash_bytes"] == len(model) + 102400
    assert m.primary.fidelity.accuracy_drop <= 0.01
    assert rep["tflm_vs_litert_max_lsb"] <= 1
    src = tmp_path / "model_data.c"
    src.write_bytes(bundle.read("mcu/model_data.c"))
    (tmp_path / "model_data.h").write_bytes(bundle.read("mcu/model_data.h"))
    proc = subprocess.run(["gcc", "-c", "-Wall", "-Werror", "-o", str(tmp_path / "m.o"), str(src)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_ethos_u_figures_come_from_vela(tmp_path, digits_model):
    out, bundle = _pack(tmp_path, digits_model, "ethos-u55-128")
    rep = bundle.manifest.primary.target_report.to_dict()
    rows = list(csv.DictReader(io.StringIO(bundle.read("vela_summary.csv").decode())))
    assert rep["fits"] is True and rep["ops_on_cpu"] == []
    vela = rep["vela"]
    assert rep["sram_bytes"] == vela["sram_bytes"] > 0
    assert int(float(rows[0]["sram_memory_used"]) * 1024) == pytest.approx(
        rep["sram_bytes"], abs=1024
    )
    assert vela["cpu_ops"] == 0
    # the shipped model is Vela's: one ethos-u custom op carries the whole network
    from edgekit.tflite.model import op_names
    assert op_names(bundle.read_model()) == ["CUSTOM:ethos-u"]


def test_edgetpu_partition_maps_every_op(tmp_path, digits_model):
    out, bundle = _pack(tmp_path, digits_model, "coral-usb")
    rep = bundle.manifest.primary.target_report.to_dict()
    model = bundle.read_model()
    verdicts = edgetpu.analyze(model)
    assert rep["ops_on_cpu"] == []
    assert (
        len(rep["ops_on_accelerator"]) == len(verdicts) == len([v for v in verdicts if v.mappable])
    )
    assert bundle.manifest.primary.inputs[0].dtype in ("int8", "uint8")
    assert "pending" in str(rep.get("compile_step", "")) + str(rep.get("compiler", ""))


def _big_dense_tflite(path) -> None:
    """About 900 KB of int8 weights: too much flash for an nRF52840, fine for an STM32H7."""
    import tf_keras as k
    model = k.Sequential([k.layers.InputLayer(input_shape=(8, 8, 1), batch_size=1),
                          k.layers.Flatten(), k.layers.Dense(1024, activation="relu"),
                          k.layers.Dense(768, activation="relu"), k.layers.Dense(10)])
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec((1, 8, 8, 1), tf.float32, name="image")])
    def serve(image):
        return {"logits": model(image)}

    path.write_bytes(tf.lite.TFLiteConverter.from_concrete_functions(
        [serve.get_concrete_function()], model).convert())


def test_too_large_for_one_board_fits_a_larger_one(tmp_path, edgekit_cli, digits):
    big = tmp_path / "big.tflite"
    _big_dense_tflite(big)
    out = tmp_path / "small.ekb"
    proc = edgekit_cli("pack", big, "--target", "nrf52840", "-o", out, "--calib", digits.calib,
                       "--recipe", "static_int8")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: no recipe fits nrf52840")
    over = int(proc.stderr.split("flash: needs ")[1].split("(")[1].split(" B over")[0])
    assert over > 0 and not out.exists()
    ok = edgekit_cli("pack", big, "--target", "stm32h7", "-o", tmp_path / "h7.ekb", "--calib",
                     digits.calib, "--recipe", "static_int8", "--json")
    assert ok.returncode == 0, ok.stderr
    model = open_bundle(tmp_path / "h7.ekb").read_model()
    nrf = edgekit.targets.get_profile("nrf52840")
    # the bytes nrf52840 lacked: the same model plus that board's runtime code, minus its flash
    assert len(model) + nrf.options["runtime_code_bytes"] - nrf.flash_bytes == over


def test_float_recipe_on_edgetpu_is_refused(tmp_path, digits, edgekit_cli, cli_error):
    cli_error(edgekit_cli("pack", digits.tflite, "--target", "coral-usb", "-o", tmp_path / "x.ekb",
                          "--recipe", "fp32"), "fully int8", "static_int8")
