"""MCU family: TFLM op set, measured arena, budgets, rewrites, TFLM vs LiteRT — all from real
runs."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema

from edgekit.dataset import Dataset
from edgekit.errors import ModelError, UnsupportedOpError
from edgekit.targets import get_profile
from edgekit.targets.mcu import (
    McuFamily,
    compare_tflm_litert,
    measure_arena,
    probe_tflm_op_set,
    rewrite_for_tflm,
    tflm_op_set,
)
from edgekit.tflite import model as tfl
from edgekit_agent.runtime import load_backend, quantize

_RUN_IN_TFLM = r"""
import json, sys
import numpy as np
from tflite_micro.python.tflite_micro import runtime as tflm
shape, dtype = json.loads(sys.argv[3])
it = tflm.Interpreter.from_bytes(open(sys.argv[1], "rb").read(), arena_size=int(sys.argv[2]))
it.set_input(np.zeros(shape, dtype), 0)
it.invoke()
"""


def tflm_runs(model: bytes, arena: int) -> bool:
    """Allocate and invoke in the real TFLM interpreter with exactly ``arena`` bytes, in a child
    process: TFLM may crash (SIGSEGV) instead of failing cleanly when the arena is too small."""
    x = load_backend(model, "tflite").inputs[0]
    with tempfile.NamedTemporaryFile(suffix=".tflite") as f:
        f.write(model)
        f.flush()
        proc = subprocess.run([sys.executable, "-c", _RUN_IN_TFLM, f.name, str(arena),
                               json.dumps([list(x.shape), x.dtype])], capture_output=True)
    return proc.returncode == 0


def keras():
    import tf_keras

    return tf_keras


def with_op_replaced(model: bytes, old: int, new: int) -> bytes:
    m = tfl.load(model)
    for code in m.operatorCodes:
        if max(code.builtinCode, code.deprecatedBuiltinCode) == old:
            code.builtinCode, code.deprecatedBuiltinCode, code.version = new, min(new, 127), 1
    return tfl.save(m)


@pytest.fixture(scope="module")
def compiled_digits(digits_int8_trained, calib):
    data = Dataset((load_backend(digits_int8_trained, "tflite").inputs[0],), (calib,))
    return McuFamily().compile(digits_int8_trained, "tflite", get_profile("nrf52840"), calib=data)


@pytest.fixture(scope="module")
def relu_0_to_1_model(build_int8):
    """Conv → RELU_0_TO_1 → Dense, int8: a sigmoid model whose LOGISTIC (output scale 1/256,
    zero point -128, i.e. [0, 1)) is swapped for RELU_0_TO_1, which LiteRT runs and TFLM lacks."""
    import tensorflow as tf

    k = keras()
    tf.random.set_seed(3)
    model = k.Sequential([k.layers.InputLayer(input_shape=(8, 8, 1), batch_size=1),
                          k.layers.Conv2D(4, 3, padding="same"), k.layers.Activation("sigmoid"),
                          k.layers.Flatten(), k.layers.Dense(10)])
    return with_op_replaced(build_int8(model), schema.BuiltinOperator.LOGISTIC,
                            schema.BuiltinOperator.RELU_0_TO_1)


# ---------------------------------------------------------------- op set

def test_op_table_is_what_the_installed_interpreter_resolves():
    shipped, probed = tflm_op_set(), probe_tflm_op_set()
    assert shipped == probed
    assert len(shipped.builtin) >= 90
    for op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "SOFTMAX", "RELU", "MINIMUM"):
        assert op in shipped.builtin
    for op in ("RELU_0_TO_1", "RELU_N1_TO_1", "GELU", "TILE"):
        assert op not in shipped.builtin
    assert shipped.builtin["CONV_2D"] == "AddConv2D" and shipped.builtin["PADV2"] == "AddPadV2"
    assert shipped.custom["TFLite_Detection_PostProcess"] == "AddDetectionPostprocess"


# ---------------------------------------------------------------- arena and report

def test_arena_is_the_smallest_that_allocates_and_invokes(compiled_digits):
    report = compiled_digits.report
    measured = report.details["arena_measured_bytes"]
    align = report.details["arena_alignment"]
    assert align == 16
    assert tflm_runs(compiled_digits.model, measured)
    assert not tflm_runs(compiled_digits.model, measured - 1)
    assert not tflm_runs(compiled_digits.model, measured - align)
    assert report.arena_bytes == -(-measured // align) * align + align
    assert tflm_runs(compiled_digits.model, report.arena_bytes)
    # TFLM's recording allocator says the same
    assert report.details["arena_recorded_bytes"] == measured
    assert report.details["arena_recorded_agrees"] is True
    assert 2_000 < measured < 20_000


def test_report_figures_for_digits_on_nrf52840(compiled_digits, digits_int8_trained):
    report = compiled_digits.report
    ops = tfl.op_names(digits_int8_trained)
    assert list(report.ops_on_cpu) == ops == ["CONV_2D", "CONV_2D", "MAX_POOL_2D", "RESHAPE",
                                              "FULLY_CONNECTED", "FULLY_CONNECTED"]
    assert report.ops_on_accelerator == ()
    assert report.flash_bytes == len(digits_int8_trained) + 81920
    assert report.details["io_buffer_bytes"] == 8 * 8 * 1 + 10  # int8 image in, int8 logits out
    assert report.sram_bytes == report.arena_bytes + 74
    assert report.fits and report.violations == ()
    assert report.details["precision"] == "int8"
    assert set(compiled_digits.extra_files) == {"mcu/model_data.c", "mcu/model_data.h",
                                                "mcu/op_resolver.h", "mcu/op_resolver.cc"}
    d = report.to_dict()
    for key in ("ops_on_accelerator", "ops_on_cpu", "arena_bytes", "sram_bytes", "flash_bytes",
                "fits", "violations", "arena_measured_bytes", "tflm_vs_litert_max_lsb"):
        assert key in d


def test_tflm_matches_litert_within_one_lsb(compiled_digits, digits_int8_trained, digits):
    x = np.load(digits.calib)["image"]
    assert x.shape == (200, 8, 8, 1)
    assert compare_tflm_litert(digits_int8_trained, [x], limit=200) <= 1
    assert compiled_digits.report.details["tflm_vs_litert_max_lsb"] <= 1
    assert compiled_digits.report.details["tflm_vs_litert_inputs"] == "calibration"
    # ≤ 1 LSB means something: the outputs themselves span far more than that
    litert = load_backend(digits_int8_trained, "tflite")
    outs = np.stack([litert.run([quantize(x[i:i + 1], litert.inputs[0])])[0] for i in range(200)])
    assert int(outs.max()) - int(outs.min()) > 100


def test_measure_arena_finds_the_edge(digits_int8):
    arena = measure_arena(digits_int8)
    assert tflm_runs(digits_int8, arena.measured_bytes)
    assert not tflm_runs(digits_int8, arena.measured_bytes - 1)
    assert arena.recorded_head_bytes + arena.recorded_tail_bytes == arena.recorded_bytes
    assert 3 <= arena.probes <= 40


# ---------------------------------------------------------------- budgets

def test_model_too_large_for_nrf52840_fits_stm32h7(build_int8):
    import tensorflow as tf

    k = keras()
    tf.random.set_seed(4)
    wide = k.Sequential([k.layers.InputLayer(input_shape=(8, 8, 1), batch_size=1),
                         k.layers.Conv2D(16, 3, padding="same", activation="relu"),
                         k.layers.Conv2D(32, 3, padding="same", activation="relu"),
                         k.layers.MaxPool2D(2), k.layers.Flatten(),
                         k.layers.Dense(1600, activation="relu"), k.layers.Dense(10)])
    model = build_int8(wide)  # about 820 KB of int8 weights
    assert len(model) > 786432 - 81920
    small = McuFamily().compile(model, "tflite", get_profile("nrf52840"))
    over = len(model) + 81920 - 786432
    assert not small.report.fits
    assert small.report.violations == (
        f"flash: needs {len(model) + 81920} B, nrf52840 has 786432 B ({over} B over)",)
    big = McuFamily().compile(model, "tflite", get_profile("stm32h7"))
    assert big.report.fits and big.report.violations == ()
    assert big.report.flash_bytes == len(model) + 102400
    assert big.report.arena_bytes == small.report.arena_bytes  # same model, same arena
    # TFLM crashes or fails at some smaller arenas of this model; the bisection still finds the edge
    d = big.report.details
    assert tflm_runs(model, d["arena_measured_bytes"]) and not tflm_runs(
        model, d["arena_measured_bytes"] - 1
    )
    # TFLM's recording allocator only counts what stays allocated: it is a lower bound
    assert d["arena_recorded_bytes"] <= d["arena_measured_bytes"]
    assert d["arena_recorded_agrees"] == (d["arena_recorded_bytes"] == d["arena_measured_bytes"])


def test_activations_too_large_for_nrf52840_ram(build_int8):
    import tensorflow as tf

    k = keras()
    tf.random.set_seed(5)
    model = k.Sequential([k.layers.InputLayer(input_shape=(64, 64, 3), batch_size=1),
                          k.layers.Conv2D(32, 3, padding="same", activation="relu"),
                          k.layers.Conv2D(16, 3, padding="same", activation="relu"),
                          k.layers.GlobalAveragePooling2D(), k.layers.Dense(4)])
    data = np.random.default_rng(0).random((16, 64, 64, 3), dtype=np.float32)
    tflite = build_int8(model, data)
    nrf = McuFamily().compile(tflite, "tflite", get_profile("nrf52840"))
    ram = nrf.report.sram_bytes
    assert ram > 196608 and nrf.report.arena_bytes > 64 * 64 * 32  # a 64x64x32 int8 map lives in it
    assert nrf.report.violations == (
        f"ram: needs {ram} B, nrf52840 has 196608 B ({ram - 196608} B over)",
    )
    assert McuFamily().compile(tflite, "tflite", get_profile("esp32-s3")).report.fits


# ---------------------------------------------------------------- ops TFLM lacks

def test_relu_0_to_1_is_rewritten_and_matches(relu_0_to_1_model, calib):
    assert "RELU_0_TO_1" in tfl.op_names(relu_0_to_1_model)
    assert not tflm_runs(relu_0_to_1_model, 1 << 20)  # TFLM itself refuses the original
    compiled = McuFamily().compile(relu_0_to_1_model, "tflite", get_profile("nrf52840"))
    ops = list(compiled.report.ops_on_cpu)
    assert ops == ["CONV_2D", "RELU", "MINIMUM", "RESHAPE", "FULLY_CONNECTED"]
    assert compiled.report.details["rewrites"] == [
        "RELU_0_TO_1#1: replaced by RELU + MINIMUM(1) (int8)"
    ]
    # the rewrite is exact in LiteRT, and TFLM on the rewrite stays within 1 LSB of LiteRT on the
    # original
    before, after = (
        load_backend(relu_0_to_1_model, "tflite"),
        load_backend(compiled.model, "tflite"),
    )
    micro = load_backend(compiled.model, "tflite", prefer_micro=True, arena_size=1 << 20)
    worst_exact, worst_micro = 0, 0
    for i in range(len(calib)):
        q = quantize(calib[i:i + 1], before.inputs[0])
        ref = before.run([q])[0].astype(int)
        worst_exact = max(worst_exact, int(np.abs(after.run([q])[0].astype(int) - ref).max()))
        worst_micro = max(worst_micro, int(np.abs(micro.run([q])[0].astype(int) - ref).max()))
    assert worst_exact == 0
    assert worst_micro <= 1


def test_rewrite_leaves_supported_models_alone(digits_int8):
    model, notes = rewrite_for_tflm(digits_int8)
    assert model == digits_int8 and notes == []


def test_op_without_kernel_or_rewrite_is_rejected_by_name(build_int8):
    import tensorflow as tf

    k = keras()
    tf.random.set_seed(2)
    model = k.Sequential([k.layers.InputLayer(input_shape=(8, 8, 1), batch_size=1),
                          k.layers.Conv2D(4, 3, padding="same"), k.layers.Activation("gelu"),
                          k.layers.Flatten(), k.layers.Dense(10)])
    tflite = build_int8(model)
    assert "GELU" in tfl.op_names(tflite)
    with pytest.raises(UnsupportedOpError, match=r"TFLM has no kernel for GELU"):
        McuFamily().compile(tflite, "tflite", get_profile("stm32h7"))


# ---------------------------------------------------------------- dtypes and formats

def test_float_model_runs_where_the_profile_lists_float32(digits):
    model = digits.tflite.read_bytes()
    compiled = McuFamily().compile(model, "tflite", get_profile("stm32h7"))
    d = compiled.report.details
    assert d["precision"] == "float32"
    assert d["tflm_vs_litert_max_abs"] < 1e-4
    assert "tflm_vs_litert_max_lsb" not in d
    assert tflm_runs(model, d["arena_measured_bytes"]) and not tflm_runs(
        model, d["arena_measured_bytes"] - 1
    )
    int8_only = dataclasses.replace(get_profile("stm32h7"), dtypes=("int8",))
    with pytest.raises(ModelError, match="computes in float32, which stm32h7 does not run"):
        McuFamily().compile(model, "tflite", int8_only)


def test_onnx_is_refused(digits):
    with pytest.raises(ModelError, match="runs TFLite models"):
        McuFamily().compile(digits.onnx.read_bytes(), "onnx", get_profile("stm32h7"))
