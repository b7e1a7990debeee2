"""The product rule: of the candidates that fit every budget, the least lossy wins (ties within
0.5 dB: smaller, then faster), measured on the built-in digits model for Ethos-U."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import edgekit
from edgekit.packer.recipes import Recipe
from edgekit.packer.search import FASTER_CHOICE, TIE_DB, lossier_by_construction, preference


@pytest.fixture(scope="module")
def stock(tmp_path_factory, digits):
    """The digits model packed for the stock Ethos-U55 board: {recipe name: candidate}, result."""
    out = tmp_path_factory.mktemp("eu") / "d.ekb"
    result = edgekit.pack(str(digits.onnx), "ethos-u55-128", out, calib=digits.calib,
                          eval_data=digits.eval, labels=digits.labels)
    return {c.recipe.name: c for c in result.candidates}, result


def test_ethos_u_digits_ships_int16x8_when_it_and_int8_both_fit(stock):
    by_name, result = stock
    int8, int16 = by_name["static_int8"], by_name["static_int16x8"]
    assert int8.fits and int16.fits
    # int16 activations: far less lossy than plain int8, at no more flash
    assert int16.fidelity.decision_sqnr_db > int8.fidelity.decision_sqnr_db + 10 * TIE_DB
    assert len(int16.shipped) <= 1.05 * len(int8.shipped)
    assert result.chosen[0] is int16
    fitting = [c for c in result.candidates if c.fits]
    assert int16.fidelity.decision_sqnr_db == max(c.fidelity.decision_sqnr_db for c in fitting)
    assert result.manifest.primary.name == "static_int16x8"
    assert result.why.startswith("least lossy that fits")
    assert f"chosen static_int16x8: {result.why}" in result.render()
    assert result.to_dict()["why"] == result.why


def test_an_sram_budget_int16x8_misses_hands_the_choice_to_int8(tmp_path, digits, stock):
    by_name, _ = stock
    int8_sram = by_name["static_int8"].compiled.report.sram_bytes
    int16_sram = by_name["static_int16x8"].compiled.report.sram_bytes
    assert int16_sram > int8_sram  # int16 activations take twice the bytes
    budget = (int8_sram + int16_sram) // 2
    (tmp_path / "u55-small.toml").write_text(
        f'inherit = "ethos-u55-128"\nram_bytes = {budget}\n')
    result = edgekit.pack(str(digits.onnx), "u55-small", tmp_path / "s.ekb",
                          calib=digits.calib, eval_data=digits.eval, labels=digits.labels,
                          targets_dirs=(str(tmp_path),))
    tried = {c.recipe.name: c for c in result.candidates}
    assert not tried["static_int16x8"].fits
    assert f"ram: needs {int16_sram} B" in tried["static_int16x8"].rejected
    chosen = result.chosen[0]
    assert chosen.recipe.quantization == "static_int8" and chosen.fits
    fitting = [c for c in result.candidates if c.fits]
    assert chosen.fidelity.decision_sqnr_db == max(c.fidelity.decision_sqnr_db for c in fitting)
    # the better calibration was built although plain int8 fitted first, and it won
    assert chosen.fidelity.decision_sqnr_db > tried["static_int8"].fidelity.decision_sqnr_db


def test_recipes_that_only_take_more_away_are_not_built_after_a_fit():
    int8 = Recipe("static_int8")
    assert lossier_by_construction(Recipe("static_int8", sparsity=0.5, clusters=16), int8)
    assert lossier_by_construction(Recipe("static_int8"), Recipe("fp16"))
    assert not lossier_by_construction(Recipe("static_int16x8"), int8)
    assert not lossier_by_construction(Recipe("static_int8", calibration="tuned"), int8)
    assert not lossier_by_construction(Recipe("static_int8", mixed_precision=True), int8)


def _cand(name: str, db: float, size: int, ms: float) -> SimpleNamespace:
    return SimpleNamespace(name=name, fidelity=SimpleNamespace(decision_sqnr_db=db),
                           shipped=b"\0" * size, latency=SimpleNamespace(p50_ms=ms))


def test_the_rule_on_its_own_ties_then_speed():
    a, b, c = _cand("a", 40.0, 900, 1.0), _cand("b", 40.0 - TIE_DB / 2, 800, 1.0), \
        _cand("c", 30.0, 800, 0.5)
    assert [x.name for x in preference([a, b, c])] == ["b", "a", "c"]  # tie: smaller first
    same = _cand("d", 40.0, 800, 0.9)
    assert preference([b, same])[0] is same  # tied and as small: faster
    # where speed is judged, c at 0.5x the p50 of the least lossy one wins
    assert preference([a, b, c], prefer_speed=True)[0] is c
    assert preference([a, _cand("e", 30.0, 800, FASTER_CHOICE * 1.01)], prefer_speed=True)[0] is a
