"""Per-tensor range choice, on measured quantization errors."""

from __future__ import annotations

import numpy as np

from edgekit.packer.ranges import _choose, quant_mse


def test_heavy_tails_get_a_clipped_range_uniform_values_keep_min_max():
    rng = np.random.default_rng(0)
    heavy = rng.laplace(0, 1, 100_000).astype(np.float32)
    c = _choose("heavy", heavy, 8)
    assert c.method in ("mse", "percentile")
    assert c.hi < 0.9 * float(heavy.max()) and c.lo > 0.9 * float(heavy.min())
    full = quant_mse(heavy, float(heavy.min()), float(heavy.max()))
    assert quant_mse(heavy, c.lo, c.hi) < 0.9 * full
    assert c.mse_gain_db > 0.5
    flat = rng.uniform(0, 6, 100_000).astype(np.float32)
    u = _choose("flat", flat, 8)
    assert u.lo == 0.0 and u.hi > 0.999 * float(flat.max())  # nothing worth clipping
