"""TFLite doctor: signatures, float16 weight storage, dynamic input shapes."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.errors import ModelError
from edgekit.packer.compress import compress_tflite
from edgekit.packer.doctor_tflite import (
    decompose_fp16_weights,
    ensure_signature,
    freeze_input_shapes,
    sanitise_name,
)
from edgekit.packer.quantize_tflite import quantize_tflite
from edgekit.tflite import model as tm
from edgekit_agent.runtime import load_backend


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(logits.argmax(1) == labels))


def _without_signature(model: bytes) -> bytes:
    model_t = tm.load(model)
    model_t.signatureDefs = []
    return tm.save(model_t)


def _dynamic_batch(model: bytes) -> bytes:
    """The digits model as a converter exports it with a free batch: -1 in the shape signature
    of every activation and in the flatten's target shape."""
    model_t = tm.load(model)
    sg = model_t.subgraphs[0]
    for i, t in enumerate(sg.tensors):
        if tm.tensor_array(model_t, i) is None:
            t.shapeSignature = np.array([-1, *t.shape[1:]], dtype=np.int32)
        elif tm.tensor_name(t) == "arith.constant":       # RESHAPE's new shape
            tm.set_tensor_array(model_t, i, np.array([-1, 512], dtype=np.int32))
    return tm.save(model_t)


# --- signatures ------------------------------------------------------------------------------

def test_model_without_signature_gets_one_and_then_quantizes(digits_tflite, digits_calib,
                                                             tflite_logits,
                                                             digits_test, digits_float_logits):
    bare = _without_signature(digits_tflite)
    assert not tm.load(bare).signatureDefs
    with pytest.raises(ModelError, match="no SignatureDef"):
        quantize_tflite(bare, "static_int8", digits_calib)
    fixed, steps = ensure_signature(bare)
    assert steps == [
        "add_signature serving_default (inputs: image; outputs: StatefulPartitionedCall)"
    ]
    key, inputs, outputs = tm.signature_io(tm.load(fixed))
    assert (key, inputs, outputs) == ("serving_default", {"image": 0},
                                      {"StatefulPartitionedCall": 15})
    assert load_backend(fixed, "tflite").inputs[0].name == "image"
    int8 = quantize_tflite(fixed, "static_int8", digits_calib)       # calibration keyed by 'image'
    assert len(int8) <= 0.30 * len(digits_tflite)
    drop = _accuracy(digits_float_logits, digits_test[1]) - _accuracy(tflite_logits(int8),
                                                                      digits_test[1])
    assert drop <= 0.01, drop


def test_model_with_signature_is_left_alone(digits_tflite):
    out, steps = ensure_signature(digits_tflite)
    assert steps == [] and out is digits_tflite


def test_signature_names_from_odd_tensor_names(make_fc_tflite):
    model_t = tm.load(make_fc_tflite(4, 3, signature=False))
    sg = model_t.subgraphs[0]
    sg.tensors[int(sg.inputs[0])].name = b"serving_default_input.1:0"
    sg.tensors[int(sg.outputs[0])].name = b""
    fixed, steps = ensure_signature(tm.save(model_t))
    assert tm.signature_io(tm.load(fixed))[1:] == ({"input_1": 0}, {"output_0": 3})
    assert steps == ["add_signature serving_default (inputs: input_1; outputs: output_0)"]


@pytest.mark.parametrize("raw, clean", [
    ("serving_default_image:0", "image"), ("input.1", "input_1"), ("StatefulPartitionedCall:0",
                                                                   "StatefulPartitionedCall"),
    ("0/conv", "t_0_conv"), ("x y-z", "x_y_z"),
])
def test_sanitise_name(raw, clean):
    assert sanitise_name(raw) == clean


# --- float16 weights --------------------------------------------------------------------------

