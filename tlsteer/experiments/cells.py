"""A cell of the comparison: one method at one side-effect budget on one task.

Every method of :mod:`tlsteer.experiments.methods` is built from the same contrast at the same
hook; its strength is set by calibration, not by hand: the strength at which its mean per-token KL
divergence from the unsteered model on neutral text reaches the budget (:func:`calibrate_method`,
bisection in log strength; prompting has no strength and is measured as it is). The neutral text
is never a test prompt. :func:`cell_steerings` turns the calibrations into one :class:`Steering`
per cell, which a task scores on its test data (:mod:`tlsteer.experiments.class_task`,
:mod:`tlsteer.experiments.ab_task`, :mod:`tlsteer.experiments.analogy_task`); every rate comes with
a 95% bootstrap interval (:func:`interval`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from transformer_lens import HookedTransformer

from tlsteer.eval.budget import bootstrap_ci, calibrate_to_kl, kl_stats
from tlsteer.experiments.methods import Method
from tlsteer.positions import Positions
from tlsteer.steering import Steering

__all__ = ["calibrate_method", "cell_steerings", "interval"]


def _kl(
    model: HookedTransformer, steering: Steering, neutral: Sequence[str], batch_size: int, cache: Any = None
) -> Any:
    # steered and measured from position 1 on (position 0 is an attention sink)
    return kl_stats(
        model,
        steering.at(Positions.start_at(1)),
        prompts=list(neutral),
        measure_from=1,
        batch_size=batch_size,
        cache=cache,
    )


def calibrate_method(
    model: HookedTransformer,
    method: Method,
    neutral: Sequence[str],
    budgets: Sequence[float],
    *,
    high: float = 4.0,
    batch_size: int = 32,
) -> dict[float, dict[str, Any]]:
    """Per budget: the strength whose mean KL on ``neutral`` meets it, and the KL stats there.

    Evaluations are shared between budgets, and each search starts from a guess (secant steps of
    :func:`~tlsteer.eval.budget.calibrate_to_kl`). Prompting has no strength: its KL is measured once
    and reported for every budget (``reached`` says whether it is within 10% of the budget).
    """
    if not method.has_strength:
        stats = _kl(model, method.at(None), neutral, batch_size)
        return {
            b: {
                "strength": None,
                "kl_mean": stats.mean,
                "kl_p95": stats.p95,
                "reached": abs(stats.mean / b - 1) <= 0.1,
            }
            for b in budgets
        }
    memo: dict[float, Any] = {}
    clean: dict = {}

    def stats_at(strength: float) -> Any:
        if strength not in memo:
            memo[strength] = _kl(model, method.at(strength), neutral, batch_size, clean)
        return memo[strength]

    high = high * 10 if method.kind == "clamp" else high
    # a first guess near where methods land (a quarter of the residual norm, or 2.5 typical
    # activations), then the previous budget's strength scaled as if KL grew as its square
    start, previous = (2.5 if method.kind == "clamp" else 0.25), None
    out = {}
    for b in sorted(budgets):
        if previous is not None and previous[1] > 0:
            start = previous[1] * (b / previous[0]) ** 0.5
        cal = calibrate_to_kl(lambda s: stats_at(s).mean, b, high=high, start=start)
        previous = (b, cal.strength)
        stats = stats_at(cal.strength)
        out[b] = {
            "strength": cal.strength,
            "kl_mean": stats.mean,
            "kl_p95": stats.p95,
            "reached": cal.reached,
        }
    return out


def interval(values: Any, n_resamples: int, statistic: Any = np.mean) -> dict[str, float]:
    """A cell's rate: ``{"value", "low", "high"}``, the statistic and its seeded 95% bootstrap interval."""
    est, low, high = bootstrap_ci(
        np.asarray(values, dtype=float), n_resamples=n_resamples, statistic=statistic
    )
    return {"value": float(est), "low": float(low), "high": float(high)}


def cell_steerings(
    methods: Mapping[str, Method], calibrations: Mapping[str, Mapping[float, Mapping[str, Any]]]
) -> dict[str, tuple[Steering, Mapping[str, Any]]]:
    """``{cell key: (steering, calibration)}``: ``"<method>@<budget>"``, or the method's name alone
    for one without a strength (measured once)."""
    cells = {}
    for name, method in methods.items():
        for b, cal in calibrations[name].items():
            key = f"{name}@{b}" if method.has_strength else name
            if key not in cells:
                cells[key] = (method.at(cal["strength"]) if method.has_strength else method.at(None), cal)
    return cells
