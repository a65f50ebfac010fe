"""The contrast every method of the comparison is built from: positive and negative examples at one hook.

:class:`ContrastReps` is that contrast in both spaces: the activations at the hook and their
feature activations, each a core :class:`~tlsteer.contrast.ContrastActivations` (the one contrast
container). A class set's contrast is one class against all the others, read from a profile
(:func:`contrast_from_profile`); CAA contrast pairs are read at each pair's read index
(:func:`contrast_from_pairs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from tlsteer.contrast import ContrastActivations
from tlsteer.data import ContrastPair
from tlsteer.dictionary import fingerprint
from tlsteer.read import Read
from tlsteer.reading import as_contrast, plan_reads, read_all
from tlsteer.sae.adapter import as_feature_dictionary

__all__ = ["ContrastReps", "contrast_from_pairs", "contrast_from_profile"]


@dataclass(frozen=True, eq=False)
class ContrastReps:
    """Positive and negative examples at one hook: ``raw`` activations and their ``features``.

    Both are one-hook :class:`~tlsteer.contrast.ContrastActivations` of the same examples (row
    ``i`` of ``raw`` and of ``features`` is one example); ``features`` carries its dictionary's
    fingerprint. ``paired``: row ``i`` of both sides comes from one pair (CAA) and the raw vector
    is the mean of differences. ``class_means``: ``[K, d]`` raw means of every class of a class
    set (for ``mean_centred``; ``None`` for pairs).
    """

    raw: ContrastActivations
    features: ContrastActivations
    class_means: Tensor | None = None

    def __post_init__(self) -> None:
        for name, space in (("raw", "activations"), ("features", "features")):
            contrast = getattr(self, name)
            if not isinstance(contrast, ContrastActivations) or len(contrast.hooks) != 1:
                raise TypeError(f"{name} must be a ContrastActivations at one hook, got {contrast!r}")
            if contrast.space != space:
                raise ValueError(
                    f"{name} must hold {space}, got {contrast.space} (dictionary={contrast.dictionary!r})"
                )
        if self.raw.hooks != self.features.hooks or self.raw.paired != self.features.paired:
            raise ValueError(
                f"raw and features must be at one hook with one pairing, got {self.raw.hooks} "
                f"(paired={self.raw.paired}) and {self.features.hooks} (paired={self.features.paired})"
            )
        rows = {
            "raw_pos": self.raw_pos,
            "raw_neg": self.raw_neg,
            "feat_pos": self.feat_pos,
            "feat_neg": self.feat_neg,
        }
        for name, t in rows.items():
            if t.shape[0] < 1:
                raise ValueError(f"{name} must be a [n, d] tensor with n >= 1, got {tuple(t.shape)}")
            if not torch.isfinite(t).all():
                raise ValueError(f"{name} holds non-finite values (NaN or inf)")
        for side in ("pos", "neg"):
            n_raw, n_feat = rows[f"raw_{side}"].shape[0], rows[f"feat_{side}"].shape[0]
            if n_raw != n_feat:
                raise ValueError(
                    f"raw_{side} has {n_raw} rows but feat_{side} has {n_feat}; give one row per example"
                )

    @classmethod
    def from_rows(
        cls,
        raw_pos: Tensor,
        raw_neg: Tensor,
        feat_pos: Tensor,
        feat_neg: Tensor,
        *,
        hook_name: str,
        dictionary: str,
        paired: bool = False,
        class_means: Tensor | None = None,
    ) -> ContrastReps:
        """Reps from their four row blocks (``[n_pos, d_model]``, ``[n_neg, d_model]``, ``[n_pos,
        width]``, ``[n_neg, width]``) at ``hook_name``; ``dictionary`` is the fingerprint of the
        dictionary that encoded the features."""
        raw = ContrastActivations({hook_name: raw_pos}, {hook_name: raw_neg}, paired)
        features = ContrastActivations({hook_name: feat_pos}, {hook_name: feat_neg}, paired, dictionary)
        return cls(raw, features, class_means)

    @property
    def hook_name(self) -> str:
        return self.raw.hooks[0]

    @property
    def paired(self) -> bool:
        return self.raw.paired

    @property
    def raw_pos(self) -> Tensor:
        return self.raw.rows()[0]

    @property
    def raw_neg(self) -> Tensor:
        return self.raw.rows()[1]

    @property
    def feat_pos(self) -> Tensor:
        return self.features.rows()[0]

    @property
    def feat_neg(self) -> Tensor:
        return self.features.rows()[1]

    def raw_difference(self) -> Tensor:
        """``mean(raw_pos) - mean(raw_neg)`` (float32)."""
        return self.raw.mean_difference()

    def feature_difference(self) -> Tensor:
        """``mean(feat_pos) - mean(feat_neg)`` (float32)."""
        return self.features.mean_difference()


def contrast_from_profile(profile: Any, target: str) -> ContrastReps:
    """Class ``target`` against all other classes of an :class:`~tlsteer.sae.SAEClassProfile`."""
    target = profile.check_class(target)
    raw, feat = profile.reps["raw"], profile.reps["feature"]
    others = [c for c in profile.classes if c != target]
    return ContrastReps.from_rows(
        raw[target],
        torch.cat([raw[c] for c in others]),
        feat[target],
        torch.cat([feat[c] for c in others]),
        hook_name=profile.hook_name,
        dictionary=fingerprint(as_feature_dictionary(profile.sae, profile.hook_name)),
        class_means=profile.means("raw"),
    )


def contrast_from_pairs(
    model: HookedTransformer, sae: object, pairs: Sequence[ContrastPair], hook_name: str, batch_size: int = 8
) -> ContrastReps:
    """Paired reps of contrast pairs at each pair's read index: the activations, read in one pass
    (each pair's common prefix run once), and their encoding by ``sae`` (an SAE or any
    :class:`~tlsteer.dictionary.FeatureDictionary` at ``hook_name``)."""
    dictionary = as_feature_dictionary(sae, hook_name, model)
    plan = plan_reads(model, list(pairs), Read.answer())
    raw = as_contrast(plan, read_all(model, plan, [dictionary.hook_name], batch_size=batch_size))
    pos, neg = raw.rows()
    with torch.no_grad():  # one token per example: its features are the encoding of its activation
        feat_pos, feat_neg = (dictionary.encode(rows).float().cpu() for rows in (pos, neg))
    hook = dictionary.hook_name
    features = ContrastActivations({hook: feat_pos}, {hook: feat_neg}, True, fingerprint(dictionary))
    return ContrastReps(raw, features)
