"""Fidelity before a final sigmoid/softmax (judged there, reported beside the output's), a
warning for outputs the calibration data leaves saturated, and the no-calibration summary."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

import edgekit
from edgekit.dataset import Dataset
from edgekit.packer.evaluate import sqnr_db
from edgekit.packer.preact import pre_activation_outputs, probe_model
from edgekit.packer.search import Criteria
from edgekit_agent.bundle.manifest import Fidelity, TensorSpec
from edgekit_agent.bundle.reader import open_bundle

N_IN, N_OUT = 64, 32


def sigmoid_head(bias: float) -> bytes:
    """prob = sigmoid(x @ W + bias): with bias -12 it sits at ~1e-6 on unit-normal inputs."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.25, (N_IN, N_OUT)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "b"], ["logit"]),
         helper.make_node("Sigmoid", ["logit"], ["prob"])], "head",
        [helper.make_tensor_value_info("x", T.FLOAT, [1, N_IN])],
        [helper.make_tensor_value_info("prob", T.FLOAT, [1, N_OUT])],
        [numpy_helper.from_array(w, "W"),
         numpy_helper.from_array(np.full(N_OUT, bias, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("head")
    np.save(d / "calib.npy", np.random.default_rng(1).normal(0, 1, (256, N_IN)).astype(np.float32))
    for name, bias in (("saturated", -12.0), ("live", 0.0)):
        (d / f"{name}.onnx").write_bytes(sigmoid_head(bias))
    return d


def test_saturated_sigmoid_is_judged_before_the_activation(tmp_path, data):
    out = tmp_path / "s.ekb"
    result = edgekit.pack(str(data / "saturated.onnx"), "coral-usb", out,
                          calib=str(data / "calib.npy"))
    m = open_bundle(out).manifest
    fid = m.primary.fidelity
    prob, pre = fid.outputs["prob"], fid.pre_activation["prob"]
    assert result.chosen[0].recipe.name in ("static_int8", "static_int8_tuned")
    assert fid.final_activation == {"prob": "sigmoid"}
    assert prob.sqnr_db < 10.0  # int8 rounds a ~1e-6 sigmoid to 0: noise, not a model error
    assert pre.sqnr_db > 25.0 and pre.cosine > 0.99
    assert fid.decision_sqnr_db == pre.sqnr_db == fid.pre_activation_sqnr_db
    saturation = [n for n in m.notes if "stays saturated" in n]
    assert len(saturation) == 1 and "'prob'" in saturation[0] and "99." in saturation[0]
    d = m.primary.to_dict()["fidelity"]
    assert d["pre_activation_sqnr_db"] == pytest.approx(pre.sqnr_db, abs=1e-3)
    assert d["pre_activation"]["prob"]["sqnr_db"] == d["pre_activation_sqnr_db"]
    assert set(d["outputs"]["prob"]) == {"sqnr_db", "cosine"}  # what older agents accept
    assert Fidelity.from_dict(d).to_dict() == d
    # judged after the sigmoid, as before, the same candidate misses the 15 dB floor
    post_only = Fidelity({"prob": prob})
    assert Criteria(max_drop=None).misses(post_only) and not Criteria(max_drop=None).misses(fid)


def test_live_sigmoid_on_cpu_reports_both_and_warns_nothing(tmp_path, data):
    out = tmp_path / "l.ekb"
    edgekit.pack(str(data / "live.onnx"), "rpi4", out, calib=str(data / "calib.npy"),
                 recipe="static_int8", runtime="onnxruntime")
    m = open_bundle(out).manifest
    fid = m.primary.fidelity
    assert fid.final_activation == {"prob": "sigmoid"} and fid.pre_activation["prob"].sqnr_db > 25
    assert fid.outputs["prob"].sqnr_db > 25.0  # a sigmoid away from its rails: both agree
    assert not any("saturated" in n for n in m.notes)
    # the QDQ model is probed through its Q/DQ pair back to the Sigmoid's input
    probe = probe_model(open_bundle(out).read(m.model.path), "onnx", ["prob"])
    assert probe is not None and len(onnx.load_from_string(probe.model).graph.output) == 2


def test_models_without_final_activation_get_no_pre_activation_figures(make_fc_tflite):
    assert probe_model(make_fc_tflite(8, 4), "tflite", ["y"]) is None


def test_no_calibration_data_is_in_the_summary_line(tmp_path, digits):
    out = tmp_path / "m.ekb"
    proc = subprocess.run([sys.executable, "-m", "edgekit.cli", "pack", str(digits.onnx),
                           "--target", "stm32h7", "-o", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    summary = next(ln for ln in proc.stdout.splitlines() if ln.startswith("packed "))
    assert "stm32h7: fp32 " in summary
    assert summary.endswith("; no int8: no calibration data was given; give --calib DIR "
                            "(representative inputs), or --synthetic-calib to accept generated "
                            "data")
    # a target with a calibrated int8 candidate says nothing of the kind
    proc = subprocess.run([sys.executable, "-m", "edgekit.cli", "pack", str(digits.onnx),
                           "--target", "stm32h7", "-o", str(out), "--calib", str(digits.calib)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "no int8" not in proc.stdout


def softmax_head(shift: float) -> bytes:
    """prob = softmax(x @ W + shift): the same probabilities for every ``shift``."""
    rng = np.random.default_rng(2)
    w = rng.normal(0, 0.5, (N_IN, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "b"], ["logit"]),
         helper.make_node("Softmax", ["logit"], ["prob"], axis=-1)], "head",
        [helper.make_tensor_value_info("x", T.FLOAT, [1, N_IN])],
        [helper.make_tensor_value_info("prob", T.FLOAT, [1, 4])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.full(4, shift, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


def test_softmax_logits_are_judged_shift_invariant():
    """A constant offset on every logit changes nothing after a softmax: judged before it, the
    offset model is lossless (raw logits would put it at a few dB)."""
    x = np.random.default_rng(3).normal(0, 1, (16, N_IN)).astype(np.float32)
    data = Dataset((TensorSpec("x", (1, N_IN), "float32"),), (x,))
    ref = pre_activation_outputs(softmax_head(0.0), "onnx", ["prob"], data)["prob"]
    shifted = pre_activation_outputs(softmax_head(5.0), "onnx", ["prob"], data)["prob"]
    assert np.allclose(ref.sum(axis=-1), 0.0, atol=1e-5)  # centred rows
    assert sqnr_db(ref, shifted) > 80.0
