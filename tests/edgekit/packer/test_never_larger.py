"""Never worse than the input: an fp16-stored source is never shipped as a larger file."""

from __future__ import annotations

import hashlib

import edgekit
from edgekit.packer.compress import compress_tflite
from edgekit_agent.bundle.reader import open_bundle


def _fp16_source(tmp_path, digits):
    """The digits model stored as published on-device models are: fp16 weights + DEQUANTIZE."""
    model, _ = compress_tflite(digits.tflite.read_bytes(), fp16=True)
    path = tmp_path / "digits_fp16.tflite"
    path.write_bytes(model)
    return path


def test_fp16_source_ships_unchanged_when_nothing_beats_it(tmp_path, digits):
    src = _fp16_source(tmp_path, digits)
    out = tmp_path / "src.ekb"
    # 60 dB: no int8 candidate can hold it; fp16 re-storage is lossless but not smaller
    result = edgekit.pack(str(src), "rpi4", out, calib=digits.calib, eval_data=digits.eval,
                          labels=digits.labels, min_sqnr=60.0)
    m = open_bundle(out).manifest
    assert m.model.size_bytes == src.stat().st_size  # 1.00x, not the 2x float32 reference
    assert m.model.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    assert result.chosen[0].stats == {"source_unchanged": True}
    assert result.chosen[0].fidelity.min_sqnr_db > 100  # the decomposition is exact
    fp16 = next(c for c in result.candidates if c.recipe.name == "fp16")
    assert "not smaller than the source file" in fp16.rejected
    assert len(fp16.shipped) >= src.stat().st_size


def test_fp16_source_compressed_below_its_size(tmp_path, digits):
    src = _fp16_source(tmp_path, digits)
    out = tmp_path / "q.ekb"
    edgekit.pack(str(src), "rpi4", out, calib=digits.calib, eval_data=digits.eval,
                 labels=digits.labels, recipe="static_int8")
    m = open_bundle(out).manifest
    assert m.model.size_bytes <= 0.6 * src.stat().st_size
    assert m.primary.fidelity.accuracy_drop <= 0.01
