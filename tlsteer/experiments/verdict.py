"""The verdict of a comparison: every method against a reference (CAA), pair by pair, with one word.

A comparison scores every method on the same units (a generation toward a target from a prompt,
an A/B item, an analogy test pair; :attr:`ComparisonResult.units
<tlsteer.experiments.comparison_result.ComparisonResult.units>`), so two methods are compared on
their per-unit difference, not by overlapping intervals. :func:`verdict` does it for every method
of a result against ``reference``:

- **difference**: mean over strata (targets, equal weight) of the mean per-unit difference
  ``method - reference`` within the stratum;
- **bootstrap over clusters** (prompts), stratified: a resample draws clusters with replacement,
  and each drawn cluster brings its unit in every stratum, so each target keeps its size and the
  pairing of a prompt across targets is kept (when strata do not share their clusters, each
  stratum draws its own); the same draws serve every method;
- **two-sided bootstrap p-value** ``min(1, 2 min(P*(d <= 0), P*(d >= 0)))``, which orders the
  methods for **Holm** across one table: the i-th (of m) is tested at ``alpha / (m - i + 1)``
  until the first that fails, and a test rejects when the percentile interval at that level
  (quantiles of the resamples, no interpolation) excludes 0. A method's **corrected interval** is
  the interval at its step's level (after the first failure, at the failing step's level), so
  "the corrected interval excludes 0" and "Holm rejects" are the same statement;
- **equivalence**: the (uncorrected) ``equivalence_level`` interval (90%: two one-sided tests at
  5%) lies inside ``[-margin, margin]``.

The word, in this order: ``"better"`` or ``"worse"`` when the corrected interval excludes 0 (by
the sign of the difference); ``"equivalent"`` when the equivalence interval lies inside the
margin; ``"undecided"`` otherwise. :data:`WORDS` lists them. The margin, alpha and levels come
from the pre-registered plan (:mod:`tlsteer.experiments.plan`).

Example:
    >>> table = verdict(result, margin=0.05)  # doctest: +SKIP
    >>> table.rows[0].word  # doctest: +SKIP
    'undecided'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tlsteer._types import is_int

__all__ = ["WORDS", "Verdict", "VerdictRow", "paired_verdict", "verdict"]

WORDS: tuple[str, ...] = ("better", "worse", "equivalent", "undecided")
"""The four words of a verdict, as the README uses them."""


@dataclass(frozen=True)
class VerdictRow:
    """One method against the reference.

    Attributes:
        method: The method's cell label (``"feature_full@0.5"``, ``"prompting"``).
        difference: Mean over strata of ``method - reference`` (success rate difference).
        low, high: The Holm-corrected interval of the difference.
        level: The corrected interval's coverage (``1 - alpha / (m - i + 1)``).
        eq_low, eq_high: The ``equivalence_level`` interval (uncorrected).
        p_value: The two-sided bootstrap p-value (uncorrected).
        word: ``"better"``, ``"worse"``, ``"equivalent"`` or ``"undecided"``.
        n_units: Units compared (pairs).
    """

    method: str
    difference: float
    low: float
    high: float
    level: float
    eq_low: float
    eq_high: float
    p_value: float
    word: str
    n_units: int

    def __str__(self) -> str:
        return f"{self.difference:+.3f} [{self.low:+.3f}, {self.high:+.3f}] {self.word}"


@dataclass(frozen=True)
class Verdict:
    """Every method against the reference on one dataset (or one stratum of it)."""

    reference: str
    rows: tuple[VerdictRow, ...]
    margin: float
    alpha: float
    equivalence_level: float
    n_resamples: int
    stratum: str | None = None
    """``None`` for the pooled table; a target's name for its own table."""

    def row(self, method: str) -> VerdictRow:
        """The row of ``method`` (a cell label); an error lists the rows."""
        for r in self.rows:
            if r.method == method:
                return r
        raise KeyError(f"no row {method!r}; rows: {', '.join(repr(r.method) for r in self.rows)}")

    def to_frame(self) -> pd.DataFrame:
        """One row per method: the fields of :class:`VerdictRow`."""
        return pd.DataFrame([r.__dict__ for r in self.rows])

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "stratum": self.stratum,
            "margin": self.margin,
            "alpha": self.alpha,
            "equivalence_level": self.equivalence_level,
            "n_resamples": self.n_resamples,
            "rows": [dict(r.__dict__) for r in self.rows],
        }


