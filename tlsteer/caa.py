"""CAA vectors: extract activations, aggregate them, package the result with its provenance."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformer_lens import HookedTransformer

from tlsteer._types import hook_name, resolve_layers, validate_hook_point
from tlsteer.aggregators import Aggregator, aggregate_activations, mean_aggregator
from tlsteer.data import ContrastPair, ContrastSet, as_contrast_data, data_hash
from tlsteer.extract import extract_activations
from tlsteer.read import Read, as_read
from tlsteer.reading import iter_reads, plan_reads
from tlsteer.vector import SteeringVector, VectorMetadata

__all__ = ["train_steering_vector"]


def _describe(obj: object) -> str:
    if obj is None:
        return "default"
    if isinstance(obj, int):
        return str(obj)
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    return name or type(obj).__name__


def train_steering_vector(
    model: HookedTransformer,
    samples: Sequence[ContrastPair | tuple[str, str]] | ContrastSet,
    layers: int | Sequence[int] | None = None,
    *,
    hook: str = "resid_post",
    read: Read | None = None,
    aggregator: Aggregator | None = None,
    batch_size: int = 8,
    show_progress: bool = False,
    share_prefix: bool = True,
) -> SteeringVector:
    """Build a steering vector from contrast data: :func:`extract_activations` + aggregation.

    Args:
        model: A ``HookedTransformer`` with a tokenizer.
        samples: Contrast pairs (or ``(positive, negative)`` tuples), or a :class:`ContrastSet`.
        layers: Layers to build directions at; ``None`` means all; negatives count from the end.
        hook: The hook point inside each block (``resid_post`` by default).
        read: Where to read each prompt (default :meth:`Read.answer <tlsteer.Read.answer>`: a
            pair's own read position, the answer letter of a CAA item, else the last token).
        aggregator: ``(pos, neg) -> direction``; default mean of differences (paired) or
            difference of class means (:class:`ContrastSet`).
        batch_size: Prompts per forward pass.
        show_progress: Show a tqdm progress bar.
        share_prefix: Run each pair's common prefix once (see :func:`extract_activations`).

    With the default mean aggregator, pairs are reduced to running sums batch by batch, so memory
    does not grow with the number of pairs; other aggregators see every activation.

    Example:
        >>> pairs = tlsteer.load_builtin_dataset("sentiment", model)  # doctest: +SKIP
        >>> vec = tlsteer.train_steering_vector(model, pairs, layers=[6])  # doctest: +SKIP
    """
    data = as_contrast_data(samples)
    read = as_read(read, Read.answer())
    streaming = getattr(mean_aggregator() if aggregator is None else aggregator, "streaming", None)
    paired = not isinstance(data, ContrastSet)
    if streaming == "paired_mean" and paired:
        directions = _streamed_mean(model, data, layers, hook, read, batch_size, show_progress, share_prefix)
    else:
        acts = extract_activations(
            model,
            data,
            layers,
            hook=hook,
            read=read,
            batch_size=batch_size,
            show_progress=show_progress,
            share_prefix=share_prefix,
        )
        directions = aggregate_activations(acts, aggregator)
    if isinstance(data, ContrastSet):
        n_pairs = min(len(data.positive), len(data.negative))
        agg_default = "class_mean_aggregator"
        per_item = data.read_index is not None
    else:
        n_pairs = len(data)
        agg_default = "mean_aggregator"
        per_item = any(p.read_index is not None for p in data)
    described = read.describe() + (" (per-pair positions)" if per_item and read.kind == "answer" else "")
    metadata = VectorMetadata(
        model_name=model.cfg.model_name,
        read_index=described,
        aggregator=agg_default if aggregator is None else _describe(aggregator),
        n_pairs=n_pairs,
        data_hash=data_hash(data),
    )
    return SteeringVector(directions, metadata)


def _streamed_mean(
    model: HookedTransformer,
    pairs: list[ContrastPair],
    layers: int | Sequence[int] | None,
    hook: str,
    read: Read,
    batch_size: int,
    show_progress: bool,
    share_prefix: bool,
) -> dict[str, torch.Tensor]:
    """Mean of paired differences from running sums (float64), one batch in memory at a time."""
    validate_hook_point(hook)
    hooks = [hook_name(layer, hook) for layer in resolve_layers(model, layers)]
    plan = plan_reads(model, pairs, read)  # pair i is rows i (positive) and n + i (negative)
    n = plan.n_positive
    sums = {h: torch.zeros(model.cfg.d_model, dtype=torch.float64) for h in hooks}
    batches = iter_reads(
        model,
        plan,
        hooks,
        batch_size=batch_size,
        share_prefix=share_prefix,
        show_progress=show_progress,
        desc="pairs",
    )
    for batch in batches:
        sign = torch.tensor([1.0 if i < n else -1.0 for i in batch.indices], dtype=torch.float64)
        for h in hooks:
            sums[h] += sign @ batch.rows[h].double()
    return {h: (s / n).float() for h, s in sums.items()}
