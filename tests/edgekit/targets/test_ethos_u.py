"""Ethos-U family: the real ``vela`` CLI, its figures in the report, budgets, bad input."""

from __future__ import annotations

import csv
import dataclasses
import subprocess
from importlib import metadata

import pytest

from edgekit.errors import ConfigError, ModelError
from edgekit.targets import get_profile
from edgekit.targets.ethos_u import NPU_OP, EthosUFamily, parse_vela_stdout, vela_config_file
from edgekit.tflite import model as tfl

U55_FLASH = 2097152



def keras():
    """tf_keras, imported on first use (TensorFlow is slow to import)."""
    import tf_keras

    return tf_keras

@pytest.fixture(scope="module")
def u55():
    return get_profile("ethos-u55-128")


@pytest.fixture(scope="module")
def u65():
    return get_profile("ethos-u65-256")


@pytest.fixture(scope="module")
def large_int8(build_int8, calib):
    """~2.2 MB of int8 weights: over the U55 board's 2 MiB flash, well under the U65 board's."""
    k = keras()
    model = k.Sequential([k.layers.InputLayer(input_shape=(8, 8, 1), batch_size=1),
                          k.layers.Flatten(),
                          k.layers.Dense(1024, activation="relu"),
                          k.layers.Dense(2048, activation="relu"),
                          k.layers.Dense(10)])
    return build_int8(model, calib[:8])


@pytest.fixture(scope="module")
def digits_u55(digits_int8, u55):
    return EthosUFamily().compile(digits_int8, "tflite", u55)


