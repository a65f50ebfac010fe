"""Steered generation from a shared, unsteered prompt cache: many steerings, one prefill.

A comparison of steering methods generates continuations of the *same* prompts under many
steerings. With steering from each prompt's last token on (``Positions.last()``), every position
before the last prompt token is unsteered and the same in every steering. :func:`prompt_cache`
runs those positions once, for every prompt, into a TransformerLens KV cache;
:func:`generate_from_cache` then runs only the last prompt token and the new tokens, for several
groups of rows at once, each group with its own :class:`~tlsteer.Steering` on its own block of
rows; :func:`perplexities_from_cache` scores continuations under the unsteered model from the
same cache (:func:`perplexities` is the same without the cache, the full sequences in plain
batches). Each row equals the row generated alone by :func:`tlsteer.generate_tokens` with the
same seed (tested token for token).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

from tlsteer._types import is_int
from tlsteer.decode import choose_next_tokens, decode_path
from tlsteer.fast_decode import FastDecoder
from tlsteer.hooks import edit_hooks
from tlsteer.positions import Positions
from tlsteer.steering import Steering
from tlsteer.tokens import eos_token_id, left_pad, pad_token_id, right_pad

__all__ = [
    "PromptCache",
    "RowGroup",
    "generate_from_cache",
    "perplexities",
    "perplexities_from_cache",
    "prompt_cache",
]


@dataclass(frozen=True)
class PromptCache:
    """The unsteered KV cache of every prompt but its last token (left-padded), and the last tokens."""

    cache: TransformerLensKeyValueCache = field(repr=False)
    last_tokens: tuple[int, ...]
    lengths: tuple[int, ...]

    @property
    def n_prompts(self) -> int:
        return len(self.last_tokens)

    def rows(self, prompts: Sequence[int]) -> TransformerLensKeyValueCache:
        """A fresh cache whose row ``i`` is a copy of prompt ``prompts[i]``'s row."""
        index = torch.tensor(
            list(prompts), dtype=torch.long, device=self.cache.previous_attention_mask.device
        )
        entries = [
            TransformerLensKeyValueCacheEntry(
                past_keys=e.past_keys.index_select(0, index), past_values=e.past_values.index_select(0, index)
            )
            for e in self.cache.entries
        ]
        return TransformerLensKeyValueCache(
            entries, self.cache.previous_attention_mask.index_select(0, index)
        )


@dataclass(frozen=True)
class RowGroup:
    """Rows generated under one steering: prompt indices, one seed per row, a :class:`~tlsteer.Steering`.

    The steering acts from each prompt's last token on (``Positions.last()``) and has no prompt
    prefix (the cache holds the prompts as they are).
    """

    prompts: tuple[int, ...]
    seeds: tuple[int, ...]
    steering: Steering = field(default_factory=Steering)

    def __post_init__(self) -> None:
        if not isinstance(self.steering, Steering):
            raise TypeError(f"RowGroup.steering must be a tlsteer.Steering, got {self.steering!r}")
        if self.steering.prefix:
            raise ValueError(
                f"{self.steering!r} has a prompt prefix; a shared prompt cache holds the prompts as they "
                "are: generate it with tlsteer.generate_tokens"
            )
        if self.steering.edits and self.steering.positions != Positions.last():
            raise ValueError(
                f"generation from a prompt cache steers from each prompt's last token on "
                f"(Positions.last()); {self.steering!r} acts at {self.steering.positions.describe()}"
            )

    @property
    def edits(self) -> tuple:
        return self.steering.edits


def prompt_cache(model: HookedTransformer, prompt_ids: Any) -> PromptCache:
    """Run every prompt but its last token once, unsteered, into a KV cache (one left-padded batch).

    Example:
        >>> pc = prompt_cache(model, tokenize_prompts(model, texts))  # doctest: +SKIP
    """
    if isinstance(prompt_ids, (str, bytes)) or not isinstance(prompt_ids, Sequence) or not prompt_ids:
        raise ValueError(f"prompt_ids must be a non-empty list of token id lists, got {prompt_ids!r}")
    ids = []
    for i, p in enumerate(prompt_ids):
        if isinstance(p, (str, bytes)) or not isinstance(p, Sequence) or not all(is_int(t) for t in p):
            raise ValueError(f"prompt {i} must be a list of token ids, got {p!r}")
        if len(p) < 2:
            raise ValueError(f"prompt {i} has {len(p)} token(s); a cached prompt needs at least 2")
        ids.append([int(t) for t in p])
    tokens, mask = left_pad(model, [p[:-1] for p in ids])
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, len(ids))
    with torch.no_grad():
        model(tokens, attention_mask=mask, past_kv_cache=cache)
    return PromptCache(cache, tuple(p[-1] for p in ids), tuple(len(p) for p in ids))


