"""ONNX → TFLite with onnx2tf, offline: I/O contract kept, fidelity measured against ONNX
Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgekit.errors import CalibrationError, ModelError
from edgekit.packer import convert
from edgekit.packer.convert import EXTRA_MESSAGE, SAMPLE_DATA_FILE, onnx_to_tflite
from edgekit.packer.evaluate import sqnr_db
from edgekit.tflite import model as tfl
from edgekit_agent.runtime import load_backend


def tiny_nchw_onnx(dynamic: bool = False) -> bytes:
    """Conv(3→4, 3x3, pad 1) + Relu on an NCHW (1, 3, 4, 4) input, node names TF rejects.
    The output (1, 4, 4, 4) has the same shape in NCHW and NHWC: only numbers tell them apart."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(size=(4,)).astype(np.float32), "b")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv:0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"], name="relu 1")]
    batch = "N" if dynamic else 1
    graph = helper.make_graph(nodes, "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                             [batch, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                             [batch, 4, 4, 4])],
                              [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def signature(model: bytes) -> tuple[str, list[str], list[str]]:
    sig = tfl.load(model).signatureDefs[0]
    return (sig.signatureKey.decode(), [t.name.decode() for t in sig.inputs],
            [t.name.decode() for t in sig.outputs])


@pytest.fixture(scope="module")
def digits_converted(digits):
    calib = np.load(digits.calib)["image"]
    return onnx_to_tflite(digits.onnx.read_bytes(), {"image": calib})


def test_digits_onnx_converts_with_high_sqnr(digits_converted, digits):
    result = digits_converted
    assert set(result.sqnr_db_per_output) == {"logits"}
    assert result.sqnr_db_per_output["logits"] > 60
    lite = load_backend(result.tflite_bytes, "tflite")
    assert [(s.name, s.shape, s.dtype) for s in lite.inputs] == [("image", (1, 8, 8, 1), "float32")]
    assert [(s.name, s.shape, s.dtype) for s in lite.outputs] == [("logits", (1, 10), "float32")]
    assert signature(result.tflite_bytes) == ("serving_default", ["image"], ["logits"])
    assert not any(op.startswith("CUSTOM") for op in tfl.op_names(result.tflite_bytes))
    assert any(s.startswith("onnx2tf ") for s in result.steps)
    assert result.to_dict()["sqnr_db"]["logits"] == round(result.sqnr_db_per_output["logits"], 2)


def test_converted_digits_agree_with_onnx_on_held_out_data(digits_converted, digits):
    """An independent check on the 500 test images the conversion never saw."""
    x = np.load(digits.eval)["image"]
    onnx_rt = load_backend(digits.onnx.read_bytes(), "onnx")
    lite = load_backend(digits_converted.tflite_bytes, "tflite")
    ref = np.concatenate([onnx_rt.run([x[i:i + 1]])[0] for i in range(len(x))])
    got = np.concatenate([lite.run([x[i:i + 1]])[0] for i in range(len(x))])
    assert sqnr_db(ref, got) > 60
    assert np.array_equal(ref.argmax(1), got.argmax(1))


def test_nchw_model_keeps_its_layout_and_gets_clean_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written to (or downloaded into) the caller's cwd
    x = np.random.default_rng(1).random((16, 3, 4, 4), dtype=np.float32)
    result = onnx_to_tflite(tiny_nchw_onnx(), [x])
    lite = load_backend(result.tflite_bytes, "tflite")
    assert [(s.name, s.shape) for s in lite.inputs] == [("x", (1, 3, 4, 4))]
    assert [(s.name, s.shape) for s in lite.outputs] == [("y", (1, 4, 4, 4))]
    assert result.sqnr_db_per_output["y"] > 60
    ops = tfl.op_names(result.tflite_bytes)
    assert ops[-1] == "TRANSPOSE" and "CONV_2D" in ops
    assert "renamed 2 node(s) to safe unique names" in result.steps
    assert any("transposed back to the ONNX layout [1, 4, 4, 4]" in s for s in result.steps)
    assert list(Path(tmp_path).iterdir()) == []
    assert not Path(SAMPLE_DATA_FILE).exists()


def test_dynamic_input_is_refused_before_converting():
    with pytest.raises(ModelError, match=r"input 'x' has a dynamic shape \['\?', 3, 4, 4\]"):
        onnx_to_tflite(tiny_nchw_onnx(dynamic=True), [np.zeros((2, 3, 4, 4), np.float32)])


def test_calibration_of_the_wrong_shape_is_refused():
    with pytest.raises(CalibrationError,
                       match=r"input 'x' expects samples of shape \[3, 4, 4\], "
                             r"got an array of shape \[2, 4, 4, 3\]"):
        onnx_to_tflite(tiny_nchw_onnx(), [np.zeros((2, 4, 4, 3), np.float32)])
    with pytest.raises(CalibrationError, match="no calibration array for input"):
        onnx_to_tflite(tiny_nchw_onnx(), {"image": np.zeros((2, 3, 4, 4), np.float32)})


def test_missing_extra_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(convert, "REQUIRED_MODULES",
                        (*convert.REQUIRED_MODULES, "edgekit_no_such_module"))
    with pytest.raises(ModelError) as info:
        onnx_to_tflite(tiny_nchw_onnx(), [np.zeros((2, 3, 4, 4), np.float32)])
    assert str(info.value) == f"{EXTRA_MESSAGE} (missing: edgekit_no_such_module)"
    # the same message when the child process cannot import a module
    err = convert._conversion_error(
        "Traceback ...\nModuleNotFoundError: No module named 'psutil'\n"
    )
    assert str(err) == f"{EXTRA_MESSAGE} (missing: psutil)"
