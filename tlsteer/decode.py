"""Batched steered generation: many prompts at once, each row as if it were generated alone.

:func:`generate` left-pads a batch of prompts, runs the prompt once into a TransformerLens KV
cache, then one token per step, steered by a :class:`~tlsteer.Steering` whose positions count
in each row's own numbering (its prompt prefix goes before every prompt). Sampling draws
from one ``torch.Generator`` per row, seeded per prompt, so a sampled row is the same in any batch;
the global RNG is never touched. :func:`generate_tokens` returns the token ids (and optionally
each step's logits) as well as the text.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from tlsteer._types import check_batch_size, is_int
from tlsteer.data import chat_prompt
from tlsteer.fast_decode import FastDecoder, unheard_hooks, unsupported
from tlsteer.steering import Steering, as_steering
from tlsteer.tokens import decode_tokens, eos_token_id, left_pad, pad_token_id, tokenize_prompts

__all__ = ["Generations", "choose_next_tokens", "decode_path", "generate", "generate_tokens"]


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


_MIN_TEMPERATURE = 1e-6
_SEED_RANGE = (0, 2**64 - 1)


def _check_sampling(max_new_tokens: Any, temperature: Any, top_k: Any, top_p: Any) -> None:
    if not is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, numbers.Real)
        or not math.isfinite(temperature)
        or not float(temperature) >= _MIN_TEMPERATURE
    ):
        raise ValueError(
            f"temperature must be a finite number >= {_MIN_TEMPERATURE:g} (smaller ones overflow logits / "
            f"temperature; use do_sample=False for greedy decoding), got {temperature!r}"
        )
    if top_k is not None and (not is_int(top_k) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if top_p is not None and (
        isinstance(top_p, bool) or not isinstance(top_p, numbers.Real) or not 0 < float(top_p) <= 1
    ):
        raise ValueError(f"top_p must be None or a number in (0, 1], got {top_p!r}")


def _check_seed(seed: Any) -> int:
    low, high = _SEED_RANGE
    if not is_int(seed) or not low <= seed <= high:
        raise ValueError(f"a seed must be an int in {low}..2**64-1 (torch.Generator's range), got {seed!r}")
    return int(seed)


def _seeds(seed: int | Sequence[int], n: int) -> list[int]:
    if is_int(seed):
        return [_check_seed(seed)] * n
    if isinstance(seed, (str, bytes)) or not isinstance(seed, Sequence) or len(seed) != n:
        raise ValueError(f"seed must be an int or one int per prompt ({n}), got {seed!r}")
    return [_check_seed(s) for s in seed]


def _prompt_list(prompts: Any) -> list[str]:
    if isinstance(prompts, str) or not isinstance(prompts, Iterable):
        raise TypeError(f"prompts must be a list (or any iterable) of strings, got {prompts!r}")
    out = list(prompts)
    if not out:
        raise ValueError("prompts is empty; give at least one prompt string")
    bad = [p for p in out if not isinstance(p, str)]
    if bad:
        raise TypeError(f"prompts must be strings, got {bad[0]!r}")
    return out


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
    prompts: Iterable[str],
    steering: Steering | None = None,
    *,
    max_new_tokens: int = 40,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | Sequence[int] = 0,
    chat: bool = False,
    stop_at_eos: bool = True,
    batch_size: int = 16,
    keep_logits: bool = False,
    show_progress: bool = False,
    check_model: bool = True,
    fast: bool = True,
) -> Generations:
    """Generate a continuation of every prompt, batched, steered, row by row as if alone.

    Args:
        model: A ``HookedTransformer`` with a tokenizer.
        prompts: Prompt strings (with ``chat=True``, user messages put in the chat template).
        steering: A :class:`~tlsteer.Steering` (``None``: unsteered). Its positions count in each
            prompt's own tokens (0 is its first token); every row must be able to reach them
            (prompt plus generated tokens), the same rule alone and in a batch. Its prefix goes
            before every prompt.
        max_new_tokens: New tokens per prompt (fewer where the row stops at end of sequence).
        do_sample: Sample (``True``) or take the most likely token (``False``).
        temperature, top_k, top_p: Sampling settings.
        seed: The seed of every row's generator, or one seed per prompt.
        chat: Format each prompt as a user turn of the model's chat template.
        stop_at_eos: Stop a row at the tokenizer's end-of-sequence token (kept in its tokens).
        batch_size: Rows per batch; prompts are sorted by length to cut padding.
        keep_logits: Keep each step's logits in the result.
        show_progress: A progress bar over batches.
        check_model: Refuse a steering made for another model (``False`` steers anyway).
        fast: Decode with :mod:`tlsteer.fast_decode` where it applies (the same weights, hook
            points and hook semantics; per-step logits equal TransformerLens's forward within
            float error); ``False``, or a model or hook it does not cover
            (:func:`decode_path` says which), runs TransformerLens's forward at every step.

    Example:
        >>> out = generate_tokens(model, ["Hi!"], vec.steering(4.0), max_new_tokens=8)  # doctest: +SKIP
        >>> out.texts[0]  # doctest: +SKIP
    """
    steering = as_steering(steering)
    _check_sampling(max_new_tokens, temperature, top_k, top_p)
    batch_size = check_batch_size(batch_size)
    for name, flag in (
        ("do_sample", do_sample),
        ("chat", chat),
        ("stop_at_eos", stop_at_eos),
        ("fast", fast),
    ):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False, got {flag!r}")
    prompts = _prompt_list(prompts)
    steering.check(model, check_model=check_model)  # everything validated before any forward
    texts = [steering.instruct(p) for p in prompts]
    texts = [chat_prompt(model, t) if chat else t for t in texts]
    ids = tokenize_prompts(model, texts, room=max_new_tokens)
    if steering.edits:
        for i, row in enumerate(ids):  # the last new token is never fed back
            steering.positions.check_length(
                len(row) + max_new_tokens - 1, f"prompt {i}'s reach (its {len(row)} tokens + new tokens - 1)"
            )
    seeds = _seeds(seed, len(prompts))
    eos = eos_token_id(model) if stop_at_eos else None
    order = sorted(range(len(prompts)), key=lambda i: len(ids[i]))
    new: list[list[int]] = [[] for _ in prompts]
    logits_out: list[list[Tensor]] = [[] for _ in prompts]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    with torch.no_grad():
        for batch in tqdm(batches, desc="generating", disable=not show_progress, leave=False):
            rows = _generate_batch(
                model,
                [ids[i] for i in batch],
                steering,
                max_new_tokens,
                do_sample,
                float(temperature),
                top_k,
                top_p,
                [seeds[i] for i in batch],
                eos,
                keep_logits,
                fast,
            )
            for i, (tokens, logits) in zip(batch, rows, strict=True):
                new[i], logits_out[i] = tokens, logits
    decoded = tuple(decode_tokens(model, t, skip_special_tokens=True) for t in new)
    return Generations(
        texts=decoded,
        prompt_tokens=tuple(tuple(i) for i in ids),
        new_tokens=tuple(tuple(t) for t in new),
        step_logits=tuple(torch.stack(step) for step in logits_out) if keep_logits else None,
    )


def _generate_batch(
    model: HookedTransformer,
    ids: list[list[int]],
    steering: Steering,
    max_new_tokens: int,
    do_sample: bool,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    seeds: list[int],
    eos: int | None,
    keep_logits: bool,
    fast: bool,
) -> list[tuple[list[int], list[Tensor]]]:
    tokens, mask = left_pad(model, ids)
    n_rows, width = tokens.shape
    device = tokens.device
    gens = [torch.Generator(device=device).manual_seed(s) for s in seeds] if do_sample else []
    # checked by the caller; check_model=False here so the opt-out holds
    hooks = steering.hooks(model, check_model=False, row_shift=[width - len(i) for i in ids])
    done = torch.zeros(n_rows, dtype=torch.bool, device=device)
    out: list[list[int]] = [[] for _ in ids]
    kept: list[list[Tensor]] = [[] for _ in ids]
    pad_id = pad_token_id(model)
    ones = torch.ones(n_rows, 1, dtype=mask.dtype, device=device)
    # TransformerLens types fwd_hooks as an invariant list[tuple[str | Callable, Callable]]
    with model.hooks(fwd_hooks=hooks):  # pyright: ignore[reportArgumentType]
        if fast and decode_path(model) == "fast":
            decoder = FastDecoder(model, n_rows, width + max_new_tokens)
            logits = decoder.prefill(tokens, mask)
            forward: Callable[[Tensor], Tensor] = decoder.step
        else:
            cache = TransformerLensKeyValueCache.init_cache(model.cfg, device, n_rows)
            logits = model(tokens, attention_mask=mask, past_kv_cache=cache)[:, -1]
            forward = _cached_forward(model, cache, ones)

        for step in range(max_new_tokens):
            chosen = choose_next_tokens(logits, do_sample, temperature, top_k, top_p, gens)
            finished = done.tolist()
            for r, token in enumerate(chosen.tolist()):
                if not finished[r]:
                    out[r].append(token)
                    if keep_logits:
                        kept[r].append(logits[r].float().cpu())
            if eos is not None:
                done |= chosen == eos
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            feed = torch.where(done, torch.full_like(chosen, pad_id), chosen)[:, None]
            logits = forward(feed)
    return list(zip(out, kept, strict=True))


def _cached_forward(
    model: HookedTransformer, cache: TransformerLensKeyValueCache, ones: Tensor
) -> Callable[[Tensor], Tensor]:
    """TransformerLens's forward of one token per row with its KV cache: the next logits."""

    def forward(feed: Tensor) -> Tensor:
        return model(feed, attention_mask=ones, past_kv_cache=cache)[:, -1]

    return forward


