"""Aggregators: pure functions that turn positive and negative activations into a direction.

An aggregator is any callable ``(pos [N, d_model], neg [M, d_model]) -> [d_model]``. The factories
here return the usual ones; pass your own callable for anything else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = [
    "Aggregator",
    "aggregate_activations",
    "class_mean_aggregator",
    "logistic_aggregator",
    "mean_aggregator",
    "pca_aggregator",
]

Aggregator = Callable[
    [Float[Tensor, "n_pos d_model"], Float[Tensor, "n_neg d_model"]], Float[Tensor, " d_model"]
]


def _check_paired(pos: Tensor, neg: Tensor, name: str) -> None:
    if pos.shape != neg.shape:
        raise ValueError(
            f"{name} needs paired activations of equal shape, got positive {tuple(pos.shape)} "
            f"and negative {tuple(neg.shape)}; use class_mean_aggregator() for unpaired data"
        )
    if pos.shape[0] == 0:
        raise ValueError(f"{name} got no activations")


def mean_aggregator() -> Aggregator:
    """Mean of the paired differences ``mean(pos - neg)`` (the CAA vector).

    Example:
        >>> mean_aggregator()(torch.tensor([[3.0, 1.0]]), torch.tensor([[1.0, 1.0]]))
        tensor([2., 0.])
    """

    def mean_of_differences(pos: Tensor, neg: Tensor) -> Tensor:
        _check_paired(pos, neg, "mean_aggregator")
        return (pos - neg).mean(dim=0)

    mean_of_differences.streaming = "paired_mean"  # type: ignore[attr-defined]
    return mean_of_differences


def class_mean_aggregator() -> Aggregator:
    """Difference of class means ``mean(pos) - mean(neg)``; counts may differ."""

    def difference_of_means(pos: Tensor, neg: Tensor) -> Tensor:
        if pos.shape[0] == 0 or neg.shape[0] == 0:
            raise ValueError(
                f"class_mean_aggregator needs at least one activation per class, got "
                f"{pos.shape[0]} positive and {neg.shape[0]} negative"
            )
        return pos.mean(dim=0) - neg.mean(dim=0)

    return difference_of_means


def pca_aggregator() -> Aggregator:
    """First principal component of the paired differences, sign aligned with their mean.

    The differences and their negatives are stacked (so the set has zero mean and the component
    captures a shared offset as well as spread); the returned vector is the unit component scaled
    by the mean projection of the differences onto it, so its norm is comparable to CAA's.
    """

    def first_component(pos: Tensor, neg: Tensor) -> Tensor:
        _check_paired(pos, neg, "pca_aggregator")
        deltas = (pos - neg).double()
        stacked = torch.cat([deltas, -deltas])
        _, _, vh = torch.linalg.svd(stacked, full_matrices=False)
        component = vh[0]
        scale = (deltas @ component).mean()
        if scale < 0:
            component, scale = -component, -scale
        return (component * scale).to(pos.dtype)

    return first_component


def logistic_aggregator(**sklearn_kwargs: Any) -> Aggregator:
    """Weight direction of a scikit-learn logistic regression separating positive from negative.

    The unit weight vector is scaled by the class-mean difference projected onto it.
    ``sklearn_kwargs`` go to ``sklearn.linear_model.LogisticRegression`` (default ``C=0.01``:
    strong regularisation keeps the weight direction close to the class-mean contrast).
    """

    def logistic_direction(pos: Tensor, neg: Tensor) -> Tensor:
        from sklearn.linear_model import LogisticRegression

        if pos.shape[0] == 0 or neg.shape[0] == 0:
            raise ValueError("logistic_aggregator needs at least one activation per class")
        x = torch.cat([pos, neg]).double().cpu().numpy()
        y = [1] * pos.shape[0] + [0] * neg.shape[0]
        clf = LogisticRegression(**{"max_iter": 1000, "C": 0.01, **sklearn_kwargs}).fit(x, y)
        w = torch.as_tensor(clf.coef_[0], dtype=torch.float64)
        w = w / w.norm()
        scale = (pos.double().mean(0) - neg.double().mean(0)).cpu() @ w
        return (w * scale).to(device=pos.device, dtype=pos.dtype)

    return logistic_direction


def aggregate_activations(
    acts: Any, aggregator: Aggregator | None = None
) -> dict[str, Float[Tensor, " d_model"]]:
    """Apply ``aggregator`` at every hook of a :class:`~tlsteer.contrast.ContrastActivations`.

    ``None`` picks :func:`mean_aggregator` for paired data and :func:`class_mean_aggregator`
    for unpaired data.
    """
    if aggregator is None:
        aggregator = mean_aggregator() if acts.paired else class_mean_aggregator()
    if not callable(aggregator):
        raise TypeError(f"aggregator must be a callable (pos, neg) -> direction, got {aggregator!r}")
    out = {}
    for hook, pos in acts.positive.items():
        direction = aggregator(pos, acts.negative[hook])
        if not isinstance(direction, Tensor) or direction.shape != pos.shape[1:]:
            raise ValueError(
                f"aggregator returned {getattr(direction, 'shape', type(direction))} at {hook}; "
                f"expected a tensor of shape {tuple(pos.shape[1:])}"
            )
        if not torch.isfinite(direction).all():
            raise ValueError(f"aggregator returned non-finite values at {hook}")
        out[hook] = direction
    return out
