"""Contrast vectors in feature space and in the residual stream, by three formulas.

Let ``F`` be the feature activations of one example under a feature dictionary (an SAE or any
:class:`~tlsteer.dictionary.FeatureDictionary`), read as :func:`~tlsteer.sae.encode` reads them:
every example's *activations* are encoded (never a steering vector). Then

``paired``
    the mean over pairs of ``F_P - F_N`` (data: contrast pairs);
``sums``
    ``(sum_P F_P - sum_N F_N) / |D|``, positives and negatives not necessarily paired, where
    ``|D|`` is the number of positives, which must equal the number of negatives (data: pairs,
    where ``|D|`` is the number of pairs, or a ContrastSet of equal sizes; unequal sizes are
    refused: use ``class_means``);
``class_means``
    ``mean(F_P) - mean(F_N)`` over two classes of any sizes (data: a ContrastSet or pairs).

So ``paired == sums`` on pairs and ``class_means == sums`` on equal sizes, up to float error.
Everything is summed as it streams (float64 running sums), so memory does not grow with the data.
The same formulas on the residual activations themselves are the core's one raw-vector builder,
:func:`tlsteer.train_steering_vector` (``paired``: its default mean of differences; ``class_means``
and, on equal sizes, ``sums``: ``aggregator=class_mean_aggregator()``), read with the same
:class:`~tlsteer.Read`. :func:`encode_steering_vector` is the negative control:
the dictionary's encoding of a CAA direction, which is off an SAE's training distribution.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from tlsteer._types import check_batch_size
from tlsteer.errors import format_options
from tlsteer.read import Read, as_read
from tlsteer.reading import ReadPlan, iter_reads, plan_reads
from tlsteer.sae.adapter import as_feature_dictionary
from tlsteer.sae.features import FeatureVector
from tlsteer.vector import SteeringVector

__all__ = [
    "FORMULAS",
    "Formula",
    "contrast_direction",
    "encode_steering_vector",
    "feature_vector",
]

Formula = Literal["paired", "sums", "class_means"]
FORMULAS: tuple[str, ...] = get_args(Formula)


def _check_formula(formula: Any, plan: ReadPlan) -> str:
    if formula not in FORMULAS:
        raise ValueError(f"unknown formula {formula!r}; valid: {format_options(FORMULAS)}")
    if plan.kind == "prompts":
        raise TypeError(
            "a contrast vector needs contrast data: ContrastPair or (positive, negative) tuples, or a "
            "ContrastSet; got plain prompts"
        )
    if formula == "paired" and plan.kind != "pairs":
        raise ValueError(
            "formula='paired' needs contrast pairs; a ContrastSet has no pairing: use 'sums' (equal sizes) "
            "or 'class_means'"
        )
    if formula == "sums" and plan.n_positive != plan.n_negative:
        raise ValueError(
            f"formula='sums' divides by |D|, the number of positives, which must equal the number of "
            f"negatives; got {plan.n_positive} positives and {plan.n_negative} negatives: use 'class_means'"
        )
    return formula


def contrast_direction(
    model: HookedTransformer, hook: str, plan: ReadPlan, formula: str, transform: Any, batch_size: int
) -> Tensor:
    """The formula's vector (float32, CPU) from streamed sums of ``transform(activations)``."""
    _check_formula(formula, plan)
    sums: dict[bool, Tensor] = {}
    for batch in iter_reads(model, plan, [hook], transform=transform, batch_size=batch_size):
        rows = batch.rows[hook].double()
        positive = torch.tensor([i < plan.n_positive for i in batch.indices])
        for side in (True, False):
            part = rows[positive == side].sum(dim=0)
            sums[side] = sums[side] + part if side in sums else part
    n_pos, n_neg = plan.n_positive, plan.n_negative
    if formula == "class_means":
        out = sums[True] / n_pos - sums[False] / n_neg
    else:  # paired: the mean of F_P - F_N over pairs; sums: over |D| = n_pos = n_neg
        out = (sums[True] - sums[False]) / n_pos
    return out.float()


def _n_examples(plan: ReadPlan) -> int:
    return plan.n_positive if plan.kind == "pairs" else len(plan.prompts)


def feature_vector(
    model: HookedTransformer,
    dictionary: object,
    data: Any,
    formula: str = "paired",
    *,
    read: Read | None = None,
    batch_size: int = 8,
    hook_name: str | None = None,
    note: str = "",
) -> FeatureVector:
    """A contrast vector in a dictionary's feature space from the encoded activations of each example.

    Args:
        model: A ``HookedTransformer`` with a tokenizer.
        dictionary: A sae-lens SAE or a :class:`~tlsteer.dictionary.FeatureDictionary` that fits
            the model.
        data: Contrast pairs (``ContrastPair`` or ``(positive, negative)`` tuples) or a ``ContrastSet``.
        formula: ``"paired"``, ``"sums"`` or ``"class_means"`` (see the module docstring).
        read: Where each prompt is read (default :meth:`Read.answer <tlsteer.Read.answer>`), as
            for :func:`~tlsteer.sae.encode`.
        batch_size: Prompts per forward pass.
        hook_name: Where an SAE reads, if its metadata does not say.
        note: Free text kept in the vector.

    ``n_examples`` is the number of pairs, or for a ContrastSet its positives plus negatives.

    Example:
        >>> fv = feature_vector(model, sae, pairs, formula="paired")  # doctest: +SKIP
        >>> fv.top_k(20).to_steering_vector(sae).apply(model, 4.0)  # doctest: +SKIP
    """
    found = as_feature_dictionary(dictionary, hook_name, model)
    batch_size = check_batch_size(batch_size)
    read = as_read(read, Read.answer())
    plan = plan_reads(model, data, read)
    values = contrast_direction(model, found.hook_name, plan, formula, found.encode, batch_size)
    return FeatureVector.from_dictionary(
        found,
        values,
        formula=formula,
        n_examples=_n_examples(plan),
        note=note or f"read={read.describe()}",
        model_name=model.cfg.model_name or "",
    )


def encode_steering_vector(
    dictionary: object, steering_vector: SteeringVector, hook_name: str | None = None
) -> FeatureVector:
    """NEGATIVE CONTROL: a dictionary's encoding of a steering vector's direction at its hook.

    A CAA direction is a difference of activations, not an activation: it lacks the mean the
    encoder expects and sits off an SAE's training distribution, so its encoding is a poor
    description of it (Mayne et al. 2024, "Can sparse autoencoders be used to decompose and
    interpret steering vectors?"). Use it only to compare against :func:`feature_vector`.
    """
    if not isinstance(steering_vector, SteeringVector):
        raise TypeError(f"expected a SteeringVector, got {type(steering_vector).__name__}")
    found = as_feature_dictionary(dictionary, hook_name)
    hook = found.hook_name
    if hook not in steering_vector:
        raise KeyError(
            f"the steering vector has no direction at the dictionary's hook {hook!r}; hooks: "
            f"{steering_vector.hooks}"
        )
    direction = steering_vector[hook]
    if direction.shape[0] != found.d_model:
        raise ValueError(
            f"the direction has d_model={direction.shape[0]} but the dictionary has d_model={found.d_model}"
        )
    with torch.no_grad():
        values = found.encode(direction[None])[0].float().cpu()
    return FeatureVector.from_dictionary(
        found,
        values,
        formula="encoded_steering_vector",
        n_examples=steering_vector.metadata.n_pairs,
        note="negative control: encoding of a steering vector (off-distribution, Mayne et al. 2024)",
        model_name=steering_vector.metadata.model_name,
    )
