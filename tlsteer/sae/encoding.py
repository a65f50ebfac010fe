"""Feature activations of prompts: :func:`encode` reads a feature dictionary's hook and encodes it.

The dictionary is a sae-lens SAE or any :class:`~tlsteer.dictionary.FeatureDictionary`
(:func:`~tlsteer.sae.adapter.as_feature_dictionary`). Each prompt is read at one position (an int,
negative from the end), at its last token, or as the mean of the feature activations over a token
span (say, the assistant's answer). Reading is the core's engine (:mod:`tlsteer.reading`) with the
dictionary's encoder as its transform: left-padded batches (or, for pairs, each pair's common
prefix run once), only one batch of activations alive at a time, and a batched read equal to a
one-by-one read up to float error. Contrast data gives the core's one contrast container,
:class:`~tlsteer.contrast.ContrastActivations`, tagged with the dictionary's fingerprint.
"""

from __future__ import annotations

from typing import Any

from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from tlsteer.contrast import ContrastActivations
from tlsteer.dictionary import fingerprint
from tlsteer.read import Read
from tlsteer.reading import as_contrast, plan_reads, read_all
from tlsteer.sae.adapter import as_feature_dictionary

__all__ = ["encode"]


def encode(
    model: HookedTransformer,
    sae: object,
    prompts: Any,
    *,
    read: Read | None = None,
    batch_size: int = 8,
    hook_name: str | None = None,
    share_prefix: bool = True,
) -> Float[Tensor, "n d_sae"] | ContrastActivations:
    """Feature activations ``[len(prompts), width]`` (float32, CPU) at the dictionary's hook.

    Args:
        model: A ``HookedTransformer`` with a tokenizer.
        sae: A sae-lens SAE whose ``d_in`` is ``model.cfg.d_model``, or any
            :class:`~tlsteer.dictionary.FeatureDictionary` that fits the model.
        prompts: Prompt strings; or contrast pairs (``ContrastPair`` or ``(positive,
            negative)`` tuples) or a ``ContrastSet``, which give a
            :class:`~tlsteer.contrast.ContrastActivations` at the hook, whose ``dictionary`` is
            the dictionary's fingerprint.
        read: Where each prompt is read (default :meth:`Read.answer <tlsteer.Read.answer>`: a
            pair's own read position, else the last token); :meth:`Read.mean
            <tlsteer.Read.mean>` averages the feature activations over a span.
        batch_size: Prompts per forward pass.
        hook_name: Where an SAE reads, if its metadata does not say.
        share_prefix: For pairs, run each pair's common prefix once (see
            :func:`tlsteer.extract_activations`).

    Example:
        >>> feats = encode(model, sae, ["I love it", "I hate it"])  # doctest: +SKIP
        >>> feats.shape  # doctest: +SKIP
        torch.Size([2, 16384])
        >>> answer = encode(model, sae, prompts, read=Read.mean((-5, None)))  # doctest: +SKIP
        >>> contrast = encode(model, sae, pairs)  # doctest: +SKIP
        >>> contrast.mean_difference().topk(5)  # doctest: +SKIP
    """
    dictionary = as_feature_dictionary(sae, hook_name, model)  # anything else is refused by name
    hook = dictionary.hook_name
    plan = plan_reads(model, prompts, read)
    rows = read_all(
        model, plan, [hook], transform=dictionary.encode, batch_size=batch_size, share_prefix=share_prefix
    )
    if plan.kind == "prompts":
        return rows[hook]
    return as_contrast(plan, rows, dictionary=fingerprint(dictionary))
