"""The one contrast container: :class:`ContrastActivations`, positive and negative rows per hook.

Whatever reads contrast data returns it: :func:`tlsteer.extract_activations` (residual
activations at several hooks), ``tlsteer.sae.encode`` on pairs or a ContrastSet (feature
activations at a dictionary's hook), and the contrasts of the feature-vs-CAA comparison. Row ``i``
of each side is pair ``i`` when ``paired``; a :class:`~tlsteer.ContrastSet` gives unpaired rows,
whose sides may differ in size. ``dictionary`` says which space the rows are in: ``None`` for the
activations at the hook themselves, else the fingerprint (:func:`tlsteer.dictionary.fingerprint`)
of the feature dictionary whose features they are, so rows of two spaces are never mixed up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from jaxtyping import Float
from torch import Tensor

__all__ = ["ContrastActivations"]


def _check_side(name: str, side: Any) -> dict[str, Tensor]:
    if not isinstance(side, Mapping):
        raise TypeError(f"{name} must map hook names to [n, d] tensors, got {type(side).__name__}")
    for hook, rows in side.items():
        if not isinstance(hook, str) or not isinstance(rows, Tensor) or rows.ndim != 2:
            shape = tuple(rows.shape) if isinstance(rows, Tensor) else type(rows).__name__
            raise TypeError(f"{name}[{hook!r}] must be a [n, d] tensor under a hook name, got {shape}")
    return dict(side)


@dataclass(frozen=True, eq=False)
class ContrastActivations:
    """Activations of the positive and negative prompts of contrast data, keyed by full hook name.

    Args:
        positive: ``{hook: [n_pos, d]}``.
        negative: ``{hook: [n_neg, d]}``, at the same hooks and of the same width.
        paired: Row ``i`` of both sides comes from pair ``i`` (then ``n_pos == n_neg``).
        dictionary: ``None`` when the rows are the activations at each hook; the fingerprint of a
            feature dictionary when they are its feature activations.

    Example:
        >>> import torch
        >>> acts = ContrastActivations({"blocks.0.hook_resid_post": torch.ones(2, 3)},
        ...                            {"blocks.0.hook_resid_post": torch.zeros(2, 3)}, paired=True)
        >>> acts.mean_difference(), acts.space
        (tensor([1., 1., 1.]), 'activations')
    """

    positive: dict[str, Tensor]
    negative: dict[str, Tensor]
    paired: bool
    dictionary: str | None = None

    def __post_init__(self) -> None:
        positive = _check_side("positive", self.positive)
        negative = _check_side("negative", self.negative)
        if list(positive) != list(negative):
            raise ValueError(
                "positive and negative rows must be at the same hooks, got "
                f"{list(positive)} and {list(negative)}"
            )
        for hook, pos in positive.items():
            neg = negative[hook]
            if pos.shape[1] != neg.shape[1]:
                raise ValueError(
                    f"positive rows have width {pos.shape[1]} but negative rows {neg.shape[1]} at {hook!r}"
                )
            if self.paired and pos.shape[0] != neg.shape[0]:
                raise ValueError(
                    f"paired activations need as many positives as negatives, got {pos.shape[0]} and "
                    f"{neg.shape[0]} at {hook!r}"
                )
        if self.dictionary is not None and not (isinstance(self.dictionary, str) and self.dictionary):
            raise TypeError(f"dictionary must be a fingerprint string or None, got {self.dictionary!r}")
        object.__setattr__(self, "positive", positive)
        object.__setattr__(self, "negative", negative)

    @property
    def hooks(self) -> list[str]:
        """The hook names, in order."""
        return list(self.positive)

    @property
    def space(self) -> Literal["activations", "features"]:
        """``"features"`` when the rows are a dictionary's feature activations, else ``"activations"``."""
        return "activations" if self.dictionary is None else "features"

    def _hook(self, hook: str | None) -> str:
        if hook is None:
            if len(self.positive) != 1:
                raise ValueError(f"these rows are at {len(self.positive)} hooks {self.hooks}; name one")
            return self.hooks[0]
        if hook not in self.positive:
            raise KeyError(f"no activations at {hook!r}; hooks: {self.hooks}")
        return hook

    def rows(self, hook: str | None = None) -> tuple[Float[Tensor, "n_pos d"], Float[Tensor, "n_neg d"]]:
        """``(positive, negative)`` rows at ``hook`` (``None``: the only hook)."""
        name = self._hook(hook)
        return self.positive[name], self.negative[name]

    def mean_difference(self, hook: str | None = None) -> Float[Tensor, " d"]:
        """``mean(positive) - mean(negative)`` at ``hook`` (``None``: the only hook), in float32.

        For paired rows this is also the mean of the paired differences.
        """
        pos, neg = self.rows(hook)
        return pos.float().mean(0) - neg.float().mean(0)
