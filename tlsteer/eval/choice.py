"""Choosing on validation data, never the test set: letter-balanced training items, and the layer
and multiplier of an A/B sweep that move behaviour most.

CAA's recipe picks its layer and strength on held-out generate items, then reports the test set
at that choice. :func:`letter_balanced` picks training items so that the answer letter cancels in
the mean difference; :func:`choose_by_gap` reads a :func:`~tlsteer.eval.sweeps.summarize_sweep`
frame and picks the ``(layer, m)`` with the largest ``p(matching | +m) - p(matching | -m)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from tlsteer.data import ABItem

__all__ = ["GapChoice", "choose_by_gap", "letter_balanced"]


def letter_balanced(items: Sequence[ABItem], n: int, pool: Sequence[int] | None = None) -> list[int]:
    """Indices of ``n // 2`` items whose matching answer is ``(A)`` and as many ``(B)``, in order.

    The first ones of each letter among ``pool`` (default: every item) are taken; the result is
    sorted.

    Example:
        >>> items = [ABItem("q", m, "(B)" if m == "(A)" else "(A)")
        ...          for m in ["(A)", "(A)", "(B)", "(A)", "(B)"]]
        >>> letter_balanced(items, 4)
        [0, 1, 2, 4]
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2 (half per letter), got {n!r}")
    pool = range(len(items)) if pool is None else pool
    half = n // 2
    by_letter = {x: [i for i in pool if items[i].matching == f"({x})"] for x in "AB"}
    short = {x: len(ids) for x, ids in by_letter.items() if len(ids) < half}
    if short:
        found = ", ".join(f"{len(ids)} answered ({x})" for x, ids in by_letter.items())
        raise ValueError(f"need {half} items answered (A) and {half} answered (B); the pool has {found}")
    return sorted(by_letter["A"][:half] + by_letter["B"][:half])


@dataclass(frozen=True)
class GapChoice:
    """The chosen ``layer`` and (positive) ``multiplier``, and the validation ``gap`` there."""

    layer: int
    multiplier: float
    gap: float


def choose_by_gap(
    summary: pd.DataFrame, multipliers: Sequence[float], *, layers: Sequence[int] | None = None
) -> GapChoice:
    """The ``(layer, m)`` with the largest ``p_matching(+m) - p_matching(-m)`` in a sweep summary.

    Args:
        summary: A :func:`~tlsteer.eval.sweeps.summarize_sweep` frame holding ``+m`` and ``-m``
            for every ``m`` of ``multipliers`` at every layer.
        multipliers: The positive multipliers to choose from (in the sweep's units).
        layers: The layers to choose from (default: every layer of the frame, in its order).
            Ties go to the first layer, then the first multiplier, in the order given.

    Example:
        >>> frame = pd.DataFrame({"layer": [3] * 3, "multiplier": [-1.0, 0.0, 1.0],
        ...                       "p_matching": [0.2, 0.5, 0.9]})
        >>> choose_by_gap(frame, [1.0])
        GapChoice(layer=3, multiplier=1.0, gap=0.7...)
    """
    if not multipliers:
        raise ValueError("multipliers is empty; give the positive multipliers to choose from")
    layers = list(dict.fromkeys(summary["layer"])) if layers is None else list(layers)
    best: GapChoice | None = None
    for layer in layers:
        rows = summary[summary["layer"] == layer].set_index("multiplier")["p_matching"]
        for m in multipliers:
            missing = [x for x in (m, -m) if x not in rows.index]
            if missing:
                raise KeyError(
                    f"the sweep has no multiplier {missing[0]!r} at layer {layer}; it has "
                    f"{sorted(rows.index.tolist())}"
                )
            gap = float(rows[m] - rows[-m])
            if best is None or gap > best.gap:
                best = GapChoice(int(layer), float(m), gap)
    if best is None:
        raise ValueError("no layer to choose from")
    return best
