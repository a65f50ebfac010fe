"""Diagnostics: how well a vector separates its data, how it compares with others, which items it moves.

Per layer (:func:`layer_diagnostics`): the vector's norm, that norm relative to the residual norm,
the mean cosine of the per-pair differences with their mean (:func:`pair_cosines`), and the
held-out accuracy of classifying activations by their projection on the vector
(:func:`projection_accuracy`). Across behaviours: :func:`cosine_matrix` and CAA's per-layer
:func:`normalize_to_mean_norm`. Across items: :func:`steerability`, the slope of each item's logit
difference against the multiplier. All functions are pure; none runs the model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from tlsteer._types import parse_hook_name
from tlsteer.contrast import ContrastActivations
from tlsteer.errors import format_options
from tlsteer.eval.ab import ABResult
from tlsteer.vector import SteeringVector

__all__ = [
    "SlopeAxis",
    "Steerability",
    "cosine_matrix",
    "layer_diagnostics",
    "normalize_to_mean_norm",
    "pair_cosines",
    "projection_accuracy",
    "relative_norms",
    "split_activations",
    "steerability",
]

SlopeAxis = Literal["multiplier", "multiplier_abs"]
"""What :func:`steerability` fits the logit difference against."""


def relative_norms(vector: SteeringVector, norms: Mapping[str, float]) -> dict[str, float]:
    """Each direction's norm divided by the mean residual norm at its hook (:func:`residual_norms`).

    Example:
        >>> v = SteeringVector({"blocks.1.hook_resid_post": torch.tensor([3.0, 4.0])})
        >>> relative_norms(v, {"blocks.1.hook_resid_post": 10.0})
        {'blocks.1.hook_resid_post': 0.5}
    """
    missing = [h for h in vector.hooks if h not in norms]
    if missing:
        raise KeyError(f"hooks {missing} not in norms; norms has {format_options(norms)}")
    return {h: float(d.norm()) / float(norms[h]) for h, d in vector.directions.items()}


def _cosine(a: Tensor, b: Tensor) -> Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


def pair_cosines(acts: ContrastActivations) -> dict[str, float]:
    """Per hook, the mean cosine of each pair's difference ``pos - neg`` with the mean difference.

    Near 1: the pairs agree on one direction; near 0: the mean hides disagreeing pairs.
    """
    if not acts.paired:
        raise ValueError("pair_cosines needs paired activations (from contrast pairs, not a ContrastSet)")
    out = {}
    for hook in acts.hooks:
        diffs = acts.positive[hook] - acts.negative[hook]
        out[hook] = float(_cosine(diffs, diffs.mean(0, keepdim=True)).mean())
    return out


def split_activations(
    acts: ContrastActivations, train_indices: Sequence[int]
) -> tuple[ContrastActivations, ContrastActivations]:
    """``(train, test)``: the rows at ``train_indices`` of each side, and the other rows."""
    sizes = {acts.positive[h].shape[0] for h in acts.hooks} | {acts.negative[h].shape[0] for h in acts.hooks}
    smallest = min(sizes)
    chosen = sorted(set(train_indices))
    bad = [i for i in chosen if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < smallest]
    if bad or not chosen:
        raise ValueError(
            f"train_indices must be a non-empty list of row indices in 0..{smallest - 1}, "
            f"got {list(train_indices)!r}"
        )

    def part(side: dict[str, Tensor], keep_train: bool) -> dict[str, Tensor]:
        out = {}
        for hook, a in side.items():
            mask = torch.zeros(a.shape[0], dtype=torch.bool)
            mask[chosen] = True
            out[hook] = a[mask if keep_train else ~mask]
        return out

    train = ContrastActivations(part(acts.positive, True), part(acts.negative, True), acts.paired)
    test = ContrastActivations(part(acts.positive, False), part(acts.negative, False), acts.paired)
    if any(a.shape[0] == 0 for a in [*test.positive.values(), *test.negative.values()]):
        raise ValueError(f"train_indices {chosen} leave no test rows on one side; keep some rows out")
    return train, test


def _projection_accuracy(
    train_pos: Float[Tensor, "n_tp d_model"],
    train_neg: Float[Tensor, "n_tn d_model"],
    test_pos: Float[Tensor, "n_sp d_model"],
    test_neg: Float[Tensor, "n_sn d_model"],
    direction: Float[Tensor, " d_model"],
) -> float:
    d = direction.double()
    mu_pos, mu_neg = float((train_pos.double() @ d).mean()), float((train_neg.double() @ d).mean())
    threshold = (mu_pos + mu_neg) / 2
    sign = 1.0 if mu_pos >= mu_neg else -1.0
    right_pos = int(((test_pos.double() @ d - threshold) * sign > 0).sum())
    right_neg = int(((test_neg.double() @ d - threshold) * sign <= 0).sum())
    return (right_pos + right_neg) / (test_pos.shape[0] + test_neg.shape[0])


def projection_accuracy(
    train: ContrastActivations, test: ContrastActivations, vector: SteeringVector | None = None
) -> dict[str, float]:
    """Per hook, held-out accuracy of telling positive from negative by the projection on the vector.

    The threshold is the midpoint of the training classes' mean projections; a test activation is
    called positive when it lies on the positive class's side of it. Without ``vector`` the
    direction is the training class-mean difference (the CAA vector of ``train``).

    Example:
        >>> train, test = split_activations(acts, range(60))  # doctest: +SKIP
        >>> projection_accuracy(train, test)  # doctest: +SKIP
        {'blocks.6.hook_resid_post': 0.95}
    """
    if set(train.hooks) != set(test.hooks):
        raise KeyError(f"train and test hooks differ: {sorted(train.hooks)} vs {sorted(test.hooks)}")
    if vector is not None:
        missing = [h for h in train.hooks if h not in vector.directions]
        if missing:
            raise KeyError(f"hooks {missing} not in the vector; vector hooks: {vector.hooks}")
    out = {}
    for hook in train.hooks:
        if vector is None:
            direction = train.positive[hook].mean(0) - train.negative[hook].mean(0)
        else:
            direction = vector.directions[hook].to(train.positive[hook])
        out[hook] = _projection_accuracy(
            train.positive[hook], train.negative[hook], test.positive[hook], test.negative[hook], direction
        )
    return out


def layer_diagnostics(
    vector: SteeringVector,
    norms: Mapping[str, float] | None = None,
    train: ContrastActivations | None = None,
    test: ContrastActivations | None = None,
) -> pd.DataFrame:
    """One row per hook of ``vector``: ``layer``, ``hook``, ``norm``, and what the inputs allow.

    ``relative_norm`` needs ``norms``; ``pair_cosine`` needs paired ``train`` activations;
    ``heldout_accuracy`` needs ``train`` and ``test`` (the split is the caller's, see
    :func:`split_activations`). Columns whose inputs are missing are left out.
    """
    frame = pd.DataFrame(
        {
            "layer": [parse_hook_name(h)[0] for h in vector.hooks],
            "hook": vector.hooks,
            "norm": [float(d.norm()) for d in vector.directions.values()],
        }
    )
    for acts, name in ((train, "train"), (test, "test")):
        if acts is not None and set(acts.hooks) != set(vector.hooks):
            raise KeyError(
                f"{name} activations have hooks {sorted(acts.hooks)}; the vector has {vector.hooks}"
            )
    if norms is not None:
        frame["relative_norm"] = [relative_norms(vector, norms)[h] for h in vector.hooks]
    if train is not None and train.paired:
        frame["pair_cosine"] = [pair_cosines(train)[h] for h in vector.hooks]
    if test is not None:
        if train is None:
            raise ValueError("held-out accuracy needs train activations too (for the threshold)")
        accuracy = projection_accuracy(train, test, vector)
        frame["heldout_accuracy"] = [accuracy[h] for h in vector.hooks]
    return frame


def cosine_matrix(vectors: Mapping[str, SteeringVector], layer: int | str) -> pd.DataFrame:
    """Cosine similarity between behaviours' directions at one layer (or full hook name).

    Example:
        >>> cosine_matrix({"honesty": h, "sycophancy": s}, 6)  # doctest: +SKIP
    """
    if len(vectors) < 1:
        raise ValueError("cosine_matrix needs at least one vector")
    names = list(vectors)
    stacked = torch.stack([vectors[n][layer].double() for n in names])
    unit = stacked / stacked.norm(dim=-1, keepdim=True)
    return pd.DataFrame((unit @ unit.T).numpy(), index=names, columns=names)


def normalize_to_mean_norm(vectors: Mapping[str, SteeringVector]) -> dict[str, SteeringVector]:
    """CAA's normalisation: at each hook, scale every behaviour's direction to their mean norm.

    All vectors must have the same hooks. Directions keep their own direction; at each hook every
    output has the norm ``mean_b |v_b[hook]|``.

    Example:
        >>> same = normalize_to_mean_norm({"honesty": h, "refusal": r})  # doctest: +SKIP
    """
    if not vectors:
        raise ValueError("normalize_to_mean_norm needs at least one vector")
    names = list(vectors)
    hooks = set(vectors[names[0]].hooks)
    for name in names[1:]:
        if set(vectors[name].hooks) != hooks:
            raise KeyError(
                f"vector {name!r} has hooks {vectors[name].hooks} but {names[0]!r} has "
                f"{vectors[names[0]].hooks}; all vectors need the same hooks"
            )
    for name in names:
        for hook, d in vectors[name].directions.items():
            if d.norm() == 0:
                raise ValueError(f"direction of {name!r} at {hook!r} is zero and cannot be rescaled")
    mean_norm = {h: sum(float(vectors[n].directions[h].norm()) for n in names) / len(names) for h in hooks}
    out = {}
    for name in names:
        vec = vectors[name]
        directions = {h: d * (mean_norm[h] / d.norm()) for h, d in vec.directions.items()}
        note = f"normalize_to_mean_norm({vec.metadata.note or name})"
        out[name] = SteeringVector(directions, dataclasses.replace(vec.metadata, note=note))
    return out


# -- per-item steerability ----------------------------------------------------------------------


@dataclass(frozen=True)
class Steerability:
    """Per-item slopes of ``logit_diff`` against the multiplier, and their summary.

    ``slopes`` has a ``slope`` per ``item`` (and per ``layer`` when the sweep had layers);
    ``summary`` has, per layer, ``n_items`` (items with a defined slope), ``mean_slope``,
    ``std_slope`` (sample standard deviation, ddof=1) and ``anti_steerable`` (the share of
    items with a negative slope).
    """

    slopes: pd.DataFrame
    summary: pd.DataFrame


def _results_frame(results: Mapping[float | int, ABResult]) -> pd.DataFrame:
    rows = []
    for m, result in results.items():
        if not isinstance(result, ABResult):
            raise TypeError(f"results must map multipliers to ABResult, got {type(result).__name__} at {m!r}")
        rows.extend((float(m), i, s.logit_diff) for i, s in enumerate(result.scores))
    return pd.DataFrame(rows, columns=["multiplier", "item", "logit_diff"])


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    if not np.isfinite(y).all():
        return float("nan")
    dx = x - x.mean()
    return float((dx * (y - y.mean())).sum() / (dx * dx).sum())


def steerability(data: pd.DataFrame | Mapping[float | int, ABResult], x: str = "multiplier") -> Steerability:
    """Least-squares slope of each item's logit difference against the multiplier.

    An item whose logit difference falls as the multiplier grows is anti-steerable. Items with an
    undefined logit difference (answers outside A/B) get a NaN slope and are left out of the
    summary.

    Args:
        data: A :func:`sweep_items` frame, or ``{multiplier: ABResult}`` for one vector.
        x: Fit against the sweep's ``multiplier`` or the applied ``multiplier_abs`` (:data:`SlopeAxis`).

    Example:
        >>> st = steerability(sweep_items(model, items, vec, [6], [-2, -1, 0, 1, 2]))  # doctest: +SKIP
        >>> st.summary[["layer", "mean_slope", "anti_steerable"]]  # doctest: +SKIP
    """
    if x not in get_args(SlopeAxis):
        raise ValueError(f"unknown x {x!r}; valid: {format_options(get_args(SlopeAxis))}")
    frame = data if isinstance(data, pd.DataFrame) else _results_frame(data)
    if not isinstance(data, pd.DataFrame) and x != "multiplier":
        raise ValueError(f"x={x!r} needs a sweep_items frame; {{multiplier: ABResult}} has only 'multiplier'")
    missing = [c for c in ("item", x, "logit_diff") if c not in frame.columns]
    if missing:
        raise KeyError(
            f"steerability needs per-item rows with columns 'item', {x!r}, 'logit_diff'; missing "
            f"{missing} (use sweep_items, not sweep)"
        )
    keys = ["layer"] if "layer" in frame.columns else []
    rows = []
    for key, group in frame.groupby([*keys, "item"], sort=True):
        xs = group[x].to_numpy(dtype=float)
        if np.unique(xs).size < 2:
            raise ValueError(f"item {key} has {np.unique(xs).size} distinct {x} value(s); a slope needs 2+")
        rows.append((*key, _slope(xs, group["logit_diff"].to_numpy(dtype=float))))
    slopes = pd.DataFrame(rows, columns=[*keys, "item", "slope"])
    summaries = []
    for key, group in slopes.groupby(keys, sort=True) if keys else [((), slopes)]:
        s = group["slope"].dropna()
        summaries.append(
            (
                *key,
                int(s.size),
                float(s.mean()),
                float(s.std(ddof=1)),
                float((s < 0).mean()) if s.size else float("nan"),
            )
        )
    summary = pd.DataFrame(summaries, columns=[*keys, "n_items", "mean_slope", "std_slope", "anti_steerable"])
    return Steerability(slopes, summary)
