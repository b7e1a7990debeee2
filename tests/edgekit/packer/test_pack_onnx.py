"""Packer acceptance on ONNX input: size, fidelity, doctor steps, rejection by measurement."""

from __future__ import annotations

import zipfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgekit
from edgekit.dataset import load_dataset, load_labels
from edgekit.packer import PackOptions, pack
from edgekit.packer.evaluate import accuracy, interleaved_latency, make_runner, run_all
from edgekit.packer.recipes import Recipe
from edgekit.packer.search import SPEED_TOLERANCE, Context, Criteria, evaluate
from edgekit.targets import family_for, get_profile
from edgekit_agent.bundle.reader import open_bundle


def test_digits_int8_cpu_meets_size_and_accuracy(tmp_path, digits):
    out = tmp_path / "d8.ekb"
    result = edgekit.pack(str(digits.onnx), "rpi4", out, calib=digits.calib, eval_data=digits.eval,
                          labels=digits.labels, recipe="static_int8", runtime="onnxruntime")
    m = open_bundle(out).manifest
    float_size = digits.onnx.stat().st_size
    assert m.model.size_bytes <= 0.30 * float_size, (m.model.size_bytes, float_size)
    assert m.primary.fidelity.accuracy_drop <= 0.01
    assert m.primary.fidelity.accuracy >= 0.95
    assert m.primary.fidelity.samples == 500
    assert m.source["size_bytes"] == float_size
    assert m.source["latency_ms"] > 0 and m.primary.latency_ms > 0
    assert result.chosen[0].recipe.name == "static_int8"
    # the evidence is what the model in the bundle really does
    ref = result.chosen[0].fidelity.accuracy
    assert ref == pytest.approx(m.primary.fidelity.accuracy)


def test_prune_cluster_int8_bundle_is_small(tmp_path, digits):
    out = tmp_path / "dpc.ekb"
    edgekit.pack(str(digits.onnx), "rpi4", out, calib=digits.calib, eval_data=digits.eval,
                 labels=digits.labels, recipe="prune50_cluster16_static_int8_pertensor",
                 max_drop=0.02,
                 runtime="onnxruntime")
    m = open_bundle(out).manifest
    float_size = digits.onnx.stat().st_size
    bundle_size = out.stat().st_size
    assert bundle_size <= 0.15 * float_size, (bundle_size, float_size)
    assert m.primary.fidelity.accuracy_drop <= 0.02
    step = next(s.to_dict() for s in m.primary.recipe if s.step == "recipe")
    assert step["weight_sparsity"] >= 0.49 and step["clusters"] == 16
    # the archive really deflates the sparse, clustered weights
    with zipfile.ZipFile(out) as zf:
        info = zf.getinfo("model.onnx")
    assert info.compress_size < 0.6 * info.file_size
    assert m.model.compressed_bytes == pytest.approx(info.compress_size, rel=0.05)
    assert m.model.format == "onnx"


def test_cpu_target_keeps_the_faster_runtime_by_measurement(tmp_path, digits):
    """ONNX in, CPU target, convert extra installed: both runtimes timed, the faster kept."""
    result = edgekit.pack(str(digits.onnx), "rpi4", tmp_path / "rt.ekb", calib=digits.calib,
                          eval_data=digits.eval, labels=digits.labels, recipe="fp16")
    m = open_bundle(tmp_path / "rt.ekb").manifest
    step = next(s.detail for s in m.primary.recipe if (s.detail or "").startswith("runtime:"))
    ratio = float(step.split("LiteRT/onnxruntime = ")[1].split(";")[0])
    assert (m.model.format == "tflite") == (ratio <= 0.95), step
    # an independent timing agrees with the choice the packer recorded
    onnx_r = make_runner(digits.onnx.read_bytes(), "onnx")
    tfl_r = make_runner(open_bundle(tmp_path / "rt.ekb").read_model(), m.model.format)
    sample = load_dataset(digits.eval, onnx_r.inputs).sample(0)
    again = interleaved_latency(tfl_r, onnx_r, sample, min_runs=300, min_seconds=1.0)
    if m.model.format == "tflite":
        assert again.ratio < 1.0, again
        assert "SQNR vs ONNX logits" in step and result.chosen[0].fidelity.min_sqnr_db > 60


