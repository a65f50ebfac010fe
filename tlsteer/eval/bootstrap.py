"""Intervals on rates: percentile bootstrap (:func:`bootstrap_ci` of any statistic,
:func:`paired_difference_ci`) and the exact binomial interval (:func:`clopper_pearson`).

Rows (the first axis) are resampled with replacement with a seeded NumPy generator, so every
bootstrap interval is reproducible. NaN and inf are refused. A share of successes among few units
gets :func:`clopper_pearson` instead: the bootstrap of ``0/n`` is ``[0, 0]``, which claims a
certainty ``n`` trials cannot give.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from tlsteer._types import is_int

__all__ = ["bootstrap_ci", "clopper_pearson", "paired_difference_ci"]


def _finite(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(float(value))


def _check_values(values: Any, name: str = "values") -> np.ndarray:
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be an array of numbers, got {type(values).__name__}: {err}") from err
    if array.ndim == 0:
        raise ValueError(f"{name} must be a 1-D array (or 2-D, one row per sample), got a scalar {values!r}")
    if array.shape[0] == 0 or array.size == 0:
        raise ValueError(f"{name} is empty; the bootstrap needs at least one sample")
    bad = ~np.isfinite(array)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} has {int(bad.sum())} non-finite entries (first at index {first}: "
            f"{array[first]}); the bootstrap needs finite values"
        )
    return array


def _scalar(value: Any, what: str) -> float:
    array = np.asarray(value, dtype=float)
    if array.size != 1:
        raise TypeError(f"statistic must return one number, got shape {array.shape} for the {what}")
    out = float(array.reshape(()))
    if not math.isfinite(out):
        raise ValueError(f"statistic returned {out} for the {what}; it must be finite")
    return out


def bootstrap_ci(
    values: Any,
    n_resamples: Any = 1000,
    level: Any = 0.95,
    seed: Any = 0,
    statistic: Any = np.mean,
) -> tuple[float, float, float]:
    """``(estimate, low, high)``: a percentile-bootstrap interval of ``statistic`` over ``values``.

    Rows (the first axis) are resampled with replacement ``n_resamples`` times with a NumPy
    generator seeded by ``seed``, so the answer is deterministic. ``values`` is 1-D (one score per
    generation) or 2-D (one row per generation, e.g. one-hot class labels with ``statistic=lambda
    x: x.mean(0)[j]``); ``statistic`` maps such an array to one number.

    Args:
        values: Finite scores, at least one row.
        n_resamples: Bootstrap resamples, an int >= 100.
        level: Coverage of the interval, in (0, 1).
        seed: Seed of ``numpy.random.default_rng``, an int >= 0.
        statistic: Array -> number; the default is the mean.

    Example:
        >>> est, low, high = bootstrap_ci([0.0, 1.0, 1.0, 0.0, 1.0], seed=0)
        >>> est, bool(low <= est <= high)
        (0.6, True)
    """
    array = _check_values(values)
    if not is_int(n_resamples) or n_resamples < 100:
        raise ValueError(f"n_resamples must be an int >= 100, got {n_resamples!r}")
    if not _finite(level) or not 0 < float(level) < 1:
        raise ValueError(f"level must be a number in (0, 1), e.g. 0.95, got {level!r}")
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if not callable(statistic):
        raise TypeError(f"statistic must be a callable array -> number, got {statistic!r}")
    estimate = _scalar(statistic(array), "input")
    rng = np.random.default_rng(int(seed))
    n = array.shape[0]
    stats = np.empty(int(n_resamples))
    for r in range(int(n_resamples)):
        stats[r] = _scalar(statistic(array[rng.integers(0, n, size=n)]), f"resample {r}")
    tail = 100 * (1 - float(level)) / 2
    low, high = np.percentile(stats, [tail, 100 - tail])
    return estimate, float(low), float(high)


def paired_difference_ci(
    a: Any,
    b: Any,
    n_resamples: Any = 1000,
    level: Any = 0.95,
    seed: Any = 0,
) -> tuple[float, float, float]:
    """``(estimate, low, high)`` of ``mean(a) - mean(b)``, resampling the pairs ``(a[i], b[i])``.

    The same resampled indices are used for both arrays, so a per-prompt effect shared by the two
    methods cancels out.

    Example:
        >>> est, low, high = paired_difference_ci([1.0, 2.0, 3.0, 4.0], [0.5, 1.5, 2.5, 3.5])
        >>> est, low, high
        (0.5, 0.5, 0.5)
    """
    first, second = _check_values(a, "a"), _check_values(b, "b")
    if first.ndim != 1 or second.ndim != 1 or first.shape != second.shape:
        raise ValueError(
            f"a and b must be 1-D arrays of the same length (one score per pair), got shapes "
            f"{first.shape} and {second.shape}"
        )
    pairs = np.stack([first, second], axis=1)
    return bootstrap_ci(pairs, n_resamples, level, seed, statistic=_mean_difference)


def _mean_difference(pairs: np.ndarray) -> float:
    return float(pairs[:, 0].mean() - pairs[:, 1].mean())


def clopper_pearson(successes: Any, n: Any, level: Any = 0.95) -> tuple[float, float, float]:
    """``(estimate, low, high)``: ``successes / n`` and its exact binomial (Clopper-Pearson) interval.

    ``low`` is the success probability at which ``successes`` or more successes have probability
    ``(1 - level) / 2``, ``high`` the one at which ``successes`` or fewer have it (beta quantiles,
    ``scipy.stats.beta``); ``low`` is 0 for no success and ``high`` 1 for all. The coverage is at
    least ``level`` for every success probability, and ``0/n`` gets a real upper bound
    (``1 - ((1 - level) / 2) ** (1 / n)``), not ``[0, 0]``.

    Args:
        successes: Successes, an int in ``[0, n]``.
        n: Trials, an int >= 1.
        level: Coverage of the interval, in (0, 1).

    Example:
        >>> est, low, high = clopper_pearson(0, 16)
        >>> est, low, round(high, 4)
        (0.0, 0.0, 0.2059)
        >>> [round(v, 4) for v in clopper_pearson(5, 16)]
        [0.3125, 0.1102, 0.5866]
    """
    if not is_int(n) or n < 1:
        raise ValueError(f"n must be an int >= 1 (the number of trials), got {n!r}")
    if not is_int(successes) or not 0 <= successes <= n:
        raise ValueError(f"successes must be an int in [0, n={int(n)}], got {successes!r}")
    if not _finite(level) or not 0 < float(level) < 1:
        raise ValueError(f"level must be a number in (0, 1), e.g. 0.95, got {level!r}")
    from scipy.stats import beta  # a dependency; loaded on first use (importing it takes a while)

    k, total, tail = int(successes), int(n), (1 - float(level)) / 2
    low = 0.0 if k == 0 else float(beta.ppf(tail, k, total - k + 1))
    high = 1.0 if k == total else float(beta.ppf(1 - tail, k + 1, total - k))
    return k / total, low, high