def _check_groups(cache: PromptCache, groups: Any) -> list[RowGroup]:
    if isinstance(groups, RowGroup) or not isinstance(groups, Sequence) or not groups:
        raise ValueError(f"groups must be a non-empty list of RowGroup, got {groups!r}")
    for g, group in enumerate(groups):
        if not isinstance(group, RowGroup):
            raise TypeError(f"group {g} is {type(group).__name__}, not a RowGroup")
        if not group.prompts or len(group.seeds) != len(group.prompts):
            raise ValueError(
                f"group {g}: needs at least one row and one seed per row, got {len(group.prompts)} "
                f"prompts and {len(group.seeds)} seeds"
            )
        bad = [p for p in group.prompts if not is_int(p) or not 0 <= p < cache.n_prompts]
        if bad:
            raise ValueError(f"group {g}: prompt index {bad[0]!r} is not in 0..{cache.n_prompts - 1}")
    return list(groups)


def _block_hooks(model: HookedTransformer, blocks: list[tuple[int, tuple]]) -> list[tuple[str, Callable]]:
    """One hook per hook name: each ``(n_rows, edits)`` block of rows gets its own edits."""
    names = list(dict.fromkeys(name for _, edits in blocks for name, _ in edits))
    for _, edits in blocks:
        if edits:
            edit_hooks(model, list(edits), Positions.all())  # validates names and callables
    sizes = [n for n, _ in blocks]
    hooks = []
    for name in names:
        here = [[e for hook, e in edits if hook == name] for _, edits in blocks]

        def apply(act: Tensor, hook: object, here: list = here) -> Tensor:  # noqa: ARG001
            parts = []
            for part, mine in zip(act.split(sizes), here, strict=True):
                for edit in mine:
                    part = part + edit(part)
                parts.append(part)
            return torch.cat(parts)

        hooks.append((name, apply))
    return hooks


def generate_from_cache(
    model: HookedTransformer,
    cache: PromptCache,
    groups: Any,
    *,
    max_new_tokens: int = 40,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_at_eos: bool = True,
    max_rows: int = 128,
    fast: bool = True,
) -> list[list[list[int]]]:
    """New tokens of every row of every group, steered from the last prompt token on.

    Rows run together in chunks of at most ``max_rows`` (a group may span chunks); each row draws
    from its own generator seeded by its seed, so a row is the same in any chunk and equals
    :func:`tlsteer.generate_tokens` steered at ``Positions.last()`` with that seed. ``fast``
    decodes with :mod:`tlsteer.fast_decode` where it covers the model and its hooks
    (:func:`~tlsteer.decode.decode_path`), as :func:`~tlsteer.generate_tokens` does.

    Returns:
        ``out[g][r]``: the new token ids of row ``r`` of group ``g`` (ending at EOS if it stopped).

    Example:
        >>> groups = [RowGroup((0, 1), (0, 0)), RowGroup((0, 1), (0, 0), steering)]  # doctest: +SKIP
        >>> generate_from_cache(model, pc, groups, max_new_tokens=24, temperature=0.7)  # doctest: +SKIP
    """
    groups = _check_groups(cache, groups)
    if not is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if not is_int(max_rows) or max_rows < 1:
        raise ValueError(f"max_rows must be an int >= 1, got {max_rows!r}")
    rows = [
        (g, r, p, s)
        for g, group in enumerate(groups)
        for r, (p, s) in enumerate(zip(group.prompts, group.seeds, strict=True))
    ]
    out: list[list[list[int]]] = [[[] for _ in group.prompts] for group in groups]
    eos = eos_token_id(model) if stop_at_eos else None
    for start in range(0, len(rows), max_rows):
        chunk = rows[start : start + max_rows]
        blocks: list[tuple[int, tuple, int]] = []  # (rows, edits, group) of each run of one group
        for g, *_ in chunk:
            if blocks and blocks[-1][2] == g:
                blocks[-1] = (blocks[-1][0] + 1, blocks[-1][1], g)
            else:
                blocks.append((1, tuple(groups[g].edits), g))
        hooks = _block_hooks(model, [(n, e) for n, e, _ in blocks])
        tokens = _run_chunk(
            model, cache, chunk, hooks, max_new_tokens, do_sample, temperature, top_k, top_p, eos, fast
        )
        for (g, r, _, _), new in zip(chunk, tokens, strict=True):
            out[g][r] = new
    return out