def _save(path, nodes, inits, inp: tuple, out: tuple) -> None:
    graph = helper.make_graph(nodes, "test",
                              [helper.make_tensor_value_info(inp[0], TensorProto.FLOAT, inp[1])],
                              [helper.make_tensor_value_info(out[0],
                                                             TensorProto.FLOAT, out[1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def _dynamic_onnx(path) -> None:
    """Conv net with dynamic batch and spatial dims, unnamed nodes."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 1, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(np.zeros(8, np.float32), "b1"),
             numpy_helper.from_array(rng.normal(0, 0.3, (4, 8)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.zeros(4, np.float32), "b2")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], transB=1)]
    _save(path, nodes, inits, ("x", ["N", 1, "H", "W"]), ("y", ["N", 4]))


def test_dynamic_shapes_are_frozen_and_recorded(tmp_path):
    src = tmp_path / "dyn.onnx"
    _dynamic_onnx(src)
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(1).random((40, 1, 16, 16), dtype=np.float32))
    out = tmp_path / "dyn.ekb"
    pack(PackOptions(model=src, target="x86-64", out=out, calib=calib,
                     input_shapes={"x": (1, 1, 16, 16)}, recipe="static_int8",
                     runtime="onnxruntime"))
    m = open_bundle(out).manifest
    steps = [(s.detail or "") for s in m.primary.recipe if s.step == "doctor"]
    assert any("froze input x [?,1,?,?] -> [1,1,16,16]" in s for s in steps), steps
    assert any("renamed" in s for s in steps), steps
    assert m.primary.inputs[0].shape == (1, 1, 16, 16)
    assert m.primary.fidelity.min_sqnr_db >= 15.0
    assert any("held out" in n for n in m.notes)


def test_dynamic_spatial_dims_without_shape_is_an_error(tmp_path, edgekit_cli, cli_error):
    src = tmp_path / "dyn.onnx"
    _dynamic_onnx(src)
    out = tmp_path / "x.ekb"
    proc = edgekit_cli("pack", src, "--target", "x86-64", "-o", out, "--synthetic-calib",
                       "--runtime", "onnxruntime")
    cli_error(proc, "dynamic dims", "--input-shape x:1,1,1,1")
    assert not out.exists()


def _tiny_wide_onnx(path) -> None:
    """Many tiny convolutions: QDQ int8 adds more bytes (scales, zero points, nodes) than it
    saves."""
    rng = np.random.default_rng(2)
    nodes, inits, prev = [], [], "x"
    for i in range(12):
        inits += [numpy_helper.from_array(rng.normal(0, 0.5,
                                                     (2, 2, 1, 1)).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(np.zeros(2, np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}"),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        prev = f"r{i}"
    _save(path, nodes, inits, ("x", [1, 2, 8, 8]), (prev, [1, 2, 8, 8]))


def test_search_rejects_larger_candidate_by_measurement(tmp_path):
    src = tmp_path / "tiny.onnx"
    _tiny_wide_onnx(src)
    calib = tmp_path / "c.npy"
    np.save(calib, np.random.default_rng(3).random((32, 2, 8, 8), dtype=np.float32))
    result = pack(PackOptions(model=src, target="x86-64", out=tmp_path / "t.ekb", calib=calib,
                              runtime="onnxruntime"))
    by_name = {c.recipe.name: c for c in result.candidates}
    int8 = by_name["static_int8"]
    assert len(int8.shipped) >= src.stat().st_size  # measured, not assumed
    assert "larger than float" in int8.rejected
    assert result.chosen[0].recipe.name != "static_int8"


def test_search_rejects_slower_candidate_by_measurement(digits):
    """ORT's dynamic int8 (ConvInteger) is slower than float here; the CPU search must see it."""
    model = digits.onnx.read_bytes()
    ref = make_runner(model, "onnx")
    evald = load_dataset(digits.eval, ref.inputs)
    labels = load_labels(digits.labels, len(evald))
    outs = run_all(ref, evald)
    ctx = Context(model=model, format="onnx", family=family_for("cpu"),
                  profile=get_profile("x86-64"),
                  calib=load_dataset(digits.calib, ref.inputs), eval=evald, labels=labels,
                  reference=ref, reference_outputs=outs,
                  reference_accuracy=accuracy(outs[0], labels),
                  criteria=Criteria(max_drop=0.01, check_speed=True), int8_io=False)
    cand = evaluate(ctx, Recipe("dynamic_int8"))
    # an independent, longer interleaved timing must agree with the search's verdict
    again = interleaved_latency(cand.runner, ref, evald.sample(0), min_runs=300, min_seconds=1.0)
    assert cand.latency.ratio > SPEED_TOLERANCE and again.ratio > SPEED_TOLERANCE, (
        cand.latency,
        again,
    )
    assert "slower than float" in cand.rejected
    assert len(cand.shipped) < len(model)  # smaller, accurate, yet rejected: speed alone decided
    assert cand.fidelity.accuracy_drop <= 0.01
