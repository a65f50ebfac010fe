"""Batched steered generation: many prompts at once, each row as if it were generated alone.

:func:`generate` left-pads a batch of prompts, runs the prompt once into a TransformerLens KV
cache, then one token per step, with steering (``(vector, multiplier)`` pairs or edits) at the
positions of :func:`tlsteer.apply_steering` counted in each row's own numbering. Sampling draws
from one ``torch.Generator`` per row, seeded per prompt, so a sampled row is the same in any batch;
the global RNG is never touched. :func:`generate_tokens` returns the token ids (and optionally
each step's logits) as well as the text.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from tlsteer._types import check_batch_size, is_int
from tlsteer.data import chat_prompt
from tlsteer.hooks import Edit, EditPairs, VectorPairs, edit_hooks, vector_edits
from tlsteer.operators import Operator
from tlsteer.positions import Positions
from tlsteer.tokens import left_pad, tokenize_prompts

__all__ = ["Generations", "choose_next_tokens", "generate", "generate_tokens"]


@dataclass(frozen=True)
class Generations:
    """What :func:`generate_tokens` returns, one entry per prompt in the order given.

    ``step_logits[i]`` is ``[n_new_i, d_vocab]`` (float32, CPU): the logits each new token of
    prompt ``i`` was chosen from, kept only with ``keep_logits=True``.
    """

    texts: tuple[str, ...]
    prompt_tokens: tuple[tuple[int, ...], ...]
    new_tokens: tuple[tuple[int, ...], ...]
    step_logits: tuple[Tensor, ...] | None = None


def _check_sampling(max_new_tokens: Any, temperature: Any, top_k: Any, top_p: Any) -> None:
    if not is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not temperature > 0:
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    if top_k is not None and (not is_int(top_k) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if top_p is not None and (
        isinstance(top_p, bool) or not isinstance(top_p, numbers.Real) or not 0 < top_p <= 1
    ):
        raise ValueError(f"top_p must be None or a number in (0, 1], got {top_p!r}")


def _seeds(seed: int | Sequence[int], n: int) -> list[int]:
    if is_int(seed):
        return [int(seed)] * n
    if isinstance(seed, (str, bytes)) or not isinstance(seed, Sequence) or len(seed) != n:
        raise ValueError(f"seed must be an int or one int per prompt ({n}), got {seed!r}")
    bad = [s for s in seed if not is_int(s)]
    if bad:
        raise ValueError(f"seeds must be ints, got {bad[:3]}")
    return [int(s) for s in seed]


def choose_next_tokens(
    logits: Tensor, do_sample: bool, temperature: float, top_k: int | None, top_p: float | None, gens: list
) -> Tensor:
    """The next token of each row: argmax, or a draw from its own generator."""
    if not do_sample:
        return logits.argmax(-1)
    scores = logits.float() / temperature
    if top_k is not None:
        kth = scores.topk(min(top_k, scores.shape[-1]), dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p is not None:
        ordered, order = scores.sort(dim=-1, descending=True)
        cum = ordered.softmax(-1).cumsum(-1)
        drop = cum - ordered.softmax(-1) >= top_p  # keep the smallest prefix whose mass reaches top_p
        scores = scores.scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
    probs = scores.softmax(-1)
    return torch.stack([torch.multinomial(p, 1, generator=g)[0] for p, g in zip(probs, gens, strict=True)])


def generate_tokens(
    model: HookedTransformer,
    prompts: Sequence[str],
    vectors: VectorPairs = (),
    edits: EditPairs = (),
    max_new_tokens: int = 40,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | Sequence[int] = 0,
    min_token_index: int = 0,
    token_positions: Sequence[int] | None = None,
    last_token_only: bool = False,
    operator: Operator | None = None,
    chat: bool = False,
    stop_at_eos: bool = True,
    batch_size: int = 16,
    keep_logits: bool = False,
    show_progress: bool = False,
) -> Generations:
    """Generate a continuation of every prompt, batched, steered, row by row as if alone.

    Args:
        model: A ``HookedTransformer`` with a tokenizer.
        prompts: Prompt strings (with ``chat=True``, user messages put in the chat template).
        vectors: ``(vector, multiplier)`` pairs, as for :func:`tlsteer.apply_steering`.
        edits: ``(hook_name, edit)`` pairs, as for :func:`tlsteer.apply_edits`.
        max_new_tokens: New tokens per prompt (fewer where the row stops at end of sequence).
        do_sample: Sample (``True``) or take the most likely token (``False``).
        temperature, top_k, top_p: Sampling settings.
        seed: The seed of every row's generator, or one seed per prompt.
        min_token_index, token_positions, last_token_only: Where to steer, in each prompt's own
            positions (0 is its first token), as for :func:`tlsteer.apply_steering`.
        operator: How vectors act (default: addition).
        chat: Format each prompt as a user turn of the model's chat template.
        stop_at_eos: Stop a row at the tokenizer's end-of-sequence token (kept in its tokens).
        batch_size: Rows per batch; prompts are sorted by length to cut padding.
        keep_logits: Keep each step's logits in the result.
        show_progress: A progress bar over batches.

    Example:
        >>> out = generate_tokens(model, ["Hi!"], [(vec, 4.0)], max_new_tokens=8)  # doctest: +SKIP
        >>> out.texts[0]  # doctest: +SKIP
    """
    _check_sampling(max_new_tokens, temperature, top_k, top_p)
    batch_size = check_batch_size(batch_size)
    if not isinstance(do_sample, bool) or not isinstance(chat, bool) or not isinstance(stop_at_eos, bool):
        raise TypeError("do_sample, chat and stop_at_eos must be True or False")
    if isinstance(prompts, str) or not prompts:
        raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    positions = Positions.make(min_token_index, token_positions, last_token_only)
    all_edits = list(edits) + (vector_edits(model, list(vectors), operator) if len(vectors) else [])
    if all_edits:
        edit_hooks(model, all_edits, positions=positions)  # validate everything before any forward
    texts = [chat_prompt(model, p) if chat else p for p in prompts]
    ids = tokenize_prompts(model, texts, room=max_new_tokens)
    if positions.mode == "explicit":
        reach = max(len(i) for i in ids) + max_new_tokens - 1  # the last new token is never fed back
        positions.check_length(reach)
    seeds = _seeds(seed, len(prompts))
    eos = model.tokenizer.eos_token_id if stop_at_eos else None
    order = sorted(range(len(prompts)), key=lambda i: len(ids[i]))
    new: list[list[int]] = [[] for _ in prompts]
    logits_out: list[list[Tensor]] = [[] for _ in prompts]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    with torch.no_grad():
        for batch in tqdm(batches, desc="generating", disable=not show_progress, leave=False):
            rows = _generate_batch(
                model,
                [ids[i] for i in batch],
                all_edits,
                positions,
                max_new_tokens,
                do_sample,
                float(temperature),
                top_k,
                top_p,
                [seeds[i] for i in batch],
                eos,
                keep_logits,
            )
            for i, (tokens, logits) in zip(batch, rows, strict=True):
                new[i], logits_out[i] = tokens, logits
    decoded = tuple(model.tokenizer.decode(t, skip_special_tokens=True) for t in new)
    return Generations(
        texts=decoded,
        prompt_tokens=tuple(tuple(i) for i in ids),
        new_tokens=tuple(tuple(t) for t in new),
        step_logits=tuple(torch.stack(step) for step in logits_out) if keep_logits else None,
    )


def _generate_batch(
    model: HookedTransformer,
    ids: list[list[int]],
    edits: list[tuple[str, Edit]],
    positions: Positions,
    max_new_tokens: int,
    do_sample: bool,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    seeds: list[int],
    eos: int | None,
    keep_logits: bool,
) -> list[tuple[list[int], list[Tensor]]]:
    tokens, mask = left_pad(model, ids)
    n_rows, width = tokens.shape
    device = tokens.device
    gens = [torch.Generator(device=device).manual_seed(s) for s in seeds] if do_sample else []
    hooks = []
    if edits:
        pads = [width - len(i) for i in ids]
        hooks = edit_hooks(model, edits, positions=positions.shifted(pads))
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, device, n_rows)
    done = torch.zeros(n_rows, dtype=torch.bool, device=device)
    out: list[list[int]] = [[] for _ in ids]
    kept: list[list[Tensor]] = [[] for _ in ids]
    pad_id = model.tokenizer.pad_token_id or 0
    ones = torch.ones(n_rows, 1, dtype=mask.dtype, device=device)
    with model.hooks(fwd_hooks=hooks):
        logits = model(tokens, attention_mask=mask, past_kv_cache=cache)[:, -1]
        for step in range(max_new_tokens):
            chosen = choose_next_tokens(logits, do_sample, temperature, top_k, top_p, gens)
            for r in range(n_rows):
                if not done[r]:
                    out[r].append(int(chosen[r]))
                    if keep_logits:
                        kept[r].append(logits[r].float().cpu())
            if eos is not None:
                done |= chosen == eos
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            feed = torch.where(done, torch.full_like(chosen, pad_id), chosen)[:, None]
            logits = model(feed, attention_mask=ones, past_kv_cache=cache)[:, -1]
    return list(zip(out, kept, strict=True))


def generate(
    model: HookedTransformer,
    prompts: Sequence[str],
    vectors: VectorPairs = (),
    max_new_tokens: int = 40,
    do_sample: bool = False,
    **kwargs: Any,
) -> list[str]:
    """The continuation of each prompt as a string, generated in batches with steering.

    Takes the arguments of :func:`generate_tokens` (``edits``, ``seed``, ``chat``, position modes,
    ``batch_size``, ...). Each row's per-step logits equal those of the row generated alone.

    Example:
        >>> tlsteer.generate(model, ["Tell me a story."], [(vec, 6.0)], max_new_tokens=20,
        ...                  chat=True, min_token_index=0)  # doctest: +SKIP
    """
    return list(
        generate_tokens(
            model, prompts, vectors, max_new_tokens=max_new_tokens, do_sample=do_sample, **kwargs
        ).texts
    )
