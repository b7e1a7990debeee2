"""Latency judged for the target: host timing only on the host's own ISA, a labelled cost-model
estimate otherwise (Vela's for Ethos-U), and int8 chosen on Arm when the estimate says so."""

from __future__ import annotations

import numpy as np
import pytest

import edgekit
from edgekit.errors import ConfigError
from edgekit.examples import get_example
from edgekit.packer.latency_model import (
    EstimatedTiming,
    HostTiming,
    OpCost,
    estimate_ms,
    host_arch,
    op_costs,
    target_timing,
)
from edgekit.packer.recipes import Recipe
from edgekit.targets import get_profile
from edgekit_agent.bundle.manifest import Manifest
from edgekit_agent.bundle.reader import open_bundle


def test_digits_for_rpi4_ends_in_int8_on_the_cortex_a72_estimate(tmp_path, digits):
    out = tmp_path / "d.ekb"
    result = edgekit.pack(str(digits.onnx), "rpi4", out, calib=digits.calib,
                          eval_data=digits.eval, labels=digits.labels)
    m = open_bundle(out).manifest
    chosen = result.chosen[0]
    assert chosen.recipe.quantization == "static_int8" and chosen.latency.ratio <= 0.8
    # of the int8 candidates the estimate favours, the least lossy (a better calibration of the
    # plain int8 the cost model nominated)
    faster = [c for c in result.candidates if c.fits and c.latency.ratio <= 0.8]
    assert chosen.fidelity.min_sqnr_db == max(c.fidelity.min_sqnr_db for c in faster)
    assert m.model.size_bytes <= 0.30 * m.source["size_bytes"]
    assert m.primary.fidelity.accuracy_drop <= 0.01
    assert m.primary.latency_source == "estimated" and m.source["latency_source"] == "estimated"
    assert m.primary.latency_ms < 0.8 * m.source["latency_ms"]
    # fp16 fitted first; int8 was still built because the A72 estimate predicted it faster
    tried = [c.recipe.name for c in result.candidates]
    assert tried[:2] == ["fp32", "fp16"] and result.candidates[1].fits
    assert result.candidates[1].latency.source == "estimated"
    assert result.candidates[1].latency.ratio == pytest.approx(1.0, abs=0.02)
    # fp16 is less lossy; int8 won by the speed preference, and the summary says so
    assert result.candidates[1].fidelity.min_sqnr_db > result.chosen[0].fidelity.min_sqnr_db
    assert "less lossy fp16" in result.why and "speed is judged" in result.why
    # the key survives a manifest round trip, and the table marks estimates
    assert Manifest.from_dict(m.to_dict()).to_dict()["latency_source"] == "estimated"
    assert " est" in result.render()


def test_x86_64_target_follows_host_timing(tmp_path, digits):
    out = tmp_path / "x.ekb"
    result = edgekit.pack(str(digits.onnx), "x86-64", out, calib=digits.calib,
                          eval_data=digits.eval, labels=digits.labels, runtime="onnxruntime")
    m = open_bundle(out).manifest
    expected = "measured-host" if host_arch() == "x86_64" else "estimated"
    assert m.primary.latency_source == expected
    assert all(c.latency.source == expected for c in result.candidates if c.latency)
    if expected == "measured-host":  # a measurement, not the cost model's figure
        est = EstimatedTiming(get_profile("x86-64"), digits.onnx.read_bytes(), "onnx")
        assert m.source["latency_ms"] != pytest.approx(est.reference_estimate_ms, rel=0.05)
        chosen = result.chosen[0]
        assert chosen.latency.ratio <= 1.10  # the speed check judged the host's own timing


def test_timing_kind_follows_the_target_isa():
    onnx = get_example("digits").onnx.read_bytes()
    for name in ("rpi4", "rpi5", "stm32h7", "ethos-u55-128", "coral-usb"):
        assert isinstance(target_timing(get_profile(name), onnx, "onnx"),
                          HostTiming if host_arch() == "aarch64" and name.startswith("rpi")
                          else EstimatedTiming), name


def test_cost_model_figures():
    tfl = get_example("digits").tflite.read_bytes()
    costs = op_costs(tfl, "tflite")
    assert [c.op for c in costs] == ["CONV_2D", "CONV_2D", "MAX_POOL_2D", "RESHAPE",
                                     "FULLY_CONNECTED", "FULLY_CONNECTED"]
    assert sum(c.macs for c in costs) == 337536
    rpi4 = get_profile("rpi4")
    # rpi4: max(compute, memory) + 8 us per op, by hand for the largest conv
    conv = costs[1]
    assert estimate_ms([conv], rpi4) == pytest.approx(
        (max(conv.macs / 10e9, conv.bytes / 4e9) + 8e-6) * 1e3)
    int8 = [OpCost(c.op, c.macs, c.bytes // 4, "int8") for c in costs]
    for name, at_most in (("rpi4", 0.8), ("stm32h7", 0.25), ("nrf52840", 0.25)):
        p = get_profile(name)
        assert estimate_ms(int8, p) <= at_most * estimate_ms(costs, p), name
        assert EstimatedTiming(p, tfl, "tflite").worth_trying(Recipe("static_int8")), name
    # stm32h7: 480 MHz, 8 cycles/MAC fp32 -> the convs alone take >= 337536*8/480e6 s
    assert estimate_ms(costs, get_profile("stm32h7")) >= 337536 * 8 / 480e6 * 1e3
    assert not EstimatedTiming(rpi4, tfl, "tflite").worth_trying(Recipe("fp16"))


def test_ethos_u_latency_is_velas_estimate(tmp_path, digits):
    out = tmp_path / "e.ekb"
    edgekit.pack(str(digits.tflite), "ethos-u55-128", out, calib=digits.calib,
                 eval_data=digits.eval, labels=digits.labels, recipe="static_int8")
    m = open_bundle(out).manifest
    vela = m.primary.target_report.details["vela"]
    assert m.primary.latency_source == "estimated"
    assert m.primary.latency_ms == pytest.approx(vela["inference_time_ms"], rel=1e-3)
    assert m.primary.latency_ms < m.source["latency_ms"]  # NPU int8 vs float on the M55


@pytest.mark.parametrize("table, key", [("fp32_gmacs = -1.0", "latency.fp32_gmacs"),
                                        ("warp = 9.0", "latency.warp"),
                                        ('int8_gmacs = "fast"', "latency.int8_gmacs")])
def test_bad_latency_tables_name_the_key(tmp_path, table, key):
    (tmp_path / "board.toml").write_text(f'inherit = "rpi4"\n\n[latency]\n{table}\n')
    with pytest.raises(ConfigError, match=key):
        get_profile("board", [tmp_path])


def test_latency_tables_inherit_key_by_key(tmp_path):
    (tmp_path / "board.toml").write_text('inherit = "rpi4"\n\n[latency]\nint8_gmacs = 44.0\n')
    p = get_profile("board", [tmp_path])
    assert p.latency["int8_gmacs"] == 44.0 and p.latency["fp32_gmacs"] == 10.0
    assert np.isclose(get_profile("coral-usb").latency["fp32_gmacs"], 10.0)
