"""Scalar, integer, constant and recurrent-state inputs, and control flow (a streaming VAD-like
ONNX model: scalar int64 `sr`, float `state` in / `stateN` out, an If on `sr`)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

import edgekit
from edgekit.dataset import load_dataset
from edgekit.errors import CalibrationError, ConfigError
from edgekit.packer.evaluate import make_runner
from edgekit.packer.ingest import describe
from edgekit.packer.inputs import (
    control_flow_nodes,
    freeze_input_values,
    state_pairs,
    with_fed_back_state,
)
from edgekit_agent.bundle.reader import open_bundle
from edgekit_agent.store.slots import BundleStore

FRAME, HIDDEN = 64, 32


def vad_model() -> bytes:
    """x (1,64) float, state (1,32) float, sr [] int64 -> prob (1,1), stateN (1,32).
    sr == 16000 passes x through, any other rate doubles it (an If on sr)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(a, n) for n, a in (
        ("W", rng.normal(0, .3, (FRAME, HIDDEN)).astype(np.float32)),
        ("U", rng.normal(0, .3, (HIDDEN, HIDDEN)).astype(np.float32)),
        ("V", rng.normal(0, .3, (HIDDEN, 1)).astype(np.float32)),
        ("sr16", np.array(16000, np.int64)), ("two", np.array(2.0, np.float32)))]
    branch = lambda name, node: helper.make_graph(  # noqa: E731
        [node], name, [], [helper.make_tensor_value_info(node.output[0], T.FLOAT, [1, FRAME])])
    nodes = [
        helper.make_node("Equal", ["sr", "sr16"], ["is16"]),
        helper.make_node("If", ["is16"], ["xs"], name="rate_switch",
                         then_branch=branch("then", helper.make_node("Identity", ["x"], ["t"])),
                         else_branch=branch("else", helper.make_node("Mul", ["x", "two"], ["e"]))),
        helper.make_node("MatMul", ["xs", "W"], ["a"]),
        helper.make_node("MatMul", ["state", "U"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["c"]),
        helper.make_node("Tanh", ["c"], ["stateN"]),
        helper.make_node("MatMul", ["stateN", "V"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["prob"]),
    ]
    graph = helper.make_graph(
        nodes, "vad",
        [helper.make_tensor_value_info("x", T.FLOAT, [1, FRAME]),
         helper.make_tensor_value_info("state", T.FLOAT, [1, HIDDEN]),
         helper.make_tensor_value_info("sr", T.INT64, [])],
        [helper.make_tensor_value_info("prob", T.FLOAT, [1, 1]),
         helper.make_tensor_value_info("stateN", T.FLOAT, [1, HIDDEN])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


@pytest.fixture(scope="module")
def vad(tmp_path_factory):
    d = tmp_path_factory.mktemp("vad")
    (d / "vad.onnx").write_bytes(vad_model())
    rng = np.random.default_rng(1)
    t = np.arange(200 * FRAME, dtype=np.float32).reshape(200, FRAME)
    x = (np.sin(t / 7.0) * rng.uniform(0.2, 1.0, (200, 1))).astype(np.float32)
    # no `state` array: it is recurrent, so the packer feeds stateN back from zeros
    np.savez(d / "calib.npz", x=x, sr=np.full(200, 16000, np.int64))
    return d


def test_scalar_int_and_state_inputs_pack_for_a_cpu_target(tmp_path, vad):
    out = tmp_path / "vad.ekb"
    result = edgekit.pack(str(vad / "vad.onnx"), "rpi4", out, calib=str(vad / "calib.npz"))
    m = open_bundle(out).manifest
    assert m.model.format == "onnx"  # If runs in ONNX Runtime, not through onnx2tf
    assert {s.name: (list(s.shape), s.dtype) for s in m.primary.inputs}["sr"] == ([], "int64")
    details = [s.detail for s in m.primary.recipe if s.step == "doctor"]
    assert any("control flow (If node 'rate_switch')" in d for d in details)
    assert any("stateN -> state" in n for n in m.notes)
    assert result.chosen[0].recipe.name == "fp16"
    assert m.primary.fidelity.min_sqnr_db > 40
    assert m.model.size_bytes < 0.7 * (vad / "vad.onnx").stat().st_size
    # the device's own self-test runs the scalar input too
    installed = BundleStore(tmp_path / "store").install(out)
    assert installed.selftest.vectors == 4 and installed.selftest.max_abs_error < 1e-3


def test_state_is_fed_back_from_the_float_model(vad):
    model = vad_model()
    info = describe(model, "onnx")
    pairs = state_pairs(info.inputs, info.outputs)
    assert pairs == (("state", "stateN"),)
    data_inputs = [s for s in info.inputs if s.name != "state"]
    data = load_dataset(vad / "calib.npz", data_inputs)
    runner = make_runner(model, "onnx")
    full = with_fed_back_state(data, info.inputs, info.outputs, pairs, runner)
    states = full.arrays[[s.name for s in full.inputs].index("state")]
    assert np.all(states[0] == 0) and np.abs(states[1:]).mean() > 0.1
    for i in (0, 57, 198):  # step i's stateN is step i+1's state
        _, state_n = runner(full.sample(i))
        np.testing.assert_allclose(states[i + 1], state_n.reshape(-1), atol=1e-6)


def test_given_state_pair_is_checked():
    info = describe(vad_model(), "onnx")
    with pytest.raises(ConfigError, match="--state"):
        state_pairs(info.inputs, info.outputs, [("state", "prob")])
    assert state_pairs(info.inputs, info.outputs, [("state", "stateN")]) == (("state", "stateN"),)


@pytest.mark.parametrize("target", ["coral-usb", "stm32h7"])
def test_control_flow_is_refused_by_name_for_tflite_only_targets(tmp_path, vad, target):
    out = tmp_path / "vad.ekb"
    proc = subprocess.run([sys.executable, "-m", "edgekit.cli", "pack", str(vad / "vad.onnx"),
                           "--target", target, "-o", str(out), "--calib", str(vad / "calib.npz")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the model uses control flow")
    assert "If node 'rate_switch'" in lines[0] and f"{target} runs TFLite only" in lines[0]
    assert not out.exists()


def test_input_value_freezes_the_rate_and_generated_data_never_stands_in_for_it(tmp_path, vad):
    frozen, steps = freeze_input_values(vad_model(), {"sr": 16000})
    assert steps == ["froze input sr = 16000 (int64, --input-value)"]
    assert [s.name for s in describe(frozen, "onnx").inputs] == ["x", "state"]
    with pytest.raises(CalibrationError, match="input 'sr' is int64.*--input-value sr=VALUE"):
        edgekit.pack(str(vad / "vad.onnx"), "rpi4", tmp_path / "a.ekb", synthetic_calib=True)
    out = tmp_path / "b.ekb"
    edgekit.pack(str(vad / "vad.onnx"), "rpi4", out, synthetic_calib=True,
                 input_values={"sr": 16000}, runtime="onnxruntime")
    m = open_bundle(out).manifest
    assert [s.name for s in m.primary.inputs] == ["x", "state"]
    # onnxslim folds the If once its condition is a constant
    assert control_flow_nodes(open_bundle(out).read(m.model.path)) == []


def test_input_value_errors_are_one_line(tmp_path, vad):
    for value, why in (("rate=16000", "names no model input"), ("sr=1.5", "is int64"),
                       ("sr", "expected NAME=NUMBER")):
        proc = subprocess.run([sys.executable, "-m", "edgekit.cli", "pack", str(vad / "vad.onnx"),
                               "--target", "rpi4", "-o", str(tmp_path / "x.ekb"),
                               "--calib", str(vad / "calib.npz"), "--input-value", value],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1, value
        assert proc.stderr.count("\n") == 1 and why in proc.stderr, proc.stderr
        assert not (tmp_path / "x.ekb").exists()