def test_decompose_fp16_then_static_int8_runs(digits_tflite, digits_calib, tflite_logits,
                                              digits_test,
                                              digits_float_logits):
    fp16, _ = compress_tflite(digits_tflite, fp16=True)
    assert tm.op_names(fp16).count("DEQUANTIZE") == 8
    with pytest.raises(ModelError, match="ai-edge-quantizer failed"):   # what the doctor prevents
        quantize_tflite(fp16, "static_int8", digits_calib[:8])
    fixed, steps = decompose_fp16_weights(fp16)
    assert steps == ["decompose_fp16_weights (8 float16 constants -> float32)"]
    assert tm.op_names(fixed) == tm.op_names(digits_tflite)
    model_t = tm.load(fixed)
    assert all(tm.tensor_type_name(t.type) != "float16" for t in model_t.subgraphs[0].tensors)
    assert abs(len(fixed) - len(digits_tflite)) <= 256                 # float32 size again
    x = digits_test[0][:1]
    assert np.array_equal(load_backend(fixed, "tflite").run([x])[0],
                          load_backend(fp16, "tflite").run([x])[0])
    int8 = quantize_tflite(fixed, "static_int8", digits_calib)
    backend = load_backend(int8, "tflite")
    assert [s.dtype for s in backend.inputs + backend.outputs] == ["int8", "int8"]
    drop = _accuracy(digits_float_logits, digits_test[1]) - _accuracy(tflite_logits(int8),
                                                                      digits_test[1])
    assert drop <= 0.01, drop


def test_decompose_leaves_float32_models_alone(digits_tflite):
    out, steps = decompose_fp16_weights(digits_tflite)
    assert steps == [] and out is digits_tflite


# --- dynamic shapes ----------------------------------------------------------------------------

def test_freeze_dynamic_batch(digits_tflite, digits_test):
    dynamic = _dynamic_batch(digits_tflite)
    assert list(tm.load(dynamic).subgraphs[0].tensors[0].shapeSignature) == [-1, 8, 8, 1]
    with pytest.raises(ModelError, match=r"input 'image' has a dynamic shape \(-1, 8, 8, 1\); "
                                         r"give it with --input-shape image:1,8,8,1"):
        freeze_input_shapes(dynamic, {})
    frozen, steps = freeze_input_shapes(dynamic, {"image": (1, 8, 8, 1)})
    assert steps == ["freeze_input_shape image: (-1, 8, 8, 1) -> (1, 8, 8, 1)"]
    tensors = tm.load(frozen).subgraphs[0].tensors
    assert all(t.shapeSignature is None or -1 not in list(t.shapeSignature) for t in tensors)
    x = digits_test[0][:1]
    assert np.array_equal(load_backend(frozen, "tflite").run([x])[0],
                          load_backend(digits_tflite, "tflite").run([x])[0])


def test_freeze_to_batch_4_propagates_every_shape(digits_tflite, digits_test):
    frozen, _ = freeze_input_shapes(_dynamic_batch(digits_tflite),
                                    {"serving_default_image:0": (4, 8, 8, 1)})
    model_t = tm.load(frozen)
    activations = [t for i, t in enumerate(model_t.subgraphs[0].tensors)
                   if tm.tensor_array(model_t, i) is None]
    assert len(activations) == 7 and all(int(t.shape[0]) == 4 for t in activations)
    backend = load_backend(frozen, "tflite")
    assert backend.inputs[0].shape == (4, 8, 8, 1) and backend.outputs[0].shape == (4, 10)
    x = digits_test[0][:4]
    batched = backend.run([x])[0]
    single = load_backend(digits_tflite, "tflite")
    one_by_one = np.concatenate([single.run([x[i:i + 1]])[0] for i in range(4)])
    assert np.allclose(batched, one_by_one, atol=1e-5)


@pytest.mark.parametrize("shapes, message", [
    ({"image": (1, 8, 8)}, r"input 'image': shape \(1, 8, 8\) does not fit \(-1, 8, 8, 1\)"),
    ({"image": (1, 9, 8, 1)}, r"shape \(1, 9, 8, 1\) does not fit"),
    ({"image": (0, 8, 8, 1)}, r"shape \(0, 8, 8, 1\) does not fit"),
    ({"pixels": (1, 8, 8, 1)}, r"unknown input 'pixels' \(inputs: image\)"),
])
def test_freeze_rejects_bad_shapes(digits_tflite, shapes, message):
    with pytest.raises(ModelError, match=message):
        freeze_input_shapes(_dynamic_batch(digits_tflite), shapes)


def test_static_model_needs_no_freezing(digits_tflite):
    out, steps = freeze_input_shapes(digits_tflite, {})
    assert steps == [] and out is digits_tflite
    out, steps = freeze_input_shapes(digits_tflite, {"image": (1, 8, 8, 1)})
    assert steps == [] and out is digits_tflite
