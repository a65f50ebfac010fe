"""Prefix sharing for contrast pairs: run a pair's common prefix once, then only the two suffixes.

In a CAA A/B pair the positive and negative prompts share everything but the last few tokens,
and all pairs of a chat-formatted dataset share the template's head (system turn, user header).
The reading engine (:func:`tlsteer.reading.iter_reads`, ``share_prefix=True``) reads pairs this
way: :func:`pair_layouts` splits each pair where its prompts part (or where a read span begins,
whichever is first, so every span lies in the suffixes); :func:`prefix_batches` buckets pairs by
prefix and suffix length to cut padding; :func:`shared_head` runs the head common to every prefix
once; :func:`prefix_forward` runs a batch's prefixes after it into a TransformerLens KV cache,
copies the cache for the positive and the negative rows, and returns the suffixes to run after it.

Prefixes are left-padded after the head (with an attention mask, which the cache carries on, so
padding in the middle of a row is masked and skipped by the positions; models with sliding-window
attention share no head, since TransformerLens's windows count padding); suffixes are
right-padded, which needs no mask: a causal model's real tokens never attend to later padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from tlsteer.kv import MIN_SHARED_HEAD, common_prefix_length, has_local_attention, head_cache, repeat_cache
from tlsteer.tokens import left_pad, right_pad

__all__ = ["Head", "PairLayout", "pair_layouts", "prefix_batches", "prefix_forward", "shared_head"]


@dataclass(frozen=True)
class PairLayout:
    """Pair ``index`` split into its shared ``prefix`` and the two suffixes after it.

    ``pos_span`` and ``neg_span`` are the read spans ``[start, end)`` within each suffix.
    """

    index: int
    prefix: list[int]
    pos_suffix: list[int]
    neg_suffix: list[int]
    pos_span: tuple[int, int]
    neg_span: tuple[int, int]


@dataclass(frozen=True)
class Head:
    """The KV cache of the tokens every prefix starts with, and how many they are."""

    cache: TransformerLensKeyValueCache
    length: int


def pair_layouts(token_ids: Sequence[Sequence[int]], spans: Sequence[tuple[int, int]]) -> list[PairLayout]:
    """The layout of each pair of a plan of ``2 n`` prompts, positives first (pair ``i`` is rows
    ``i`` and ``n + i``), with one read span ``[start, end)`` per prompt."""
    if len(token_ids) % 2 or len(spans) != len(token_ids):
        raise ValueError(
            f"expected 2 n prompts of n pairs (positives first) and one span each, got "
            f"{len(token_ids)} prompts and {len(spans)} spans"
        )
    n = len(token_ids) // 2
    out = []
    for i in range(n):
        pos, neg = list(token_ids[i]), list(token_ids[n + i])
        (p_start, p_end), (n_start, n_end) = spans[i], spans[n + i]
        # The prefix ends before both spans begin, so every read lies in a suffix.
        shared = min(common_prefix_length(pos, neg), p_start, n_start)
        out.append(
            PairLayout(
                i,
                pos[:shared],
                pos[shared:],
                neg[shared:],
                (p_start - shared, p_end - shared),
                (n_start - shared, n_end - shared),
            )
        )
    return out


def prefix_batches(layouts: Sequence[PairLayout], batch_size: int) -> list[list[PairLayout]]:
    """Batches of at most ``batch_size`` pairs: pairs without a shared prefix apart, then sorted by
    prefix length and suffix length."""
    ordered = sorted(
        layouts, key=lambda p: (len(p.prefix) > 0, len(p.prefix), max(len(p.pos_suffix), len(p.neg_suffix)))
    )
    batches: list[list[PairLayout]] = []
    for layout in ordered:
        last = batches[-1] if batches else None
        if last is not None and len(last) < batch_size and bool(last[0].prefix) == bool(layout.prefix):
            last.append(layout)
        else:
            batches.append([layout])
    return batches


def shared_head(model: HookedTransformer, layouts: Sequence[PairLayout], stop_at: int) -> Head | None:
    """The head common to every prefix, run once, if there are several prefixes and it is at least
    :data:`~tlsteer.kv.MIN_SHARED_HEAD` tokens long; call it under ``torch.no_grad()``.

    Models with sliding-window layers get none (:func:`~tlsteer.kv.has_local_attention`: the
    padding after a shared head would widen their windows); their prefixes run whole.
    """
    prefixes = [p.prefix for p in layouts if p.prefix]
    if len(prefixes) < 2 or has_local_attention(model):
        return None
    head = prefixes[0][: min(common_prefix_length(prefixes[0], q) for q in prefixes)]
    if len(head) < MIN_SHARED_HEAD:
        return None
    return Head(head_cache(model, head, stop_at), len(head))


def prefix_forward(
    model: HookedTransformer, batch: Sequence[PairLayout], head: Head | None, stop_at: int
) -> tuple[Tensor, dict[str, Any]]:
    """Run the prefixes of ``batch`` into a KV cache; the suffixes to run after it and their
    forward arguments.

    Returns ``(tokens, kwargs)``: ``tokens`` are the right-padded suffixes, the positives then the
    negatives (``2 * len(batch)`` rows); ``kwargs`` (the cache and its attention mask, or nothing
    for pairs without a prefix) go to ``model(tokens, stop_at_layer=stop_at, **kwargs)``. Call it
    under ``torch.no_grad()``.
    """
    b = len(batch)
    suffixes = [p.pos_suffix for p in batch] + [p.neg_suffix for p in batch]
    tokens, _ = right_pad(model, suffixes)
    if not batch[0].prefix:  # a batch holds pairs with a prefix, or pairs without one
        return tokens, {}
    device = model.cfg.device
    if head is None:
        prefix_tokens, prefix_mask = left_pad(model, [p.prefix for p in batch])
        cache = TransformerLensKeyValueCache.init_cache(model.cfg, device, b)
    else:
        # The shared head is in the cache; left-pad the rest of each prefix after it.
        cache = repeat_cache(head.cache, b)
        prefix_tokens, prefix_mask = left_pad(model, [p.prefix[head.length :] for p in batch])
    if prefix_tokens.shape[1] > 0:
        model(prefix_tokens, attention_mask=prefix_mask, past_kv_cache=cache, stop_at_layer=stop_at)
    return tokens, {"attention_mask": torch.ones_like(tokens), "past_kv_cache": repeat_cache(cache, 2)}
