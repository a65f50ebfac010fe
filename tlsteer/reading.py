"""Reading at a hook: where each prompt is read, and the batched stream (raw or through a transform).

:func:`plan_reads` turns prompts or contrast data and a :class:`~tlsteer.Read` (a position, the
last token, the answer, or the mean over a token span) into token ids and one ``[start, end)``
span per prompt.
:func:`iter_reads` streams them: prompts sorted by length, left-padded with a mask
(:func:`tlsteer.tokens.left_pad`), ``run_with_cache`` with a ``names_filter`` and
``stop_at_layer``, a transform (the SAE's ``encode``, or nothing) applied to the activations in
each span only, and their mean per prompt. Only one batch of activations is alive at a time.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from tlsteer._types import check_batch_size, is_int
from tlsteer.data import ContrastSet, as_contrast_data
from tlsteer.read import Read, as_read, position_args
from tlsteer.tokens import left_pad, read_indices, tokenize_prompts

__all__ = [
    "ReadPlan",
    "hook_batches",
    "iter_reads",
    "plan_reads",
    "read_all",
    "stop_layer",
    "token_mask",
]

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def stop_layer(hook: str) -> int | None:
    """The ``stop_at_layer`` that still runs ``hook`` (``None``: run the whole model)."""
    match = _BLOCK.match(hook)
    return int(match.group(1)) + 1 if match else None


@dataclass(frozen=True)
class ReadPlan:
    """Token ids and read spans of every prompt; for contrast data, positives come first.

    ``kind`` is ``"prompts"``, ``"pairs"`` or ``"set"``; ``n_positive`` is how many of the
    prompts are positives (all of them for plain prompts).
    """

    prompts: tuple[str, ...]
    token_ids: tuple[tuple[int, ...], ...]
    spans: tuple[tuple[int, int], ...]
    kind: str
    n_positive: int

    @property
    def n_negative(self) -> int:
        return len(self.prompts) - self.n_positive


def _is_one_span(span: Any) -> bool:
    return (
        isinstance(span, tuple)
        and len(span) == 2
        and all(s is None or is_int(s) for s in span)
        and is_int(span[0])
    )


def _resolve_span(span: Any, prompt_no: int, n_tokens: int) -> tuple[int, int]:
    if not _is_one_span(span):
        raise TypeError(f"span for prompt {prompt_no} must be a (start, end) tuple of ints, got {span!r}")
    start, end = int(span[0]), n_tokens if span[1] is None else int(span[1])
    if not -n_tokens <= start < n_tokens or not -n_tokens < end <= n_tokens:
        raise IndexError(
            f"span {span!r} is outside prompt {prompt_no} ({n_tokens} tokens; start in "
            f"{-n_tokens}..{n_tokens - 1}, end in {-n_tokens + 1}..{n_tokens} or None)"
        )
    start, end = start % n_tokens, end if end >= 0 else end + n_tokens
    if start >= end:
        raise ValueError(
            f"span {span!r} of prompt {prompt_no} is empty ({n_tokens} tokens: [{start}, {end}))"
        )
    return start, end


def _spans(
    prompts: Sequence[str],
    token_ids: Sequence[Sequence[int]],
    read: Read,
    overrides: Sequence[int | None],
    kind: str,
) -> list[tuple[int, int]]:
    n = len(prompts)
    if read.kind == "reply":
        raise ValueError(
            "Read.reply() reads the replies of class examples: use it with tlsteer.class_reads or a class "
            "profile; for other prompts give Read.mean(span)"
        )
    if read.kind == "mean":
        span = read.span
        if span is None:
            return [(0, len(ids)) for ids in token_ids]
        if callable(span):
            pairs = enumerate(zip(prompts, token_ids, strict=True))
            return [_resolve_span(span(p, list(ids)), i, len(ids)) for i, (p, ids) in pairs]
        if _is_one_span(span):
            return [_resolve_span(span, i, len(ids)) for i, ids in enumerate(token_ids)]
        if isinstance(span, Sequence) and not isinstance(span, (str, bytes)):
            if kind == "set":
                raise ValueError(
                    "a ContrastSet takes one (start, end) span for every prompt, or a callable; not a list"
                )
            want, unit = (n, "prompts") if kind == "prompts" else (n // 2, "pairs")
            if len(span) != want:
                raise ValueError(
                    f"span has {len(span)} entries but there are {want} {unit}; give one per {unit[:-1]}"
                )
            each = list(span) * (n // want)
            return [
                _resolve_span(s, i, len(ids)) for i, (s, ids) in enumerate(zip(each, token_ids, strict=True))
            ]
        raise TypeError(f"span must be None, (start, end), one per prompt, or a callable, got {span!r}")
    index, own_first = position_args(read)
    if isinstance(index, tuple):
        if kind == "set":
            raise ValueError("a ContrastSet takes one position for every prompt (an int) or a callable")
        want, unit = (n, "prompts") if kind == "prompts" else (n // 2, "pairs")
        if len(index) != want:
            raise ValueError(
                f"Read.at has {len(index)} positions but there are {want} {unit}; give one per {unit[:-1]}"
            )
        index = list(index) * (n // want)
    at = read_indices(prompts, [list(t) for t in token_ids], index, overrides if own_first else None)
    return [(a, a + 1) for a in at]


def plan_reads(model: HookedTransformer, data: Any, read: Read | None = None) -> ReadPlan:
    """Token ids and spans for plain prompts, contrast pairs or a :class:`~tlsteer.ContrastSet`.

    ``read`` defaults to :meth:`Read.answer` (a pair's or set's own read position, else the last
    token).
    """
    read = as_read(read, Read.answer())
    if isinstance(data, str):
        raise TypeError(f"expected a list of prompts, not one string ({data[:40]!r})")
    if isinstance(data, Sequence) and len(data) == 0:
        raise ValueError("no prompts to read; give at least one prompt or contrast pair")
    if isinstance(data, Sequence) and all(isinstance(p, str) for p in data):
        prompts = list(data)
        overrides, kind, n_pos = [None] * len(prompts), "prompts", len(prompts)
    else:
        contrast = as_contrast_data(data)
        if isinstance(contrast, ContrastSet):
            prompts = [*contrast.positive, *contrast.negative]
            overrides, kind, n_pos = [contrast.read_index] * len(prompts), "set", len(contrast.positive)
        else:
            prompts = [p.positive for p in contrast] + [p.negative for p in contrast]
            overrides, kind, n_pos = [p.read_index for p in contrast] * 2, "pairs", len(contrast)
    token_ids = tokenize_prompts(model, prompts)
    spans = _spans(prompts, token_ids, read, overrides, kind)
    return ReadPlan(tuple(prompts), tuple(tuple(t) for t in token_ids), tuple(spans), kind, n_pos)


def token_mask(lengths: Sequence[int], width: int, skip_first: int, device: Any) -> torch.Tensor:
    """``[batch, width]``: the columns of a left-padded batch at own positions ``>= skip_first``."""
    pad = torch.tensor([width - n for n in lengths], device=device)[:, None]
    return torch.arange(width, device=device)[None, :] - pad >= skip_first


Transform = Callable[[Float[Tensor, "n d_model"]], Tensor]


def hook_batches(
    model: HookedTransformer, hook: str, token_ids: Sequence[Sequence[int]], batch_size: int
) -> Iterator[tuple[list[int], Tensor, Float[Tensor, "batch pos d"]]]:
    """``(indices, tokens, activations at hook)`` for left-padded batches of ``token_ids``, in order.

    The model runs only as far as the hook (``stop_at_layer``), with the padding masked; call it
    under ``torch.no_grad()``.
    """
    stop = stop_layer(hook)
    for first in range(0, len(token_ids), batch_size):
        batch = list(range(first, min(first + batch_size, len(token_ids))))
        tokens, mask = left_pad(model, [list(token_ids[i]) for i in batch])
        _, cache = model.run_with_cache(
            tokens, attention_mask=mask, names_filter=[hook], stop_at_layer=stop, return_type=None
        )
        yield batch, tokens, cache[hook]


def iter_reads(
    model: HookedTransformer, hook: str, plan: ReadPlan, transform: Transform, batch_size: int = 8
) -> Iterator[tuple[list[int], Float[Tensor, "batch d_out"]]]:
    """Batches of ``(prompt indices, mean of transform(activations) over each prompt's span)``.

    Rows are float32 on the CPU. A one-token span gives that token's value exactly.
    """
    batch_size = check_batch_size(batch_size)
    ids = plan.token_ids
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    with torch.no_grad():
        for rows, tokens, acts in hook_batches(model, hook, [ids[i] for i in order], batch_size):
            batch = [order[r] for r in rows]
            width = tokens.shape[1]
            pad = torch.tensor([width - len(ids[i]) for i in batch], device=acts.device)[:, None]
            lo = pad + torch.tensor([plan.spans[i][0] for i in batch], device=acts.device)[:, None]
            hi = pad + torch.tensor([plan.spans[i][1] for i in batch], device=acts.device)[:, None]
            cols = torch.arange(width, device=acts.device)[None, :]
            chosen = (cols >= lo) & (cols < hi)
            values = transform(acts[chosen]).float()
            owner = chosen.nonzero()[:, 0].to(values.device)
            sums = torch.zeros(len(batch), values.shape[-1], dtype=values.dtype, device=values.device)
            sums.index_add_(0, owner, values)
            counts = chosen.sum(dim=1).to(values.device, values.dtype)[:, None]
            yield batch, (sums / counts).cpu()


def read_all(
    model: HookedTransformer, hook: str, plan: ReadPlan, transform: Transform, d_out: int, batch_size: int = 8
) -> Float[Tensor, "n d_out"]:
    """Every prompt's row of :func:`iter_reads`, in the plan's order."""
    out = torch.empty((len(plan.prompts), d_out), dtype=torch.float32)
    for batch, rows in iter_reads(model, hook, plan, transform, batch_size):
        out[torch.tensor(batch)] = rows
    return out