def _run_chunk(model, cache, chunk, hooks, max_new_tokens, do_sample, temperature, top_k, top_p, eos, fast):
    n = len(chunk)
    kv = cache.rows([p for _, _, p, _ in chunk])
    device = kv.previous_attention_mask.device
    gens = [torch.Generator(device=device).manual_seed(int(s)) for *_, s in chunk] if do_sample else []
    feed = torch.tensor([[cache.last_tokens[p]] for _, _, p, _ in chunk], device=device)
    ones = torch.ones(n, 1, dtype=kv.previous_attention_mask.dtype, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    out: list[list[int]] = [[] for _ in chunk]
    pad_id = pad_token_id(model)
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        if fast and decode_path(model) == "fast":  # the same step, weights laid out once
            decoder = FastDecoder(model, n, kv.previous_attention_mask.shape[1] + max_new_tokens)
            decoder.load(kv)
            forward = decoder.step
        else:

            def forward(tokens: Tensor) -> Tensor:
                return model(tokens, attention_mask=ones, past_kv_cache=kv)[:, -1]

        logits = forward(feed)
        for step in range(max_new_tokens):
            chosen = choose_next_tokens(logits, do_sample, float(temperature), top_k, top_p, gens)
            for r in range(n):
                if not done[r]:
                    out[r].append(int(chosen[r]))
            if eos is not None:
                done |= chosen == eos
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            feed = torch.where(done, torch.full_like(chosen, pad_id), chosen)[:, None]
            logits = forward(feed)
    return out


def perplexities(
    model: HookedTransformer,
    prompt_ids: Sequence[Sequence[int]],
    new_ids: Sequence[Sequence[int]],
    batch_size: int = 16,
) -> np.ndarray:
    """Perplexity of each continuation after its prompt under ``model`` as it is (right-padded
    batches of the full sequences; NaN if a continuation is empty)."""
    out = []
    for start in range(0, len(prompt_ids), batch_size):
        prompts, news = prompt_ids[start : start + batch_size], new_ids[start : start + batch_size]
        tokens, mask = right_pad(model, [list(p) + list(n) for p, n in zip(prompts, news, strict=True)])
        with torch.no_grad():
            logprobs = model(tokens, attention_mask=mask).float().log_softmax(-1)
        for i, (p, n) in enumerate(zip(prompts, news, strict=True)):
            if not n:
                out.append(float("nan"))
                continue
            targets = tokens[i, len(p) : len(p) + len(n)]
            picked = logprobs[i, len(p) - 1 : len(p) + len(n) - 1].gather(-1, targets[:, None])[:, 0]
            out.append(float(torch.exp(-picked.mean())))
    return np.asarray(out)


def perplexities_from_cache(
    model: HookedTransformer,
    cache: PromptCache,
    prompts: Sequence[int],
    new_tokens: Sequence[Sequence[int]],
    max_rows: int = 128,
) -> np.ndarray:
    """Perplexity of each continuation after its prompt under the unsteered model (NaN if empty).

    Equals :func:`perplexities` on the full prompt and continuation; only
    the last prompt token and the continuation run.
    """
    if len(prompts) != len(new_tokens):
        raise ValueError(f"need one prompt index per continuation, got {len(prompts)} and {len(new_tokens)}")
    bad = [p for p in prompts if not is_int(p) or not 0 <= p < cache.n_prompts]
    if bad:
        raise ValueError(f"prompt index {bad[0]!r} is not in 0..{cache.n_prompts - 1}")
    out = np.full(len(prompts), np.nan)
    rows = [i for i, n in enumerate(new_tokens) if len(n)]
    for start in range(0, len(rows), max_rows):
        chunk = rows[start : start + max_rows]
        kv = cache.rows([prompts[i] for i in chunk])
        seqs = [[cache.last_tokens[prompts[i]], *new_tokens[i]] for i in chunk]
        tokens, mask = right_pad(model, seqs)
        with torch.no_grad():
            logprobs = model(tokens, attention_mask=mask, past_kv_cache=kv).float().log_softmax(-1)
        for row, i in enumerate(chunk):
            n = len(new_tokens[i])
            target = tokens[row, 1 : n + 1]
            picked = logprobs[row, :n].gather(-1, target[:, None])[:, 0]
            out[i] = float(torch.exp(-picked.mean()))
    return out
