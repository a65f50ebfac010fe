"""Operators: how a steering direction changes the activation, and multiplier checks.

An :data:`Operator` maps ``(activation, multiplier * direction)`` to the delta added to the
activation at the steered positions. Operators are plain callables; the factories here build the
usual ones.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = [
    "Operator",
    "ablation_operator",
    "ablation_then_addition_operator",
    "addition_operator",
    "check_multiplier",
    "is_addition",
]

Operator = Callable[[Float[Tensor, "batch pos d_model"], Float[Tensor, " d_model"]], Tensor]
"""``(activation, multiplier * direction) -> delta`` added to the activation."""


def _add(act: Tensor, vector: Tensor) -> Tensor:
    return vector.expand_as(act)


def addition_operator() -> Operator:
    """Add the scaled vector (CAA).

    Example:
        >>> addition_operator()(torch.zeros(1, 2, 3), torch.ones(3)).tolist()
        [[[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]]
    """
    return _add


def is_addition(operator: Operator) -> bool:
    """Whether ``operator`` is :func:`addition_operator`'s (engines may then add a precomputed delta)."""
    return operator is _add


def _projection(act: Tensor, vector: Tensor) -> Tensor:
    norm = vector.norm()
    if norm == 0:
        return torch.zeros_like(act)
    unit = vector / norm
    return (act @ unit)[..., None] * unit


def ablation_operator() -> Operator:
    """Remove the activation's component along the vector (the multiplier's size is unused).

    Example:
        >>> ablation_operator()(torch.tensor([[[3.0, 4.0]]]), torch.tensor([2.0, 0.0])).tolist()
        [[[-3.0, -0.0]]]
    """

    def ablate(act: Tensor, vector: Tensor) -> Tensor:
        return -_projection(act, vector)

    return ablate


def ablation_then_addition_operator() -> Operator:
    """Remove the component along the vector, then add the scaled vector."""

    def ablate_then_add(act: Tensor, vector: Tensor) -> Tensor:
        return vector.expand_as(act) - _projection(act, vector)

    return ablate_then_add


def check_multiplier(multiplier: Any, name: str = "multiplier") -> float:
    """``multiplier`` as a finite float: Python and NumPy reals and 0-d tensors are accepted.

    Example:
        >>> check_multiplier(torch.tensor(2.5))
        2.5
    """
    if isinstance(multiplier, Tensor):
        if multiplier.ndim != 0 or multiplier.is_complex() or multiplier.dtype == torch.bool:
            raise TypeError(f"{name} must be a real number or a 0-d real tensor, got {multiplier!r}")
        multiplier = multiplier.item()
    if isinstance(multiplier, (bool, complex)) or not isinstance(multiplier, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {multiplier!r}")
    value = float(multiplier)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value
