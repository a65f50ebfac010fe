"""Steering along an ordered set of classes: does the judged level move with the multiplier?

For an ordinal :class:`~tlsteer.ClassDataset` (levels of aggression, say) a direction along the
order (:meth:`tlsteer.ClassProfile.ordinal_direction`, or any vector) is applied at a range of
multipliers, every prompt is generated at every multiplier in one batched call each, and a
K-class judge over the levels scores every generation by its graded level
(:meth:`~tlsteer.eval.ClassJudge.graded`: the expected level, 0 for the lowest). The result holds
the scores, their mean per multiplier, and the Spearman correlation of score with multiplier over
all generations (and over the per-multiplier means): 1.0 when the level rises monotonically with
the multiplier.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from transformer_lens import HookedTransformer

from tlsteer.decode import generate
from tlsteer.operators import check_multiplier
from tlsteer.positions import Positions
from tlsteer.profile import spearman
from tlsteer.steering import Steering

__all__ = ["OrdinalSweep", "ordinal_sweep"]


@dataclass(frozen=True)
class OrdinalSweep:
    """Graded judge scores of generations steered at each multiplier."""

    multipliers: tuple[float, ...]
    scores: np.ndarray
    """``[len(multipliers), n_prompts]``: the judge's expected level of each generation."""
    classes: tuple[str, ...]
    judge_accuracy: float
    generations: list[list[str]] = field(repr=False)

    @property
    def mean_scores(self) -> np.ndarray:
        return self.scores.mean(1)

    @property
    def spearman(self) -> float:
        """Spearman correlation of every generation's score with its multiplier."""
        m = np.repeat(np.asarray(self.multipliers, dtype=float), self.scores.shape[1])
        return spearman(m, self.scores.reshape(-1))

    @property
    def spearman_of_means(self) -> float:
        """Spearman correlation of the per-multiplier mean score with the multiplier."""
        return spearman(np.asarray(self.multipliers, dtype=float), self.mean_scores)

    def to_dict(self) -> dict[str, Any]:
        return {
            "multipliers": list(self.multipliers),
            "mean_scores": [round(float(s), 4) for s in self.mean_scores],
            "spearman": self.spearman,
            "spearman_of_means": self.spearman_of_means,
            "scores": np.round(self.scores, 4).tolist(),
            "judge_held_out_accuracy": self.judge_accuracy,
            "classes": list(self.classes),
            "examples": {str(m): g[:2] for m, g in zip(self.multipliers, self.generations, strict=True)},
        }


def ordinal_sweep(
    model: HookedTransformer,
    judge: Any,
    prompts: Sequence[str],
    vector: Any,
    multipliers: Sequence[float],
    *,
    scale: float = 1.0,
    positions: Positions | None = None,
    max_new_tokens: int = 40,
    batch_size: int = 16,
    **generate_kwargs: Any,
) -> OrdinalSweep:
    """Generate every prompt steered by ``vector`` at each multiplier; score each by its level.

    Args:
        model: The steered model.
        judge: A :class:`~tlsteer.eval.ClassJudge` whose classes are the levels, lowest first.
        prompts: Prompts (user messages with ``chat=True``, the default here).
        vector: A :class:`~tlsteer.SteeringVector`; multiplier 0 is generated unsteered.
        multipliers: At least 2 distinct finite multipliers (kept in the result as given).
        scale: Each generation is steered at ``multiplier * scale`` (e.g. the mean residual
            norm at the hook with a unit vector, for multipliers in units of that norm).
        positions: Where to steer (default: from each prompt's last token on, ``Positions.last()``).
        max_new_tokens, batch_size, generate_kwargs: For :func:`tlsteer.generate` (greedy and
            chat prompts unless overridden).
    """
    if isinstance(prompts, str) or not prompts:
        raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    values = tuple(float(check_multiplier(m)) for m in multipliers)
    if len(set(values)) < 2:
        raise ValueError(f"multipliers must hold at least 2 distinct values, got {list(multipliers)}")
    scale = float(check_multiplier(scale))
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    kwargs = {"chat": True, **generate_kwargs}
    where = Positions.last() if positions is None else positions
    scores, generations = [], []
    for m in values:
        steer = Steering.from_vector(vector, m * scale, positions=where) if m != 0 else None
        texts = generate(
            model, list(prompts), steer, max_new_tokens=max_new_tokens, batch_size=batch_size, **kwargs
        )
        generations.append(texts)
        scores.append(judge.graded(texts))
    return OrdinalSweep(
        values, np.stack(scores), tuple(judge.classes), float(judge.held_out_accuracy), generations
    )
