"""The contrast every method of the comparison is built from: positive and negative examples at one hook.

A class set's contrast is one class against all the others, read from a profile
(:func:`contrast_from_profile`); CAA contrast pairs are read at each pair's read index
(:func:`contrast_from_pairs`). Both give :class:`~tlsteer.experiments.methods.ContrastReps`: the
raw activations and their SAE codes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformer_lens import HookedTransformer

from tlsteer.data import ContrastPair
from tlsteer.experiments.methods import ContrastReps
from tlsteer.read import Read
from tlsteer.reading import plan_reads, read_all
from tlsteer.sae.adapter import SAELike, sae_dims

__all__ = ["contrast_from_pairs", "contrast_from_profile"]


def contrast_from_profile(profile: Any, target: str) -> ContrastReps:
    """Class ``target`` against all other classes of an :class:`~tlsteer.sae.SAEClassProfile`."""
    target = profile.check_class(target)
    raw, feat = profile.reps["raw"], profile.reps["feature"]
    others = [c for c in profile.classes if c != target]
    return ContrastReps(
        raw[target],
        torch.cat([raw[c] for c in others]),
        feat[target],
        torch.cat([feat[c] for c in others]),
        paired=False,
        class_means=profile.means("raw"),
    )


def contrast_from_pairs(
    model: HookedTransformer, sae: SAELike, pairs: Sequence[ContrastPair], hook_name: str, batch_size: int = 8
) -> ContrastReps:
    """Paired reps of contrast pairs at each pair's read index, raw and encoded, in one pass."""
    d_in, d_sae = sae_dims(sae)

    def both(rows: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            encoded = sae.encode(rows.to(sae.W_dec.device)).float().to(rows.device)
        return torch.cat([rows.float(), encoded], dim=-1)

    plan = plan_reads(model, list(pairs), Read.answer())
    rows = read_all(model, hook_name, plan, both, d_in + d_sae, batch_size)
    n = plan.n_positive
    return ContrastReps(rows[:n, :d_in], rows[n:, :d_in], rows[:n, d_in:], rows[n:, d_in:], paired=True)
