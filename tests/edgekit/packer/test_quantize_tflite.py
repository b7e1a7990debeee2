"""TFLite quantization through ai-edge-quantizer, judged by running the results in LiteRT."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.errors import CalibrationError, ConfigError, ModelError
from edgekit.packer.compress import compress_tflite
from edgekit.packer.quantize_tflite import (
    SCHEMES,
    fallback_order,
    op_sensitivity,
    quantize_tflite,
    tensor_sqnr,
)
from edgekit.tflite import model as tm
from edgekit_agent.runtime import Runner, load_backend


def _sqnr(ref: np.ndarray, out: np.ndarray) -> float:
    ref, out = ref.astype(np.float64), out.astype(np.float64)
    return float(10 * np.log10(np.sum(ref ** 2) / np.sum((ref - out) ** 2)))


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(logits.argmax(1) == labels))


@pytest.fixture(scope="module")
def static_int8(digits_tflite, digits_calib) -> bytes:
    return quantize_tflite(digits_tflite, "static_int8", digits_calib)


def test_static_int8_is_full_integer_small_and_accurate(digits_tflite, static_int8, tflite_logits,
                                                        digits_test, digits_float_logits):
    ratio = len(static_int8) / len(digits_tflite)
    assert ratio <= 0.30, ratio                                        # measured 0.288
    backend = load_backend(static_int8, "tflite")
    for spec in backend.inputs + backend.outputs:
        assert spec.dtype == "int8" and spec.scale > 0 and -128 <= spec.zero_point <= 127, spec
    assert backend.inputs[0].name == "image"
    assert "QUANTIZE" not in tm.op_names(static_int8) and "DEQUANTIZE" not in tm.op_names(
        static_int8
    )
    logits = tflite_logits(static_int8)
    labels = digits_test[1]
    drop = _accuracy(digits_float_logits, labels) - _accuracy(logits, labels)
    assert drop <= 0.01, drop                                          # measured 0.0 (98.4 %)
    assert _sqnr(digits_float_logits, logits) >= 12                    # measured 15.4 dB


def test_static_int8_runs_on_the_microcontroller_interpreter(static_int8, digits_test):
    images, labels = digits_test
    runner = Runner(load_backend(static_int8, "tflite", prefer_micro=True, arena_size=64 * 1024))
    logits = np.concatenate([runner([images[i:i + 1]])[0] for i in range(100)])
    assert _accuracy(logits, labels[:100]) >= 0.95


def test_static_int8_with_float_interface(digits_tflite, digits_calib, tflite_logits, digits_test,
                                          digits_float_logits):
    model = quantize_tflite(digits_tflite, "static_int8", digits_calib, int8_io=False)
    backend = load_backend(model, "tflite")
    assert [s.dtype for s in backend.inputs + backend.outputs] == ["float32", "float32"]
    names = tm.op_names(model)
    assert names[0] == "QUANTIZE" and names[-1] == "DEQUANTIZE"
    drop = _accuracy(digits_float_logits, digits_test[1]) - _accuracy(tflite_logits(model),
                                                                      digits_test[1])
    assert drop <= 0.01, drop


@pytest.mark.parametrize("scheme, max_ratio, min_sqnr, weight_type", [
    ("dynamic_int8", 0.30, 35.0, "int8"),     # measured 0.276, 43.7 dB
    ("weight_int8", 0.30, 35.0, "int8"),      # measured 0.279, 45.1 dB
    ("weight_int4", 0.17, 15.0, "int4"),      # measured 0.157, 21.2 dB
])
def test_weight_schemes_size_and_fidelity(digits_tflite, tflite_logits, digits_test,
                                          digits_float_logits,
                                          scheme, max_ratio, min_sqnr, weight_type):
    model = quantize_tflite(digits_tflite, scheme)                     # no calibration needed
    ratio = len(model) / len(digits_tflite)
    assert ratio <= max_ratio, ratio
    model_t = tm.load(model)
    kernel_types = {tm.tensor_type_name(t.type) for t in model_t.subgraphs[0].tensors
                    if tm.tensor_name(t) == "sequential/dense/MatMul"}
    assert kernel_types == {weight_type}
    backend = load_backend(model, "tflite")
    assert [s.dtype for s in backend.inputs + backend.outputs] == ["float32", "float32"]
    logits = tflite_logits(model)
    assert _sqnr(digits_float_logits, logits) >= min_sqnr
    drop = _accuracy(digits_float_logits, digits_test[1]) - _accuracy(logits, digits_test[1])
    assert drop <= 0.01, drop


def test_int4_is_smaller_than_int8(digits_tflite):
    int8 = quantize_tflite(digits_tflite, "weight_int8")
    int4 = quantize_tflite(digits_tflite, "weight_int4")
    assert len(int4) <= 0.6 * len(int8), (len(int4), len(int8))     # measured 24.5 KB vs 43.6 KB


def test_op_sensitivity_matches_end_to_end_sqnr(digits_tflite, static_int8, digits_calib):
    calib = digits_calib[:32]
    table = op_sensitivity(digits_tflite, static_int8, calib)
    assert [(i, name) for i, name, _ in table] == list(enumerate(tm.op_names(digits_tflite)))
    assert all(0 < db < 100 for _, _, db in table)
    float_runner = Runner(load_backend(digits_tflite, "tflite"))
    quant_runner = Runner(load_backend(static_int8, "tflite"))
    ref = np.concatenate([float_runner([s["image"]])[0] for s in calib])
    out = np.concatenate([quant_runner([s["image"]])[0] for s in calib])
    assert table[-1][2] == pytest.approx(
        _sqnr(ref, out), abs=0.05
    )  # the output op = the model output
    per_tensor = tensor_sqnr(digits_tflite, static_int8, calib)
    assert per_tensor["serving_default_image:0"] > 45  # int8 input of [0,1] pixels: ~56 dB


def test_mixed_precision_follows_the_sensitivity_ranking(digits_tflite, static_int8, digits_calib,
                                                         tflite_logits, digits_float_logits):
    order = fallback_order(digits_tflite, static_int8, digits_calib[:32])
    assert sorted(order) == list(range(6))
    whole = _sqnr(digits_float_logits, tflite_logits(static_int8))
    worst_first = quantize_tflite(digits_tflite, "static_int8", digits_calib,
                                  float_ops=frozenset(order[:1]))
    best_first = quantize_tflite(digits_tflite, "static_int8", digits_calib,
                                 float_ops=frozenset(order[-1:]))
    gain_worst = _sqnr(digits_float_logits, tflite_logits(worst_first)) - whole
    gain_best = _sqnr(digits_float_logits, tflite_logits(best_first)) - whole
    assert gain_worst >= 6.0, gain_worst  # measured +12.3 dB (op 5 in float)
    assert gain_worst > gain_best + 5.0, (gain_worst, gain_best)
    backend = load_backend(worst_first, "tflite")  # still a full-integer interface
    assert [s.dtype for s in backend.inputs + backend.outputs] == ["int8", "int8"]
    assert backend.outputs[0].scale > 0
    model_t = tm.load(worst_first)
    sg = model_t.subgraphs[0]
    kernels = {
        i: int(op.inputs[1]) for i, op in enumerate(sg.operators) if len(tm.ints(op.inputs)) > 1
    }
    float_kernel_ops = [tm.op_name(model_t, sg.operators[i]) for i, t in kernels.items()
                        if tm.tensor_array(model_t, t) is not None
                        and tm.tensor_type_name(sg.tensors[t].type) == "float32"]
    assert float_kernel_ops == [tm.op_names(digits_tflite)[order[0]]]


def test_float_op_with_float_interface(digits_tflite, digits_calib):
    model = quantize_tflite(digits_tflite, "static_int8", digits_calib, float_ops=frozenset({0, 5}),
                            int8_io=False)
    backend = load_backend(model, "tflite")
    assert [s.dtype for s in backend.inputs + backend.outputs] == ["float32", "float32"]
    assert tm.op_names(model).count("CONV_2D") == 2


def test_quantized_weights_are_inline_for_tflm_and_vela(make_fc_tflite):
    """ai-edge-quantizer writes weights after the flatbuffer once they pass 256 KB; TFLM, Vela and
    the Edge TPU compiler read only inline buffers, so quantize_tflite brings them inline."""
    from ai_edge_quantizer import quantizer, recipe

    model = make_fc_tflite(640, 640)
    qt = quantizer.Quantizer(model)
    qt.load_quantization_recipe(recipe.dynamic_wi8_afp32())
    raw = bytes(qt.quantize().quantized_model)
    offsets = lambda m: [tm.schema.Model.GetRootAs(m, 0).Buffers(i).Offset()  # noqa: E731
                         for i in range(tm.schema.Model.GetRootAs(m, 0).BuffersLength())]
    assert any(o > 1 for o in offsets(raw))            # the library's own layout
    quant = quantize_tflite(model, "dynamic_int8")
    assert not any(o > 1 for o in offsets(quant))      # ours: all inline
    model_t = tm.load(raw)                              # and load() reads the external layout
    kernel = next(tm.tensor_array(model_t, i) for i, t in enumerate(model_t.subgraphs[0].tensors)
                  if tm.tensor_name(t) == "w")
    assert kernel.dtype == np.int8 and kernel.shape == (640, 640)
    assert np.count_nonzero(kernel) > 0.9 * kernel.size
    x = np.random.default_rng(0).normal(size=(1, 640)).astype(np.float32)
    a = load_backend(raw, "tflite").run([x])[0]
    b = load_backend(quant, "tflite").run([x])[0]
    assert np.array_equal(a, b)
    assert len(quant) < 0.3 * len(model)


# --- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("sample, fragments", [
    ({"image": np.zeros((8, 8, 1), np.float32)}, ["'image'", "expected float32 (1, 8, 8, 1)",
                                                   "got float32 (8, 8, 1)"]),
    ({"image": np.zeros((1, 8, 8, 1), np.float64)}, ["'image'", "expected float32", "got float64"]),
    ({"image": np.zeros((1, 8, 8, 3), np.float32)}, ["got float32 (1, 8, 8, 3)"]),
    ({"pixels": np.zeros((1, 8, 8, 1), np.float32)},
     ["unknown input 'pixels'", "model inputs: image"]),
    ({}, ["no input 'image'"]),
    ({"image": np.full((1, 8, 8, 1), np.nan, np.float32)}, ["'image'", "NaN"]),
])
def test_wrong_calibration_is_a_one_line_calibration_error(digits_tflite, digits_calib,
                                                           sample, fragments):
    with pytest.raises(CalibrationError) as info:
        quantize_tflite(digits_tflite, "static_int8", digits_calib[:3] + [sample])
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_static_without_calibration_is_refused(digits_tflite):
    with pytest.raises(CalibrationError, match="needs calibration samples"):
        quantize_tflite(digits_tflite, "static_int8", None)


def test_unknown_scheme_and_bad_float_op(digits_tflite, digits_calib):
    with pytest.raises(ConfigError, match="scheme.*int3.*allowed: dynamic_int8, static_int16x8, static_int8"):
        quantize_tflite(digits_tflite, "int3")
    with pytest.raises(ConfigError, match="float_ops.*value 6.*0..5"):
        quantize_tflite(digits_tflite, "static_int8", digits_calib[:4], float_ops=frozenset({6}))


def test_static_int8_needs_a_signature(digits_tflite, digits_calib):
    model_t = tm.load(digits_tflite)
    model_t.signatureDefs = []
    with pytest.raises(ModelError, match="no SignatureDef"):
        quantize_tflite(tm.save(model_t), "static_int8", digits_calib[:4])


def test_float16_weight_model_is_refused_not_crashed(digits_tflite, digits_calib):
    """ai-edge-quantizer crashes on fp16 weights (static) or quantizes nothing (dynamic)."""
    fp16, _ = compress_tflite(digits_tflite, fp16=True)
    with pytest.raises(ModelError, match="ai-edge-quantizer failed \\(static_int8\\)"):
        quantize_tflite(fp16, "static_int8", digits_calib[:8])
    with pytest.raises(ModelError, match="dynamic_int8 quantized no tensor"):
        quantize_tflite(fp16, "dynamic_int8")


def test_all_schemes_are_listed():
    assert SCHEMES == ("dynamic_int8", "static_int8", "weight_int8", "weight_int4", "static_int16x8")
