"""Steering by codes, both ways: the paper's bottleneck with codes forced on, and adding codes.

- :func:`bottleneck_steering`, the paper's way: at the codebook's hook, the activation is replaced
  by the codebook's output (the mean of its ``k`` chosen codes) with the ``forced`` codes made to
  fire (:meth:`~tlsteer.codebook.Codebook.codes`), at the steering's positions. A code is on or
  off; there is no strength. With no forced code it is the codebook spliced in, reconstruction
  error and all.
- :func:`code_vector`, additive: the chosen codes' contributions to the output
  (:meth:`~tlsteer.codebook.Codebook.decoder_rows`, ``vectors / k``) summed into one
  :class:`~tlsteer.SteeringVector`, added to the activation at a strength; the activation itself
  (the codebook's error term included) is kept, as feature steering keeps an SAE's.

Both are :class:`~tlsteer.Steering` values, so generation, positions under the KV cache and
batching are the core's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tlsteer.codebook.codebook import Codebook
from tlsteer.dictionary import check_feature_ids
from tlsteer.positions import Positions
from tlsteer.steering import Steering
from tlsteer.vector import SteeringVector, VectorMetadata

__all__ = ["bottleneck_steering", "code_vector"]


def _codebook(codebook: Any) -> Codebook:
    if not isinstance(codebook, Codebook):
        raise TypeError(f"expected a tlsteer.codebook.Codebook, got {type(codebook).__name__}")
    return codebook


def bottleneck_steering(
    codebook: Codebook, forced: Any = (), *, positions: Positions | None = None
) -> Steering:
    """The codebook as a bottleneck at its hook, with ``forced`` codes on (see the module docstring).

    Args:
        codebook: The codebook (its ``hook_name`` is where it acts).
        forced: Code ids made to fire at every steered position (at most ``k``; ``()``: none).
        positions: Where the bottleneck acts (default: every position).

    Example:
        >>> with bottleneck_steering(book, forced=[17]).apply(model):  # doctest: +SKIP
        ...     logits = model(tokens)
    """
    book = _codebook(codebook)
    wanted = tuple(book.check_forced(forced))

    def bottleneck(act: Tensor) -> Tensor:
        return book.reconstruct(act, wanted).to(device=act.device, dtype=act.dtype) - act

    return Steering.from_edits(
        [(book.hook_name, bottleneck)],
        positions=Positions.all() if positions is None else positions,
        model_name=book.model_name,
    )


def code_vector(codebook: Codebook, codes: Any, weights: Any = None) -> SteeringVector:
    """The codes' summed contributions to the codebook's output, a direction to add at its hook.

    ``weights`` (one per code, default 1) scale each code's row; the direction is
    ``weights @ decoder_rows(codes)`` (so strength 1 adds what switching the codes on adds to the
    output, ``vectors / k`` each).

    Example:
        >>> vec = code_vector(book, [17, 40])  # doctest: +SKIP
        >>> steering = vec.steering(4.0)  # doctest: +SKIP
    """
    book = _codebook(codebook)
    ids = check_feature_ids(codes, book.n_codes, "the codebook", "n_codes")  # any number may be added
    w = torch.ones(len(ids)) if weights is None else torch.as_tensor(weights, dtype=torch.float32).reshape(-1)
    if w.numel() != len(ids) or not torch.isfinite(w).all():
        raise ValueError(f"weights must be {len(ids)} finite numbers (one per code), got {weights!r}")
    rows = book.decoder_rows(torch.tensor(ids))
    direction = (w.to(rows) @ rows).float().cpu()
    if not float(direction.norm()) > 0:
        raise ValueError(f"codes {ids} add up to a zero direction")
    note = f"codebook codes {ids} at {book.hook_name}"
    return SteeringVector({book.hook_name: direction}, VectorMetadata(model_name=book.model_name, note=note))
