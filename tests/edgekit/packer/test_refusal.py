"""The refusal's first line names the binding constraint: the float model's budget miss before
full integer's fidelity, and a budget every candidate misses before anything else."""

from __future__ import annotations

import pytest

import edgekit
from edgekit import ui
from edgekit.errors import BudgetError


@pytest.fixture(scope="module")
def h7(tmp_path_factory, digits):
    """Every candidate of the digits model on the stock stm32h7, by recipe name."""
    out = tmp_path_factory.mktemp("h7") / "d.ekb"
    result = edgekit.pack(str(digits.onnx), "stm32h7", out, calib=digits.calib,
                          eval_data=digits.eval, labels=digits.labels)
    return {c.recipe.name: c for c in result.candidates}


def _refusal(tmp_path, digits, board: str, **options) -> str:
    with pytest.raises(BudgetError) as err:
        edgekit.pack(str(digits.onnx), board, tmp_path / "r.ekb", calib=digits.calib,
                     eval_data=digits.eval, targets_dirs=(str(tmp_path),), **options)
    assert not (tmp_path / "r.ekb").exists()
    return str(err.value).splitlines()[0]


def test_float_missing_ram_leads_before_int8_fidelity(tmp_path, digits, h7):
    float_ram = h7["fp32"].compiled.report.sram_bytes
    full_int = [c for c in h7.values() if c.recipe.full_integer]
    int_ram = max(c.compiled.report.sram_bytes for c in full_int)
    assert int_ram < float_ram  # measured: int8 arenas are a fraction of float's
    budget = (int_ram + float_ram) // 2
    best = max(c.fidelity.min_sqnr_db for c in full_int)
    floor = round(best + 2.0, 1)
    (tmp_path / "h7-small.toml").write_text(f'inherit = "stm32h7"\nram_bytes = {budget}\n')
    first = _refusal(tmp_path, digits, "h7-small", min_sqnr=floor)
    float_part = (f"no recipe fits h7-small: the float model needs {ui.human_bytes(float_ram)} "
                  f"of RAM")
    assert first.startswith(float_part), first
    assert f"h7-small has {ui.human_bytes(budget)}; full integer reaches at best" in first
    assert f"the floor is {floor:.1f} dB" in first


def test_a_flash_budget_no_candidate_meets_leads(tmp_path, digits, h7):
    smallest = min((c for c in h7.values() if c.compiled), key=lambda c: len(c.shipped))
    budget = smallest.compiled.report.flash_bytes // 2
    (tmp_path / "h7-tiny.toml").write_text(f'inherit = "stm32h7"\nflash_bytes = {budget}\n')
    first = _refusal(tmp_path, digits, "h7-tiny", labels=digits.labels)
    assert first.startswith("no recipe fits h7-tiny: even the smallest candidate ("), first
    assert f"of flash, h7-tiny has {ui.human_bytes(budget)}" in first
    assert "float model" not in first and "dB" not in first
