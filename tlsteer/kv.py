"""KV-cache helpers: run a shared prefix once and reuse its keys and values.

Prefix-shared extraction (:mod:`tlsteer.prefix`) and the cached sweep engine
(:mod:`tlsteer.eval.cached`) both run the tokens that many rows start with once, then copy the
TransformerLens KV cache for the rows that continue it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

__all__ = ["MIN_SHARED_HEAD", "common_prefix_length", "has_local_attention", "head_cache", "repeat_cache"]

MIN_SHARED_HEAD = 4
"""Run a head common to every row (e.g. a chat template's system turn) once from this length."""


def has_local_attention(model: HookedTransformer) -> bool:
    """Whether any layer of ``model`` attends through a sliding window (Gemma 2/3, Mistral-style).

    TransformerLens's window counts columns of the attention scores, not token positions, so
    padding inside a row (a shared head, then left-padded prefixes) would let a query see keys
    that lie outside its window. Callers that would pad inside rows run such models without
    the shared head: exact, and slower.
    """
    return bool(model.cfg.use_local_attn) or any(t == "local" for t in (model.cfg.attn_types or []))


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def repeat_cache(cache: TransformerLensKeyValueCache, times: int) -> TransformerLensKeyValueCache:
    """The cache with its rows repeated ``times`` times (``[a, b]`` -> ``[a, b, a, b]``)."""
    entries = [
        TransformerLensKeyValueCacheEntry(
            past_keys=e.past_keys.repeat(times, 1, 1, 1), past_values=e.past_values.repeat(times, 1, 1, 1)
        )
        for e in cache.entries
    ]
    return TransformerLensKeyValueCache(entries, cache.previous_attention_mask.repeat(times, 1))


def head_cache(model: HookedTransformer, head: list[int], stop_at: int) -> TransformerLensKeyValueCache:
    """The KV cache of one row of ``head`` tokens, run through blocks ``0..stop_at-1``."""
    tokens = torch.tensor([head], dtype=torch.long, device=model.cfg.device)
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, 1)
    model(tokens, attention_mask=torch.ones_like(tokens), past_kv_cache=cache, stop_at_layer=stop_at)
    return cache
