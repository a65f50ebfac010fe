"""Exact binomial intervals (:func:`tlsteer.eval.bootstrap.clopper_pearson`): closed forms at the
edges, published values, and the defining tail probabilities computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tlsteer.eval import clopper_pearson as exported
from tlsteer.eval.bootstrap import bootstrap_ci, clopper_pearson


def binomial_tail(k: int, n: int, p: float, upper: bool) -> float:
    """P(X >= k) (upper) or P(X <= k) for X ~ Binomial(n, p), summed term by term."""
    ks = range(k, n + 1) if upper else range(0, k + 1)
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in ks)


def test_edges_have_closed_forms_and_no_success_is_not_zero_width():
    est, low, high = clopper_pearson(0, 16)
    assert (est, low) == (0.0, 0.0)
    assert high == pytest.approx(0.2059, abs=5e-5)
    assert high == pytest.approx(1 - 0.025 ** (1 / 16), rel=1e-9)
    est, low, high = clopper_pearson(16, 16)
    assert (est, high) == (1.0, 1.0)
    assert low == pytest.approx(0.7941, abs=5e-5)
    assert low == pytest.approx(0.025 ** (1 / 16), rel=1e-9)
    # the bootstrap of 0/n collapses to [0, 0]; the exact interval does not
    assert bootstrap_ci(np.zeros(16))[1:] == (0.0, 0.0)
    for n in (1, 5, 20):
        assert clopper_pearson(0, n)[2] == pytest.approx(1 - 0.025 ** (1 / n), rel=1e-9)
        assert clopper_pearson(0, n, level=0.9)[2] == pytest.approx(1 - 0.05 ** (1 / n), rel=1e-9)


def test_published_values():
    # 5 of 16 and 7 of 20 to 4 decimals (scipy.stats.binomtest's exact interval gives the same)
    assert [round(v, 4) for v in clopper_pearson(5, 16)] == [0.3125, 0.1102, 0.5866]
    assert [round(v, 4) for v in clopper_pearson(7, 20)] == [0.35, 0.1539, 0.5922]


@pytest.mark.parametrize(("k", "n"), [(1, 16), (7, 16), (15, 16), (3, 20), (10, 20), (1, 2)])
def test_bounds_solve_the_defining_tail_equations(k, n):
    _, low, high = clopper_pearson(k, n)
    assert 0 < low < k / n < high < 1
    assert binomial_tail(k, n, low, upper=True) == pytest.approx(0.025, abs=1e-9)
    assert binomial_tail(k, n, high, upper=False) == pytest.approx(0.025, abs=1e-9)
    wider = clopper_pearson(k, n, level=0.99)
    assert wider[1] < low and wider[2] > high


def test_exported_and_numpy_ints():
    assert exported is clopper_pearson
    assert clopper_pearson(np.int64(3), np.int64(20)) == clopper_pearson(3, 20)


def test_bad_input():
    with pytest.raises(ValueError, match=r"n must be an int >= 1 \(the number of trials\), got 0"):
        clopper_pearson(0, 0)
    with pytest.raises(ValueError, match="n must be an int >= 1 .*got 16.0"):
        clopper_pearson(0, 16.0)
    with pytest.raises(ValueError, match=r"successes must be an int in \[0, n=16\], got 17"):
        clopper_pearson(17, 16)
    with pytest.raises(ValueError, match=r"successes must be an int in \[0, n=16\], got -1"):
        clopper_pearson(-1, 16)
    with pytest.raises(ValueError, match=r"successes must be an int in \[0, n=16\], got 2.5"):
        clopper_pearson(2.5, 16)
    with pytest.raises(ValueError, match=r"successes must be an int in \[0, n=16\], got True"):
        clopper_pearson(True, 16)
    with pytest.raises(ValueError, match=r"level must be a number in \(0, 1\), e.g. 0.95, got 95"):
        clopper_pearson(3, 16, level=95)
