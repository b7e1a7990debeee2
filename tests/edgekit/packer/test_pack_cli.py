"""`edgekit pack` on bad input: one-line error, exit 1, no partial output, nothing lost."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper


def _custom_op_onnx(path) -> None:
    node = helper.make_node("FancyGlow", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph([node], "custom",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.example", 1)])
    model.ir_version = 8
    onnx.save(model, path)


def test_non_model_file(tmp_path, edgekit_cli, cli_error):
    bogus = tmp_path / "notes.onnx"
    bogus.write_text("this is not a model\n")
    out = tmp_path / "o.ekb"
    cli_error(edgekit_cli("pack", bogus, "--target", "rpi4", "-o", out),
              "not an ONNX or TFLite model")
    assert not out.exists()


def test_missing_model_file(tmp_path, edgekit_cli, cli_error):
    cli_error(edgekit_cli("pack", tmp_path / "nope.onnx", "--target", "rpi4", "-o",
                          tmp_path / "o.ekb"),
              "no such model file")


def test_op_the_runtime_cannot_run(tmp_path, edgekit_cli, cli_error):
    src = tmp_path / "custom.onnx"
    _custom_op_onnx(src)
    out = tmp_path / "o.ekb"
    cli_error(edgekit_cli("pack", src, "--target", "x86-64", "-o", out, "--synthetic-calib"),
              "FancyGlow")
    assert not out.exists()


def test_calibration_of_wrong_shape(tmp_path, digits, edgekit_cli, cli_error):
    calib = tmp_path / "c.npy"
    np.save(calib, np.zeros((10, 8, 8, 3), np.float32))
    cli_error(edgekit_cli("pack", digits.onnx, "--target", "rpi4", "-o", tmp_path / "o.ekb",
                          "--calib", calib), "expects samples of shape [8, 8, 1]", "[10, 8, 8, 3]")


def test_calibration_of_wrong_dtype(tmp_path, digits, edgekit_cli, cli_error):
    calib = tmp_path / "c.npz"
    np.savez(calib, image=np.zeros((10, 8, 8, 1), np.int32))
    cli_error(edgekit_cli("pack", digits.onnx, "--target", "rpi4", "-o", tmp_path / "o.ekb",
                          "--calib", calib), "expects float32 data, got int32")


def test_unknown_target(tmp_path, digits, edgekit_cli, cli_error):
    cli_error(edgekit_cli("pack", digits.onnx, "--target", "rpi9", "-o", tmp_path / "o.ekb"),
              "unknown target 'rpi9'", "rpi4", "coral-usb")


def test_bad_input_shape_argument(tmp_path, digits, edgekit_cli, cli_error):
    cli_error(edgekit_cli("pack", digits.onnx, "--target", "rpi4", "-o", tmp_path / "o.ekb",
                          "--input-shape", "image=1,8,8,1"), "--input-shape", "NAME:D0,D1")


def test_static_int8_without_calibration_is_refused(tmp_path, digits, edgekit_cli, cli_error):
    cli_error(edgekit_cli("pack", digits.onnx, "--target", "rpi4", "-o", tmp_path / "o.ekb",
                          "--recipe", "static_int8"), "--calib", "--synthetic-calib")


def test_failed_pack_keeps_existing_bundle(tmp_path, digits, edgekit_cli, cli_error):
    out = tmp_path / "keep.ekb"
    out.write_bytes(b"previous bundle bytes")
    calib = tmp_path / "c.npy"
    np.save(calib, np.zeros((10, 3), np.float32))
    cli_error(edgekit_cli("pack", digits.onnx, "--target", "rpi4", "-o", out, "--calib", calib),
              "expects samples")
    assert out.read_bytes() == b"previous bundle bytes"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".keep")] == []


def test_synthetic_calibration_is_flagged(tmp_path, digits, edgekit_cli):
    out = tmp_path / "syn.ekb"
    proc = edgekit_cli("pack", digits.onnx, "--target", "rpi4", "-o", out, "--recipe",
                       "static_int8",
                       "--synthetic-calib", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    manifest = report["manifest"]
    assert manifest["source"]["synthetic_data"] is True
    assert manifest["fidelity"]["synthetic_data"] is True
    assert any("SYNTHETIC" in n for n in manifest["notes"])


def test_json_report_lists_every_candidate(tmp_path, digits, edgekit_cli):
    proc = edgekit_cli("pack", "example:digits", "--target", "stm32h7", "-o", tmp_path / "d.ekb",
                       "--variants", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    names = [c["recipe"] for c in report["candidates"]]
    assert names[0] == "fp32"  # the reference is always measured
    assert len(report["chosen"]) == 2
    chosen = [c for c in report["candidates"] if c["recipe"] in report["chosen"]]
    assert all(c["fits"] for c in chosen)
    assert report["manifest"]["variants"][0]["name"] == report["chosen"][1]
    assert "fp32" not in report["chosen"]  # float is a fallback, never a variant beside int8
    # each variant carries its own evidence and model member
    variant = report["manifest"]["variants"][0]
    assert variant["model"]["path"].startswith("variants/") and variant["target_report"]["fits"]
    assert variant["fidelity"]["min_sqnr_db"] != report["manifest"]["fidelity"]["min_sqnr_db"]
    assert report["bundle_bytes"] > 0


def test_summary_ratio_is_the_model_not_the_bundle(tmp_path, digits, edgekit_cli):
    out = tmp_path / "d.ekb"
    proc = edgekit_cli("pack", "example:digits", "--target", "stm32h7", "-o", out, "--variants", "2")
    assert proc.returncode == 0, proc.stderr
    summary = next(line for line in proc.stdout.splitlines() if line.startswith("packed "))
    manifest = json.loads(edgekit_cli("inspect", out, "--json").stdout)
    ratio = manifest["model"]["size_bytes"] / manifest["source"]["size_bytes"]
    # An int8 MCU model is about 0.3x; the bundle (C sources, a second variant, self-test data)
    # is not what the ratio describes.
    assert ratio < 0.35
    assert f"{ratio:.2f}x the float model" in summary
    assert "2 variants" in summary and out.stat().st_size > manifest["model"]["size_bytes"]