def decode_path(model: HookedTransformer) -> str:
    """``"fast"`` where :mod:`tlsteer.fast_decode` covers ``model`` and the hooks on it now, else
    why TransformerLens's forward decodes instead.

    Example:
        >>> from tlsteer.models import tiny_model
        >>> decode_path(tiny_model("llama"))
        'fast'
        >>> decode_path(tiny_model("gpt2"))[:54]
        "TransformerLens forward: positional_embedding_type='st"
    """
    reason = unsupported(model)
    if reason is None:
        unheard = unheard_hooks(model)
        if unheard:
            more = " ..." if len(unheard) > 3 else ""
            reason = f"hooks on {', '.join(unheard[:3])}{more}, which it does not compute"
    return "fast" if reason is None else f"TransformerLens forward: {reason}"


def generate(
    model: HookedTransformer,
    prompts: Iterable[str],
    steering: Steering | None = None,
    *,
    max_new_tokens: int = 40,
    do_sample: bool = False,
    **kwargs: Any,
) -> list[str]:
    """The continuation of each prompt as a string, generated in batches with steering.

    Takes the keyword arguments of :func:`generate_tokens` (``seed``, ``chat``, ``batch_size``,
    ``check_model``, ...). Each row's per-step logits equal those of the row generated alone.

    Example:
        >>> tlsteer.generate(model, ["Tell me a story."], vec.steering(6.0), max_new_tokens=20,
        ...                  chat=True)  # doctest: +SKIP
    """
    return list(
        generate_tokens(
            model, prompts, steering, max_new_tokens=max_new_tokens, do_sample=do_sample, **kwargs
        ).texts
    )
