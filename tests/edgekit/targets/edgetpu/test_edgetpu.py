"""Edge TPU family: ops table data, per-op analysis, predicted partition, rewrites, compiler log.

edgetpu_compiler cannot be installed here (x86-64 Debian package from the Coral apt repo, not
reachable), so the compile step is tested two ways: absent (the report says it is pending) and
through a stand-in executable that speaks the compiler's command line and prints a log in the
documented format, to check how edgekit calls it and reads its figures.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib
from ai_edge_litert import schema_py_generated as schema

from edgekit.errors import ConfigError, ModelError
from edgekit.targets import edgetpu, get_profile
from edgekit.targets.edgetpu import EdgeTpuFamily, analyze, parse_compiler_log, partition
from edgekit.tflite import model as tfl
from edgekit_agent.runtime import Runner, load_backend

# Stdout of edgetpu_compiler -s for a partly mapped model, in the format the Coral docs and
# users' reports show (compiler 16.0), followed by the operation table of its log file.
PARTIAL_LOG = """\
Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Model compiled successfully in 917 ms.

Input model: model.tflite
Input size: 5.58MiB
Output model: model_edgetpu.tflite
Output size: 5.63MiB
On-chip memory used for caching model parameters: 21.75KiB
On-chip memory remaining for caching model parameters: 7.45MiB
Off-chip memory used for streaming uncached model parameters: 3.00KiB
Number of Edge TPU subgraphs: 1
Total number of operations: 23
Operation log: model_edgetpu.log

Model successfully compiled but not all operations are supported by the Edge TPU. A percentage of the model will instead run on the CPU, which is slower. If possible, consider updating your model to use only operations supported by the Edge TPU. For details, visit g.co/coral/model-reqs.
Number of operations that will run on Edge TPU: 6
Number of operations that will run on CPU: 17

Operator                       Count      Status

CONV_2D                        4          Mapped to Edge TPU
MAX_POOL_2D                    2          Mapped to Edge TPU
QUANTIZE                       1          Operation is otherwise supported, but not mapped due to some unspecified limitation
TRANSPOSE_CONV                 3          Operation not supported
CONV_2D                        8          More than one subgraph is not supported
ADD                            4          More than one subgraph is not supported
DEQUANTIZE                     1          Operation is working on an unsupported data type
"""  # noqa: E501 (verbatim edgetpu_compiler output: its lines are as long as it prints them)

# A fully mapped model: the compiler prints no per-device counts, only the operator table.
FULL_LOG = """\
Edge TPU Compiler version 15.0.340273435
Input: mnist7.tflite
Output: mnist7_edgetpu.tflite

Operator                       Count      Status

SOFTMAX                        1          Mapped to Edge TPU
FULLY_CONNECTED                2          Mapped to Edge TPU
RESHAPE                        1          Mapped to Edge TPU
CONV_2D                        2          Mapped to Edge TPU
MAX_POOL_2D                    2          Mapped to Edge TPU
"""



def keras():
    """tf_keras, imported on first use (TensorFlow is slow to import)."""
    import tf_keras

    return tf_keras

@pytest.fixture
def no_compiler(monkeypatch, tmp_path):
    """PATH without edgetpu_compiler (true on this machine; made explicit for any host)."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))


@pytest.fixture(scope="module")
def coral():
    return get_profile("coral-usb")


def with_options(profile, **options):
    return dataclasses.replace(profile, options={**profile.options, **options})


def conv_block(*middle):
    """Conv → [middle layers] → Conv → Flatten → Dense on the 8x8 digits input."""
    k = keras()
    inp = k.Input((8, 8, 1), batch_size=1)
    x = k.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    x = k.layers.Conv2D(8, 3, padding="same")(x)
    for layer in middle:
        x = layer(x)
    x = k.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = k.layers.Flatten()(x)
    return k.Model(inp, k.layers.Dense(10)(x))


