"""Relation vectors across folds and domains: within-domain scores, the cross-domain matrix, and
the same contrast in an SAE's feature space.

:func:`analogy_folds` cuts every domain into folds (fold f tests on part f, validates on part
f + 1 and trains on the rest, so every pair is tested once); per fold and domain it builds the
relation vector (:func:`tlsteer.analogy.relation_contrast`), chooses its layer and multiplier on
the validation pairs (:func:`tlsteer.analogy.choose_layer_and_multiplier`) and scores the test
pairs unsteered, steered, with random directions of the same norm and with the few-shot prompt;
every domain's vector is also scored on every domain's test pairs (the cross-domain matrix). With
SAEs, the raw vector at each SAE's layer is compared with the SAE feature-space difference of the
same contrast decoded through ``W_dec``. :func:`shared_features` lists the features that several
domains' contrasts move most. Scores are pooled over folds (:class:`AnalogyFolds`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformer_lens import HookedTransformer

from tlsteer.analogy import (
    AnalogyDomain,
    AnalogyScore,
    choose_layer_and_multiplier,
    next_token_accuracy,
    random_like,
    relation_accuracy,
    relation_contrast,
)
from tlsteer.caa import train_steering_vector
from tlsteer.dictionary import FeatureDictionary
from tlsteer.read import Read
from tlsteer.sae.adapter import SAELike, as_feature_dictionary, logit_lens
from tlsteer.sae.formulas import feature_vector

__all__ = ["SCORED", "AnalogyFolds", "analogy_folds", "shared_features"]

LOG = logging.getLogger(__name__)
SCORED = ("none", "relation", "random", "few_shot")
"""What each domain's test pairs are scored with (see :func:`analogy_folds`)."""
SPACES = ("raw", "feature")


def _pooled(ranks: Sequence[int]) -> dict[str, Any]:
    return AnalogyScore.from_ranks(ranks).to_dict()


@dataclass(frozen=True)
class AnalogyFolds:
    """Test ranks pooled over folds (rank 0: the answer is the top next token).

    ``ranks[domain][method]``; ``cross[(vector's domain, prompts' domain)]``;
    ``chosen[domain]``: each fold's ``(layer, multiplier)``; ``space_ranks[(layer, domain,
    space)]`` for ``space`` in ``"raw"``, ``"feature"`` at each SAE's layer.
    """

    domains: tuple[str, ...]
    pairs: dict[str, int]
    ranks: dict[str, dict[str, list[int]]]
    cross: dict[tuple[str, str], list[int]]
    chosen: dict[str, list[tuple[int, float]]]
    space_ranks: dict[tuple[int, str, str], list[int]]

    def cross_matrix(self, key: str = "top5") -> np.ndarray:
        """``[vector's domain, prompts' domain]`` pooled ``"top1"`` or ``"top5"`` accuracy."""
        names = self.domains
        return np.array([[_pooled(self.cross[(a, b)])[key] for b in names] for a in names])

    def to_dict(self) -> dict[str, Any]:
        """``domains`` (pooled scores and choices) and ``cross_domain`` (both matrices, rounded)."""
        domains = {}
        for name in self.domains:
            row: dict[str, Any] = {"pairs": self.pairs[name], "chosen_layer_multiplier": self.chosen[name]}
            row.update({method: _pooled(r) for method, r in self.ranks[name].items()})
            domains[name] = row
        cross = {k: self.cross_matrix(k).round(3).tolist() for k in ("top1", "top5")}
        return {
            "domains": domains,
            "cross_domain": {"rows_vector_columns_prompts": list(self.domains), **cross},
        }

    def feature_space(self, layer: int) -> dict[str, dict[str, Any]]:
        """``{domain: {"raw": pooled score, "feature": pooled score}}`` at an SAE's layer."""
        return {
            name: {sp: _pooled(self.space_ranks[(layer, name, sp)]) for sp in SPACES} for name in self.domains
        }