def vela_cli(model: bytes, tmp_path, profile) -> tuple[dict[str, str], str]:
    """An independent run of the vela CLI with the profile's settings: (summary CSV row, stdout)."""
    src = tmp_path / "net.tflite"
    src.write_bytes(model)
    proc = subprocess.run(
        ["vela", str(src), "--accelerator-config", profile.accelerator,
         "--system-config", profile.options["system_config"], "--memory-mode",
         profile.options["memory_mode"],
         "--config", str(vela_config_file()), "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, check=True)
    (summary,) = (tmp_path / "out").glob("net_summary_*.csv")
    with summary.open(newline="") as f:
        return list(csv.DictReader(f))[0], proc.stdout


def test_digits_all_ops_on_the_npu(digits_int8, digits_u55, u55, tmp_path):
    compiled = digits_u55
    report, vela = compiled.report, compiled.report.details["vela"]
    ops = tfl.op_names(digits_int8)
    assert list(report.ops_on_accelerator) == ops and report.ops_on_cpu == ()
    # Vela folds the RESHAPE (a memory-only op) away; every other op is one NPU operator
    assert vela["cpu_ops"] == 0
    assert vela["npu_ops"] == len([op for op in ops if op != "RESHAPE"]) == 5
    assert tfl.op_names(compiled.model) == [NPU_OP]
    row, stdout = vela_cli(digits_int8, tmp_path, u55)
    assert (
        report.sram_bytes == vela["sram_bytes"] == round(float(row["sram_memory_used"]) * 1024) > 0
    )
    assert vela["offchip_flash_bytes"] == round(float(row["off_chip_flash_memory_used"]) * 1024)
    assert vela["cycles_total"] == int(float(row["cycles_total"])) > vela["cycles_npu"] > 0
    assert vela["inference_time_ms"] == pytest.approx(float(row["inference_time"]) * 1000)
    assert vela["macs"] == int(row["nn_macs"]) == 339584  # 8·8·16·9 + 8·8·32·144 + 512·64 + 64·10
    assert parse_vela_stdout(stdout) == {"npu_ops": 5, "cpu_ops": 0}
    assert report.flash_bytes == len(compiled.model) + u55.options["runtime_code_bytes"]
    assert report.fits and report.violations == ()
    assert (vela["accelerator_configuration"], vela["system_config"], vela["memory_mode"]) == \
        ("Ethos_U55_128", "Ethos_U55_High_End_Embedded", "Shared_Sram")
    assert report.details["compile_steps"] == [
        f"vela {metadata.version('ethos-u-vela')} for ethos-u55-128 (Ethos_U55_High_End_Embedded, "
        "Shared_Sram): 5 NPU ops, 0 CPU ops"]
    assert not EthosUFamily.HOST_RUNNABLE
    assert (
        compiled.extra_files["vela_summary.csv"].decode().splitlines()[1].split(",")[1] == "model"
    )


def test_op_vela_cannot_map_stays_on_cpu(build_int8, u55):
    tf = __import__("tensorflow")
    k = keras()
    inp = k.Input((8, 8, 1), batch_size=1)
    x = k.layers.Conv2D(16, 3, padding="same", activation="relu")(inp)
    x = k.layers.Lambda(lambda t: tf.nn.space_to_depth(t, 2))(x)
    x = k.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    model = build_int8(k.Model(inp, k.layers.Dense(10)(k.layers.Flatten()(x))))
    ops = tfl.op_names(model)
    report = EthosUFamily().compile(model, "tflite", u55).report
    assert report.ops_on_cpu == ("SPACE_TO_DEPTH",)
    assert list(report.ops_on_accelerator) == [op for op in ops if op != "SPACE_TO_DEPTH"]
    assert report.details["vela"]["cpu_ops"] == 1


def test_too_large_for_u55_fits_u65(large_int8, u55, u65):
    small = EthosUFamily().compile(large_int8, "tflite", u55).report
    flash = small.flash_bytes
    assert flash == small.details["model_bytes"] + 102400 > U55_FLASH
    assert small.violations == (f"flash: needs {flash} B, ethos-u55-128 has {U55_FLASH} B "
                                f"({flash - U55_FLASH} B over)",)
    assert not small.fits
    large = EthosUFamily().compile(large_int8, "tflite", u65).report
    assert large.fits and large.violations == ()
    assert large.details["vela"]["accelerator_configuration"] == "Ethos_U65_256"
    assert large.details["vela"]["dram_bytes"] > 2_000_000  # Dedicated_Sram: weights in DRAM


def test_sram_budget_says_by_how_much(digits_int8, digits_u55, u55):
    sram = digits_u55.report.sram_bytes
    tight = dataclasses.replace(u55, ram_bytes=sram - 100)
    report = EthosUFamily().compile(digits_int8, "tflite", tight).report
    assert report.violations == (
        f"ram: needs {sram} B, ethos-u55-128 has {sram - 100} B (100 B over)",
    )


def test_float_io_int8_model_is_made_integer(digits_int8_float_io, u55):
    report = EthosUFamily().compile(digits_int8_float_io, "tflite", u55).report
    (rewrite,) = report.details["rewrites"]
    assert (
        rewrite["rewrite"] == "strip_float_io"
        and rewrite["kept"]
        and rewrite["max_diff_lsb"] == 0.0
    )
    assert report.ops_on_cpu == () and report.details["vela"]["cpu_ops"] == 0


def test_float_model_is_refused(digits_float, u55):
    with pytest.raises(ModelError) as err:
        EthosUFamily().compile(digits_float, "tflite", u55)
    assert str(err.value).startswith("Vela needs an int8/int16-quantized TFLite model; got float32 "
                                     "tensors in ops CONV_2D#0, CONV_2D#1")


def test_bad_accelerator_config_names_the_allowed_ones(digits_int8, u55):
    bad = dataclasses.replace(u55, accelerator="ethos-u99-1")
    with pytest.raises(ConfigError) as err:
        EthosUFamily().compile(digits_int8, "tflite", bad)
    msg = str(err.value)
    assert "accelerator: 'ethos-u99-1' is not an Ethos-U accelerator config (allowed: " in msg
    assert "ethos-u55-128" in msg


def test_vela_error_is_a_one_line_model_error(digits_int8, u55):
    bad = dataclasses.replace(u55, options={**u55.options, "system_config": "No_Such_System"})
    with pytest.raises(ModelError) as err:
        EthosUFamily().compile(digits_int8, "tflite", bad)
    msg = str(err.value)
    assert msg.startswith("vela failed: ") and "No_Such_System" in msg and "\n" not in msg
    assert "Traceback" not in msg