def run_float(model: bytes, x: np.ndarray) -> tuple[np.ndarray, float]:
    runner = Runner(load_backend(model, "tflite"))
    out = np.concatenate([runner([xi[None]])[0] for xi in x])
    return out, runner.outputs[0].scale


# --- the ops table as data --------------------------------------------------------------------

def test_ops_table_names_real_builtins_and_covers_the_documented_ops():
    table = edgetpu.load_ops_table()
    builtin_names = {k for k in vars(schema.BuiltinOperator) if not k.startswith("_")}
    covered = {b for rule in table.rules for b in rule.builtins}
    assert covered <= builtin_names, covered - builtin_names
    documented = {"ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D",
                  "FULLY_CONNECTED", "L2_NORMALIZATION", "LOGISTIC", "MAX_POOL_2D", "MAXIMUM",
                  "MEAN", "MINIMUM", "MUL", "PAD", "RELU", "RELU6", "RELU_N1_TO_1", "RESHAPE",
                  "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "SOFTMAX", "SUB", "TANH"}
    assert documented <= covered
    assert table.source["url"].startswith("https://coral.ai/docs/edgetpu/models-intro")
    assert table.rule_for("MAX_POOL_2D", 14).checks == ({"rule": "no_fused_activation"},)
    # rows split by runtime version: Mean is x/y-only up to runtime 12, x/y/z from 13
    assert table.rule_for("MEAN", 12).checks[0]["dims"] == ["y", "x"]
    assert table.rule_for("MEAN", 14).checks[0]["dims"] == ["y", "x", "z"]
    assert table.rule_for("PRELU", 12) is None and table.first_runtime("PRELU") == 13
    assert table.min_compiler(14) == "16.0" and table.min_compiler(12) == "2.0"


def test_ops_table_rejects_an_unknown_check(tmp_path):
    raw = (Path(edgetpu.OPS_TABLE_PATH)).read_text()
    bad = tmp_path / "ops.toml"
    bad.write_text(raw.replace('rule = "same_dilation"', 'rule = "same_dilatation"', 1))
    tomllib.loads(bad.read_text())  # still valid TOML: the family's own validation must catch it
    with pytest.raises(ConfigError,
                       match="unknown check.*same_dilatation.*allowed: .*same_dilation"):
        edgetpu.load_ops_table(bad)


# --- analysis and partition ---------------------------------------------------------------------

def test_digits_int8_maps_entirely(digits_int8, coral, no_compiler):
    compiled = EdgeTpuFamily().compile(digits_int8, "tflite", coral)
    report = compiled.report
    ops = tfl.op_names(digits_int8)
    assert list(report.ops_on_accelerator) == ops and len(ops) == 6
    assert report.ops_on_cpu == () and report.fits
    assert report.details["first_fallback"] is None
    assert report.details["compile_step"] == edgetpu.COMPILE_PENDING
    assert report.details["compiler"] == "pending"
    assert report.details["compile_steps"] == [edgetpu.COMPILE_PENDING]
    assert EdgeTpuFamily().HOST_RUNNABLE  # the packer can run what compile() returned
    assert compiled.model == digits_int8 and report.flash_bytes == len(digits_int8)
    # all weights and biases of the six ops, each buffer once
    m = tfl.load(digits_int8)
    consts = {m.subgraphs[0].tensors[i].buffer: tfl.tensor_array(m, i).nbytes
              for op in m.subgraphs[0].operators for i in op.inputs
              if i >= 0 and tfl.tensor_array(m, i) is not None}
    assert report.details["param_bytes"] == sum(consts.values()) > 30000
    assert report.details["notes"] == []


def test_unmappable_op_in_the_middle_sends_the_tail_to_cpu(build_int8, coral, no_compiler):
    tf_nn = __import__("tensorflow").nn
    k = keras()
    hard_swish = k.layers.Lambda(lambda t: t * tf_nn.relu6(t + 3.0) / 6.0)
    model = build_int8(conv_block(hard_swish))
    ops = tfl.op_names(model)
    cut = ops.index("HARD_SWISH")
    assert 0 < cut < len(ops) - 1
    report = EdgeTpuFamily().compile(model, "tflite", coral).report
    assert list(report.ops_on_accelerator) == ops[:cut]
    assert list(report.ops_on_cpu) == ops[cut:]
    first = report.details["first_fallback"]
    assert first["index"] == cut and first["op"] == "HARD_SWISH"
    assert "not in the Edge TPU supported-operations table" in first["reason"]
    tail = [o for o in report.details["ops"] if o["on"] == "cpu"]
    assert [o["index"] for o in tail] == list(range(cut, len(ops)))
    assert all(o["reason"] == edgetpu.TAIL_REASON for o in tail[1:])
    assert report.details["rewrites"] == []


def test_tensor_with_four_non_unit_dims_is_the_cut(build_int8, coral, no_compiler):
    k = keras()
    model = build_int8(conv_block(k.layers.Reshape((2, 4, 8, 8)),
                                  k.layers.Lambda(lambda t: t * 2.0),
                                  k.layers.Reshape((8, 8, 8))))
    m = tfl.load(model)
    sg = m.subgraphs[0]
    shapes = [[int(s) for s in sg.tensors[op.outputs[0]].shape] for op in sg.operators]
    cut = next(i for i, s in enumerate(shapes) if any(d > 1 for d in s[:-3]))
    assert shapes[cut] == [1, 2, 4, 8, 8]
    report = EdgeTpuFamily().compile(model, "tflite", coral).report
    ops = tfl.op_names(model)
    assert list(report.ops_on_accelerator) == ops[:cut] and list(report.ops_on_cpu) == ops[cut:]
    first = report.details["first_fallback"]
    assert first["index"] == cut
    assert "unsupported rank" in first["reason"] and "[1, 2, 4, 8, 8]" in first["reason"]


@pytest.fixture(scope="module")
def fixable(build_int8):
    """Conv → PReLU → MaxPool+ReLU (fused by the converter) → LeakyReLU → Conv → Dense."""
    k = keras()
    return build_int8(conv_block(k.layers.PReLU(shared_axes=[1, 2]), k.layers.MaxPool2D(2),
                                 k.layers.ReLU(), k.layers.LeakyReLU(0.25)))


def test_fused_pool_activation_and_leaky_relu_are_rewritten(fixable, calib, coral, no_compiler):
    before = partition(analyze(fixable))
    assert before.first_fallback.op == "MAX_POOL_2D"
    assert before.first_fallback.rule == "no_fused_activation"
    assert "has a fused RELU activation" in before.first_fallback.reason
    compiled = EdgeTpuFamily().compile(fixable, "tflite", coral)
    report = compiled.report
    rewrites = report.details["rewrites"]
    assert [r["rewrite"] for r in rewrites] == ["split_fused_activation", "leaky_relu_to_prelu"]
    assert all(r["kept"] for r in rewrites)
    assert report.details["compile_steps"] == [*rewrites[0]["changes"], *rewrites[1]["changes"],
                                               edgetpu.COMPILE_PENDING]
    assert rewrites[0]["max_diff_lsb"] == 0.0 and rewrites[1]["max_diff_lsb"] <= 1.0
    ops = tfl.op_names(compiled.model)
    assert report.ops_on_cpu == () and list(report.ops_on_accelerator) == ops
    assert "LEAKY_RELU" not in ops and ops.count("PRELU") == 2, ops
    assert ops[ops.index("MAX_POOL_2D") + 1] == "RELU"
    # on real digits the rewritten model stays within one output step of the original
    y0, scale = run_float(fixable, calib)
    y1, _ = run_float(compiled.model, calib)
    assert round(float(np.abs(y0 - y1).max() / scale), 3) <= 1.0


def test_rewrites_are_checked_on_calibration_data_when_given(fixable, calib, coral, no_compiler):
    from edgekit.dataset import Dataset

    spec = load_backend(fixable, "tflite").inputs[0]
    data = Dataset(inputs=(dataclasses.replace(spec, dtype="float32", scale=None,
                                               zero_point=None),),
                   arrays=(calib,))
    report = EdgeTpuFamily().compile(fixable, "tflite", coral, calib=data).report
    rewrites = report.details["rewrites"]
    assert [r["checked_on"] for r in rewrites] == ["16 calibration samples"] * 2
    assert rewrites[0]["max_diff_lsb"] == 0.0 and rewrites[1]["max_diff_lsb"] <= 1.0
    assert report.ops_on_cpu == ()


def test_runtime_12_has_no_prelu(fixable, coral, no_compiler):
    report = EdgeTpuFamily().compile(fixable, "tflite",
                                     with_options(coral, runtime_version=12)).report
    ops = tfl.op_names(fixable)
    cut = ops.index("PRELU")
    # PRELU cuts the graph before the fixable ops, so nothing is rewritten
    assert report.details["rewrites"] == []
    assert report.details["first_fallback"] == {
        "index": cut, "op": "PRELU",
        "reason": "PRELU needs Edge TPU runtime >= 13 (compiler 15.0); target runtime is 12"}
    assert list(report.ops_on_accelerator) == ops[:cut] == ["CONV_2D", "CONV_2D"]
    assert report.details["min_compiler_version"] == "2.0"


def test_float_io_wrappers_are_stripped(digits_int8_float_io, calib, coral, no_compiler):
    model = digits_int8_float_io
    ops = tfl.op_names(model)
    assert ops[0] == "QUANTIZE" and ops[-1] == "DEQUANTIZE"
    assert partition(analyze(model)).first_fallback.index == 0  # nothing would map as it is
    compiled = EdgeTpuFamily().compile(model, "tflite", coral)
    report = compiled.report
    assert report.details["rewrites"][0]["rewrite"] == "strip_float_io"
    assert report.details["rewrites"][0]["max_diff_lsb"] == 0.0
    assert list(report.ops_on_accelerator) == ops[1:-1] and report.ops_on_cpu == ()
    backend = load_backend(compiled.model, "tflite")
    assert backend.inputs[0].dtype == "int8" and backend.outputs[0].dtype == "int8"
    y0, _ = run_float(model, calib[:32])
    y1, scale = run_float(compiled.model, calib[:32])
    assert np.abs(y0 - y1).max() == 0.0  # the same integer graph, now fed and read in int8


def test_parameters_beyond_the_cache_are_a_note_not_a_violation(digits_int8, coral, no_compiler):
    small_cache = with_options(coral, onchip_param_bytes=16384)
    report = EdgeTpuFamily().compile(digits_int8, "tflite", small_cache).report
    streamed = report.details["param_bytes"] - 16384
    assert streamed > 0 and report.fits
    assert report.details["notes"] == [
        f"parameters exceed the 16384 B on-chip cache: {streamed} B stream from host memory "
        "every inference (predicted); slower, not a failure"]


def test_flash_budget_of_the_host(digits_int8, coral, no_compiler):
    tiny = dataclasses.replace(coral, flash_bytes=40000)
    report = EdgeTpuFamily().compile(digits_int8, "tflite", tiny).report
    over = len(digits_int8) - 40000
    assert report.violations == (
        f"flash: needs {len(digits_int8)} B, coral-usb has 40000 B ({over} B over)",
    )


# --- bad input ------------------------------------------------------------------------------------

def test_float_model_is_refused(digits_float, coral, no_compiler):
    with pytest.raises(ModelError) as err:
        EdgeTpuFamily().compile(digits_float, "tflite", coral)
    msg = str(err.value)
    assert msg.startswith(
        "Edge TPU needs a fully int8-quantized model; got float32 tensors in ops CONV_2D#0"
    )
    assert "\n" not in msg


def test_onnx_and_garbage_are_refused(coral, no_compiler):
    with pytest.raises(ModelError, match="TFLite models only; got 'onnx'"):
        EdgeTpuFamily().compile(b"\x08\x07", "onnx", coral)
    with pytest.raises(ModelError, match="not a TFLite flatbuffer"):
        EdgeTpuFamily().compile(b"not a model at all", "tflite", coral)


# --- edgetpu_compiler -----------------------------------------------------------------------------

def test_parse_partial_compiler_log():
    figures = parse_compiler_log(PARTIAL_LOG)
    assert figures["version"] == "16.0.384591198"
    assert figures["onchip_param_bytes_used"] == round(21.75 * 1024) == 22272
    assert figures["onchip_param_bytes_remaining"] == round(7.45 * 1024 ** 2)
    assert figures["offchip_param_bytes"] == 3072
    assert figures["edgetpu_subgraphs"] == 1
    assert (figures["total_ops"], figures["ops_mapped"], figures["ops_unmapped"]) == (23, 6, 17)
    rows = figures["operations"]
    assert sum(r["count"] for r in rows) == 23
    assert rows[2] == {"op": "QUANTIZE", "count": 1, "status": "Operation is otherwise supported, "
                       "but not mapped due to some unspecified limitation"}


def test_parse_fully_mapped_log_derives_counts_from_the_table():
    figures = parse_compiler_log(FULL_LOG)
    assert figures["version"] == "15.0.340273435"
    assert (figures["total_ops"], figures["ops_mapped"], figures["ops_unmapped"]) == (8, 8, 0)
    assert "offchip_param_bytes" not in figures


def test_compiler_on_path_is_run_and_its_figures_reported(digits_int8, coral,
                                                          tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "log.txt").write_text(PARTIAL_LOG)
    fake = bin_dir / "edgetpu_compiler"
    fake.write_text(f"""#!{sys.executable}
import sys, pathlib
args = sys.argv[1:]
pathlib.Path({str(tmp_path / "argv.txt")!r}).write_text(" ".join(args))
out = pathlib.Path(args[args.index("--out_dir") + 1])
src = pathlib.Path(args[-1])
(out / (src.stem + "_edgetpu.tflite")).write_bytes(b"EDGETPU:" + src.read_bytes())
print(pathlib.Path({str(tmp_path / "log.txt")!r}).read_text())
""")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(bin_dir) + os.pathsep + os.environ["PATH"])
    compiled = EdgeTpuFamily().compile(digits_int8, "tflite", coral)
    argv = (tmp_path / "argv.txt").read_text().split()
    assert argv[argv.index("--min_runtime_version") + 1] == "14" and "--show_operations" in argv
    assert compiled.model == b"EDGETPU:" + digits_int8
    report = compiled.report
    assert report.sram_bytes == 22272 and report.flash_bytes == len(digits_int8) + 8
    assert report.details["compiler"]["ops_mapped"] == 6
    assert report.details["compile_step"] == "done: edgetpu_compiler 16.0.384591198"
    assert not EdgeTpuFamily().HOST_RUNNABLE  # compiled output needs the Edge TPU delegate
    assert report.details["notes"][0].startswith(
        "parameters exceed the 8388608 B on-chip cache: "
        "3072 B stream from host memory every inference (compiler)"
    )


def test_compiler_failure_is_a_one_line_model_error(digits_int8, coral, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "edgetpu_compiler"
    fake.write_text(
        "#!/bin/sh\necho 'Edge TPU Compiler version 16.0.384591198'\n"
        "echo \"ERROR: Didn't find op for builtin opcode 'RSQRT' version '2'\"\nexit 1\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(ModelError) as err:
        EdgeTpuFamily().compile(digits_int8, "tflite", coral)
    assert str(err.value) == ("edgetpu_compiler failed: ERROR: Didn't find op for builtin opcode "
                              "'RSQRT' version '2'")