def analogy_folds(
    model: HookedTransformer,
    domains: Mapping[str, AnalogyDomain],
    *,
    layers: Sequence[int],
    choose_from: Sequence[int],
    multipliers: Sequence[float],
    shots: int = 5,
    folds: int = 4,
    n_random: int = 5,
    saes: Mapping[int, SAELike] | None = None,
    split_seed: int = 0,
) -> AnalogyFolds:
    """Score every domain's relation vector on its held-out pairs, fold by fold (module docstring).

    Args:
        model: The steered model.
        domains: ``{name: AnalogyDomain}`` (e.g. :func:`tlsteer.analogy.load_analogies`).
        layers: Layers the relation vectors are built at (``choose_from`` and the SAEs' layers).
        choose_from: Layers the validation pairs choose from.
        multipliers: Multipliers the validation pairs choose from.
        shots: Demonstrations per few-shot prompt.
        folds: Number of folds (:meth:`AnalogyDomain.folds`, seeded with ``split_seed``).
        n_random: Random directions per test (seeds ``10 * fold + i``), pooled.
        saes: ``{layer: SAE}``: the raw and decoded feature-space vectors at those layers, each
            with its multiplier chosen on the validation pairs.

    Example:
        >>> result = analogy_folds(model, load_analogies(), layers=[6, 12], choose_from=[6, 12],
        ...                        multipliers=[1.0, 2.0])  # doctest: +SKIP
        >>> result.to_dict()["cross_domain"]["top5"]  # doctest: +SKIP
    """
    start = time.perf_counter()
    saes = dict(saes or {})
    names = list(domains)
    split = {name: d.folds(folds, seed=split_seed) for name, d in domains.items()}
    ranks: dict[str, dict[str, list[int]]] = {name: {m: [] for m in SCORED} for name in names}
    cross: dict[tuple[str, str], list[int]] = {(a, b): [] for a in names for b in names}
    space_ranks = {(layer, name, sp): [] for layer in saes for name in names for sp in SPACES}
    chosen: dict[str, list[tuple[int, float]]] = {name: [] for name in names}
    for f in range(folds):
        vectors, picks = {}, {}
        for name in names:
            train, val, test = split[name][f]
            contrast = relation_contrast(train, shots, seed=f)
            vectors[name] = train_steering_vector(model, contrast, layers=list(layers))
            picks[name] = choose_layer_and_multiplier(model, val, vectors[name], choose_from, multipliers)
            chosen[name].append(picks[name])
            layer, m = picks[name]
            vec = vectors[name].select(layer)
            few = relation_contrast(test, shots, seed=100 + f, pool=train)
            ranks[name]["none"] += relation_accuracy(model, test).ranks
            ranks[name]["relation"] += relation_accuracy(model, test, vec, m).ranks
            ranks[name]["few_shot"] += next_token_accuracy(
                model, [p for p, _ in few], [y for _, y in test]
            ).ranks
            for seed in range(n_random):  # pooled over random directions of the same norm
                ranks[name]["random"] += relation_accuracy(
                    model, test, random_like(vec, 10 * f + seed), m
                ).ranks
            for layer_s, sae in saes.items():
                fv = feature_vector(model, sae, contrast, formula="paired", read=Read.last())
                for space, v in (
                    ("raw", vectors[name].select(layer_s)),
                    ("feature", fv.to_steering_vector(sae)),
                ):
                    _, m_s = choose_layer_and_multiplier(model, val, v, [layer_s], multipliers)
                    space_ranks[(layer_s, name, space)] += relation_accuracy(model, test, v, m_s).ranks
        for a in names:
            layer, m = picks[a]
            for b in names:
                cross[(a, b)] += relation_accuracy(model, split[b][f][2], vectors[a].select(layer), m).ranks
        LOG.info("analogy fold %d done (%.0f s)", f, time.perf_counter() - start)
    pairs = {name: len(domains[name].pairs) for name in names}
    return AnalogyFolds(tuple(names), pairs, ranks, cross, chosen, space_ranks)


def shared_features(
    model: HookedTransformer,
    sae: SAELike | FeatureDictionary,
    domains: Mapping[str, AnalogyDomain],
    *,
    shots: int = 5,
    k: int = 20,
    min_domains: int = 3,
    lens_tokens: int = 5,
) -> dict[str, Any]:
    """Each domain's ``k`` largest feature-space differences (its contrast over all its pairs) and
    the features in the lists of at least ``min_domains`` domains, with the tokens they promote.

    Returns ``{"top20": {domain: features}, "top20_overlap": [[shared counts]], "shared_features":
    {feature: {"domains", "promotes"}}}`` (``top20`` names the list whatever ``k`` is).
    """
    dictionary = as_feature_dictionary(sae, model=model)
    names = list(domains)
    top = {
        name: feature_vector(
            model,
            sae,
            relation_contrast(list(domains[name].pairs), shots),
            formula="paired",
            read=Read.last(),
        )
        .top_k(k)
        .features
        for name in names
    }
    counts = Counter(f for feats in top.values() for f in feats)
    lens = {}
    for feat in sorted(f for f, c in counts.items() if c >= min_domains):
        promoted, _ = logit_lens(model, dictionary.decoder_rows(torch.tensor([feat]))[0], lens_tokens)
        lens[feat] = {"domains": [n for n in names if feat in top[n]], "promotes": [t for t, _ in promoted]}
    overlap = [[len(set(top[a]) & set(top[b])) for b in names] for a in names]
    return {"top20": top, "top20_overlap": overlap, "shared_features": lens}