def _check_fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
    return float(value)


def _weights(units: Sequence[tuple[str, int]], n_resamples: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """``[n_resamples, n_units]`` bootstrap weights (how often each unit is drawn), and the strata.

    Shared clusters (every stratum holds the same cluster ids): one draw of clusters per resample,
    applied to every stratum. Otherwise each stratum draws its own clusters.
    """
    strata = list(dict.fromkeys(s for s, _ in units))
    by_stratum = {s: [c for t, c in units if t == s] for s in strata}
    rng = np.random.default_rng(seed)
    weights = np.zeros((n_resamples, len(units)))
    shared = all(sorted(by_stratum[s]) == sorted(by_stratum[strata[0]]) for s in strata)
    if shared:
        clusters = sorted(set(by_stratum[strata[0]]))
        counts = rng.multinomial(len(clusters), np.full(len(clusters), 1 / len(clusters)), size=n_resamples)
        column = {c: i for i, c in enumerate(clusters)}
        for u, (_, c) in enumerate(units):
            weights[:, u] = counts[:, column[c]]
    else:
        for s in strata:
            clusters = sorted(set(by_stratum[s]))
            counts = rng.multinomial(
                len(clusters), np.full(len(clusters), 1 / len(clusters)), size=n_resamples
            )
            column = {c: i for i, c in enumerate(clusters)}
            for u, (t, c) in enumerate(units):
                if t == s:
                    weights[:, u] = counts[:, column[c]]
    return weights, strata


def _stratified_mean(values: np.ndarray, weights: np.ndarray, masks: list[np.ndarray]) -> Any:
    """Mean over strata of each stratum's weighted mean; ``weights`` is ``[R, n]`` or ``[n]``."""
    per = []
    for mask in masks:
        w = weights[..., mask]
        per.append((w * values[mask]).sum(-1) / w.sum(-1))
    return np.mean(per, axis=0)


def paired_verdict(
    outcomes: Mapping[str, Any],
    reference: str,
    units: Any,
    *,
    margin: Any,
    alpha: Any = 0.05,
    equivalence_level: Any = 0.90,
    n_resamples: Any = 2000,
    seed: int = 0,
    stratum: str | None = None,
) -> Verdict:
    """Each method of ``outcomes`` against ``reference``, paired on ``units`` (module docstring).

    Args:
        outcomes: ``{method label: per-unit scores}``, the reference's among them, every array
            aligned with ``units``; finite numbers.
        reference: The method every other is compared with (``"caa@0.5"``).
        units: ``(stratum, cluster)`` per unit: ``(target, prompt index)``; ``("", i)`` unstratified.
        margin: The equivalence margin (> 0, in the outcome's units).
        alpha: The family-wise error rate of the Holm-corrected intervals.
        equivalence_level: Coverage of the equivalence interval (0.90 = TOST at 5%).
        n_resamples: Bootstrap resamples (>= 100), shared by every method.
        seed: Seed of the resampling.
        stratum: Score only this stratum's units (a per-target table); ``None``: all, pooled.

    Returns:
        A :class:`Verdict`, its rows in ``outcomes``' order (the reference left out).

    Example:
        >>> units = [("a", i) for i in range(50)]
        >>> ref = [0.0] * 50
        >>> better = [1.0] * 40 + [0.0] * 10
        >>> paired_verdict({"caa": ref, "x": better}, "caa", units, margin=0.05).row("x").word
        'better'
    """
    if reference not in outcomes:
        raise KeyError(f"reference {reference!r} is not among the methods {list(outcomes)}")
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 < margin < math.inf:
        raise ValueError(f"margin must be a finite number > 0, got {margin!r}")
    alpha = _check_fraction("alpha", alpha)
    equivalence_level = _check_fraction("equivalence_level", equivalence_level)
    if not is_int(n_resamples) or n_resamples < 100:
        raise ValueError(f"n_resamples must be an int >= 100, got {n_resamples!r}")
    units = [(str(s), int(c)) for s, c in units]
    if not units:
        raise ValueError("units is empty; a verdict needs scored units")
    if len(set(units)) != len(units):
        raise ValueError("units repeat a (stratum, cluster); each unit is scored once per method")
    arrays = {}
    for name, values in outcomes.items():
        array = np.asarray(values, dtype=float)
        if array.shape != (len(units),):
            raise ValueError(f"{name!r} has {array.shape} outcomes for {len(units)} units")
        if not np.isfinite(array).all():
            raise ValueError(f"{name!r} has non-finite outcomes (NaN or inf); every unit needs a score")
        arrays[name] = array
    keep = np.ones(len(units), dtype=bool)
    if stratum is not None:
        keep = np.array([s == stratum for s, _ in units])
        if not keep.any():
            valid = sorted({s for s, _ in units})
            raise ValueError(f"stratum {stratum!r} has no units; strata: {valid}")
    kept_units = [u for u, k in zip(units, keep, strict=True) if k]
    weights, strata = _weights(kept_units, int(n_resamples), int(seed))
    masks = [np.array([s == t for s, _ in kept_units]) for t in strata]
    ref = arrays[reference][keep]
    names = [n for n in arrays if n != reference]
    raw = {}
    for name in names:
        diff = arrays[name][keep] - ref
        estimate = float(_stratified_mean(diff, np.ones(len(diff)), masks))
        boot = _stratified_mean(diff, weights, masks)
        p = min(1.0, 2 * min(float((boot <= 0).mean()), float((boot >= 0).mean())))  # for the order
        raw[name] = (estimate, boot, p)

    def interval(boot: np.ndarray, a: float) -> tuple[float, float]:
        # quantiles of the resamples themselves (no interpolation), so that the interval at level
        # 1 - a excludes 0 exactly when the p-value below is at most a
        low, high = np.quantile(boot, [a / 2, 1 - a / 2], method="inverted_cdf")
        return float(low), float(high)

    def excludes_zero(boot: np.ndarray, a: float) -> bool:
        low, high = interval(boot, a)
        return low > 0 or high < 0

    # Holm: the i-th smallest p-value (0-based) is tested at alpha / (m - i), by its interval
    m = len(names)
    order = sorted(names, key=lambda n: raw[n][2])
    level_of, rejected, failed_at = {}, set(), None
    for i, name in enumerate(order):
        step = alpha / (m - i)
        if failed_at is None and excludes_zero(raw[name][1], step):
            rejected.add(name)
        elif failed_at is None:
            failed_at = step
        level_of[name] = step if failed_at is None else failed_at
    rows = []
    for name in names:
        estimate, boot, p = raw[name]
        a = level_of[name]
        low, high = interval(boot, a)
        eq_low, eq_high = interval(boot, 1 - equivalence_level)
        if name in rejected:
            word = "better" if estimate > 0 else "worse"
        elif -margin <= eq_low and eq_high <= margin:
            word = "equivalent"
        else:
            word = "undecided"
        rows.append(
            VerdictRow(
                name,
                estimate,
                low,
                high,
                1 - a,
                eq_low,
                eq_high,
                p,
                word,
                int(keep.sum()),
            )
        )
    return Verdict(reference, tuple(rows), float(margin), alpha, equivalence_level, int(n_resamples), stratum)


def verdict(
    result: Any,
    *,
    margin: Any,
    reference: str = "caa",
    budget: float | None = None,
    alpha: Any = 0.05,
    equivalence_level: Any = 0.90,
    n_resamples: Any = 2000,
    seed: int = 0,
    stratum: str | None = None,
    exclude: Sequence[str] = ("unsteered",),
) -> Verdict:
    """:func:`paired_verdict` on a :class:`~tlsteer.experiments.comparison_result.ComparisonResult`.

    Every cell at ``budget`` (default: the result's first budget) and every cell without a
    budget (prompting) but those in ``exclude`` is compared with ``reference`` at that budget.
    Cells must hold per-unit ``outcomes`` (results written before they were kept cannot be
    compared pairwise, and are refused).
    """
    budget = result.budgets[0] if budget is None else float(budget)
    ref_cell = result.cell(reference, budget)
    cells = [ref_cell] + [
        c
        for c in result.cells.values()
        if c.method not in (reference, *exclude) and c.budget in (budget, None)
    ]
    missing = [c.label for c in cells if c.outcomes is None]
    if missing:
        raise ValueError(
            f"{result.dataset}: cell {missing[0]!r} has no per-unit outcomes (a result written "
            "before they were kept); a paired verdict needs them; rerun the comparison"
        )
    return paired_verdict(
        {c.label: c.outcomes for c in cells},
        ref_cell.label,
        result.units,
        margin=margin,
        alpha=alpha,
        equivalence_level=equivalence_level,
        n_resamples=n_resamples,
        seed=seed,
        stratum=stratum,
    )
