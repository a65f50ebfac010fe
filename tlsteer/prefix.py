"""Prefix-shared extraction: run a pair's common prefix once, then only the two suffixes.

In a CAA A/B pair the positive and negative prompts share everything but the last few tokens,
and all pairs of a chat-formatted dataset share the template's head (system turn, user header).
:func:`iter_pair_activations` runs the head common to every prefix once, then each batch's
prefixes after it into a TransformerLens KV cache, copies the cache for the positive and the
negative rows, and runs only the suffixes after it. Forwards stop at the deepest requested layer
(no unembedding), hooks keep only the read positions, and pairs are bucketed by prefix and suffix
length to cut padding. It yields one batch at a time, so callers can keep running sums instead of
every activation.

Prefixes are left-padded after the head (with an attention mask, which the cache carries on, so
padding in the middle of a row is masked and skipped by the positions); suffixes are
right-padded, which needs no mask: a causal model's real tokens never attend to later padding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from tlsteer._types import check_batch_size, parse_hook_name
from tlsteer.data import ContrastPair
from tlsteer.kv import MIN_SHARED_HEAD, common_prefix_length, head_cache, repeat_cache
from tlsteer.read import Read, as_read, position_args
from tlsteer.tokens import left_pad, read_indices, right_pad, tokenize_prompts

__all__ = ["PairBatch", "iter_pair_activations"]


@dataclass(frozen=True)
class PairBatch:
    """Activations of a batch of pairs: ``indices`` into the input, ``{hook: [b, d_model]}``."""

    indices: list[int]
    positive: dict[str, Tensor]
    negative: dict[str, Tensor]


@dataclass(frozen=True)
class _PairPlan:
    index: int
    prefix: list[int]
    pos_suffix: list[int]
    neg_suffix: list[int]
    pos_read: int  # index within the positive suffix
    neg_read: int


def plan_pairs(model: HookedTransformer, pairs: Sequence[ContrastPair], read: Read) -> list[_PairPlan]:
    prompts = [p.positive for p in pairs] + [p.negative for p in pairs]
    ids = tokenize_prompts(model, prompts)
    index, own_first = position_args(read)
    if isinstance(index, tuple):
        if len(index) != len(pairs):
            raise ValueError(
                f"Read.at has {len(index)} positions but there are {len(pairs)} pairs; give one per pair"
            )
        index = list(index) * 2
    overrides = [p.read_index for p in pairs] * 2 if own_first else None
    reads = read_indices(prompts, ids, index, overrides)
    n = len(pairs)
    plans = []
    for i in range(n):
        pos, neg, r_pos, r_neg = ids[i], ids[n + i], reads[i], reads[n + i]
        # The prefix ends before both read positions, so every read lies in a suffix.
        shared = min(common_prefix_length(pos, neg), r_pos, r_neg)
        plans.append(_PairPlan(i, pos[:shared], pos[shared:], neg[shared:], r_pos - shared, r_neg - shared))
    return plans


def _gather_hooks(
    hooks: Sequence[str], rows: Tensor, cols: Tensor, out: dict[str, Tensor]
) -> list[tuple[str, Callable[[Tensor, object], None]]]:
    def make(name: str) -> Callable[[Tensor, object], None]:
        def gather(act: Tensor, hook: object) -> None:  # noqa: ARG001
            out[name] = act[rows, cols].detach().float().cpu()

        return gather

    return [(name, make(name)) for name in hooks]


def _run_batch(
    model: HookedTransformer,
    plans: list[_PairPlan],
    hooks: Sequence[str],
    stop_at: int,
    head: tuple[TransformerLensKeyValueCache, int] | None,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    b = len(plans)
    device = model.cfg.device
    cache = None
    if plans[0].prefix:  # a batch holds pairs with a prefix, or pairs without one
        if head is None:
            prefix_tokens, prefix_mask = left_pad(model, [p.prefix for p in plans])
            cache = TransformerLensKeyValueCache.init_cache(model.cfg, device, b)
        else:
            # The shared head is in the cache; left-pad the rest of each prefix after it.
            head_cache, head_len = head
            cache = repeat_cache(head_cache, b)
            prefix_tokens, prefix_mask = left_pad(model, [p.prefix[head_len:] for p in plans])
        if prefix_tokens.shape[1] > 0:
            model(prefix_tokens, attention_mask=prefix_mask, past_kv_cache=cache, stop_at_layer=stop_at)
        cache = repeat_cache(cache, 2)
    suffix_rows = [p.pos_suffix for p in plans] + [p.neg_suffix for p in plans]
    tokens, _ = right_pad(model, suffix_rows)
    rows = torch.arange(2 * b, device=tokens.device)
    cols = torch.tensor([p.pos_read for p in plans] + [p.neg_read for p in plans], device=tokens.device)
    out: dict[str, Tensor] = {}
    gather = _gather_hooks(hooks, rows, cols, out)
    # TransformerLens types fwd_hooks as an invariant list[tuple[str | Callable, Callable]]
    with model.hooks(fwd_hooks=gather):  # pyright: ignore[reportArgumentType]
        if cache is None:
            model(tokens, stop_at_layer=stop_at)
        else:
            model(tokens, attention_mask=torch.ones_like(tokens), past_kv_cache=cache, stop_at_layer=stop_at)
    return {h: a[:b] for h, a in out.items()}, {h: a[b:] for h, a in out.items()}


def iter_pair_activations(
    model: HookedTransformer,
    pairs: Sequence[ContrastPair],
    hooks: Sequence[str],
    read: Read | None = None,
    batch_size: int = 8,
    show_progress: bool = False,
) -> Iterator[PairBatch]:
    """Yield the activations of ``pairs`` batch by batch, sharing each pair's common prefix.

    Args:
        model: A ``HookedTransformer`` with a tokenizer.
        pairs: Contrast pairs.
        hooks: Full hook names.
        read: A position read (default :meth:`~tlsteer.Read.answer`: a pair's own read position,
            else the last token).
        batch_size: Rows of the forward over full-length text: the prefixes of ``batch_size``
            pairs run together, then their ``2 * batch_size`` short suffixes.
        show_progress: Show a tqdm progress bar.
    """
    batch_size = check_batch_size(batch_size)
    plans = plan_pairs(model, pairs, as_read(read, Read.answer()))
    stop_at = max(parse_hook_name(h)[0] for h in hooks) + 1
    per_batch = batch_size
    # Bucket: pairs without a shared prefix apart, then by prefix length and suffix length.
    plans.sort(key=lambda p: (len(p.prefix) > 0, len(p.prefix), max(len(p.pos_suffix), len(p.neg_suffix))))
    batches: list[list[_PairPlan]] = []
    for plan in plans:
        if batches and len(batches[-1]) < per_batch and bool(batches[-1][0].prefix) == bool(plan.prefix):
            batches[-1].append(plan)
        else:
            batches.append([plan])
    with torch.no_grad():
        head = None
        prefixes = [p.prefix for p in plans if p.prefix]
        if len(prefixes) > 1:
            head_ids = prefixes[0][: min(common_prefix_length(prefixes[0], q) for q in prefixes)]
            if len(head_ids) >= MIN_SHARED_HEAD:
                head = (head_cache(model, head_ids, stop_at), len(head_ids))
        for batch in tqdm(batches, desc="pairs", disable=not show_progress, leave=False):
            pos, neg = _run_batch(model, batch, hooks, stop_at, head)
            yield PairBatch([p.index for p in batch], pos, neg)
