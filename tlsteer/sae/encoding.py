"""Feature activations of prompts: :func:`encode` reads the SAE's hook and encodes it.

Each prompt is read at one position (an int, negative from the end), at its last token, or as the
mean of the feature activations over a token span (say, the assistant's answer). Reading streams
in left-padded batches (:mod:`tlsteer.reading`): only one batch of residuals is alive at a
time, and a batched read equals a one-by-one read up to float error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from tlsteer.read import Read
from tlsteer.reading import ReadPlan, plan_reads, read_all
from tlsteer.sae.adapter import SAELike, as_sae, check_sae, sae_dims

__all__ = ["ContrastFeatures", "encode", "sae_transform"]


@dataclass(frozen=True, eq=False)
class ContrastFeatures:
    """Feature activations of the positive and negative prompts of contrast data (float32, CPU).

    ``paired`` is true for pairs (row ``i`` of each side is pair ``i``), false for a ContrastSet.
    """

    positive: Float[Tensor, "n_pos d_sae"]
    negative: Float[Tensor, "n_neg d_sae"]
    paired: bool


def sae_transform(sae: SAELike) -> Callable[[Tensor], Tensor]:
    """The SAE's encoder as a transform of residual rows (moved to the SAE's device)."""
    device = sae.W_dec.device

    def transform(rows: Tensor) -> Tensor:
        return sae.encode(rows.to(device))

    return transform


def encode_plan(
    model: HookedTransformer, sae: SAELike, hook: str, plan: ReadPlan, batch_size: int
) -> Float[Tensor, "n d_sae"]:
    """Feature activations of every prompt of a plan, in its order."""
    _, d_sae = sae_dims(sae)
    return read_all(model, hook, plan, sae_transform(sae), d_sae, batch_size)


def encode(
    model: HookedTransformer,
    sae: object,
    prompts: Any,
    *,
    read: Read | None = None,
    batch_size: int = 8,
    hook_name: str | None = None,
) -> Float[Tensor, "n d_sae"] | ContrastFeatures:
    """Feature activations ``[len(prompts), d_sae]`` (float32, CPU) at the SAE's hook.

    Args:
        model: A ``HookedTransformer`` with a tokenizer.
        sae: A sae-lens SAE whose ``d_in`` is ``model.cfg.d_model``.
        prompts: Prompt strings; or contrast pairs (``ContrastPair`` or ``(positive,
            negative)`` tuples) or a ``ContrastSet``, which return :class:`ContrastFeatures`.
        read: Where each prompt is read (default :meth:`Read.answer <tlsteer.Read.answer>`: a
            pair's own read position, else the last token); :meth:`Read.mean
            <tlsteer.Read.mean>` averages the feature activations over a span.
        batch_size: Prompts per forward pass.
        hook_name: Where the SAE reads, if its metadata does not say.

    Example:
        >>> feats = encode(model, sae, ["I love it", "I hate it"])  # doctest: +SKIP
        >>> feats.shape  # doctest: +SKIP
        torch.Size([2, 16384])
        >>> answer = encode(model, sae, prompts, read=Read.mean((-5, None)))  # doctest: +SKIP
    """
    sae = as_sae(sae)  # anything else is refused here, naming what it lacks
    hook = check_sae(model, sae, hook_name)
    plan = plan_reads(model, prompts, read)
    features = encode_plan(model, sae, hook, plan, batch_size)
    if plan.kind == "prompts":
        return features
    n = plan.n_positive
    return ContrastFeatures(features[:n], features[n:], paired=plan.kind == "pairs")
