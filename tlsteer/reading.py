"""The reading engine: where each prompt is read (:func:`plan_reads`), and reading it
(:func:`iter_reads`, :func:`read_all`), at one or several hooks, raw or through a transform.

:func:`plan_reads` turns prompts or contrast data and a :class:`~tlsteer.Read` (a position, the
last token, the answer, or the mean over a token span) into token ids and one ``[start, end)``
span per prompt. :func:`iter_reads` runs a plan batch by batch and yields, per hook, the mean of
``transform(activations)`` over each prompt's span (a one-token span gives that token's value
exactly). The model runs only as far as the deepest hook (``stop_at_layer``), and each hook
reduces its activations as the forward passes it, so no cache of whole activations is kept.

Two ways to batch, with the same reduction: prompts sorted by length and left-padded with an
attention mask (TransformerLens shifts rotary and learned positions by the padding, so a batched
read equals a one-by-one read); or, for contrast pairs with ``share_prefix`` (the default), each
pair's common prefix run once into a KV cache and only the two suffixes after it
(:mod:`tlsteer.prefix`). Both give the same rows up to float error.
:func:`as_contrast` splits the rows of contrast data into a
:class:`~tlsteer.contrast.ContrastActivations`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from tlsteer._types import check_batch_size, is_int, validate_hook_name
from tlsteer.contrast import ContrastActivations
from tlsteer.data import ContrastSet, as_contrast_data
from tlsteer.prefix import pair_layouts, prefix_batches, prefix_forward, shared_head
from tlsteer.read import Read, as_read, position_args
from tlsteer.tokens import left_pad, read_indices, tokenize_prompts

__all__ = [
    "ReadBatch",
    "ReadPlan",
    "Transform",
    "as_contrast",
    "hook_batches",
    "iter_reads",
    "padded_batches",
    "plan_reads",
    "read_all",
    "stop_layer",
    "token_mask",
]

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def stop_layer(hook: str | Sequence[str]) -> int | None:
    """The ``stop_at_layer`` that still runs ``hook`` (or every hook of a list; ``None``: run the
    whole model)."""
    hooks = [hook] if isinstance(hook, str) else list(hook)
    layers = [_BLOCK.match(h) for h in hooks]
    if not layers or any(m is None for m in layers):
        return None
    return max(int(m.group(1)) for m in layers if m is not None) + 1


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
"""Maps the activation rows of a read span (an SAE's ``encode``, say) before their mean."""


def padded_batches(
    model: HookedTransformer, token_ids: Sequence[Sequence[int]], batch_size: int
) -> Iterator[tuple[list[int], Tensor, Tensor]]:
    """``(indices, tokens, attention_mask)`` of left-padded batches of ``token_ids``, in order."""
    for first in range(0, len(token_ids), batch_size):
        batch = list(range(first, min(first + batch_size, len(token_ids))))
        tokens, mask = left_pad(model, [list(token_ids[i]) for i in batch])
        yield batch, tokens, mask


def hook_batches(
    model: HookedTransformer, hook: str, token_ids: Sequence[Sequence[int]], batch_size: int
) -> Iterator[tuple[list[int], Tensor, Float[Tensor, "batch pos d"]]]:
    """``(indices, tokens, activations at hook)`` for left-padded batches of ``token_ids``, in order.

    Every token's activation, for streams that need them all (densities, say); the model runs only
    as far as the hook (``stop_at_layer``), with the padding masked. Call it under
    ``torch.no_grad()``.
    """
    stop = stop_layer(hook)
    for batch, tokens, mask in padded_batches(model, token_ids, batch_size):
        _, cache = model.run_with_cache(
            tokens, attention_mask=mask, names_filter=[hook], stop_at_layer=stop, return_type=None
        )
        yield batch, tokens, cache[hook]


@dataclass(frozen=True)
class ReadBatch:
    """One batch of a read: ``indices`` into the plan's prompts and ``{hook: [len(indices), d]}``
    rows (float32, CPU)."""

    indices: list[int]
    rows: dict[str, Tensor]


@dataclass(frozen=True)
class _Forward:
    """A forward of a batch: plan rows, tokens, the columns ``[lo, hi)`` each row is read over."""

    indices: list[int]
    tokens: Tensor
    lo: list[int]
    hi: list[int]
    kwargs: dict[str, Any]


def _reduce(
    act: Tensor, rows: Tensor, lo: Tensor, hi: Tensor, single: bool, transform: Transform | None
) -> Tensor:
    """Each row's mean of ``transform(act)`` over its columns ``[lo, hi)``, float32 on the CPU."""
    if single:  # one token per row: gather it (exactly the value of that token)
        values = act[rows, lo]
        return (values if transform is None else transform(values)).float().cpu()
    cols = torch.arange(act.shape[1], device=act.device)[None, :]
    chosen = (cols >= lo[:, None]) & (cols < hi[:, None])
    values = act[chosen]
    values = (values if transform is None else transform(values)).float()
    owner = chosen.nonzero()[:, 0].to(values.device)
    sums = torch.zeros(act.shape[0], *values.shape[1:], dtype=values.dtype, device=values.device)
    sums.index_add_(0, owner, values)
    counts = (hi - lo).to(values.device, values.dtype).reshape(-1, *([1] * (values.ndim - 1)))
    return (sums / counts).cpu()


def _run(
    model: HookedTransformer,
    forward: _Forward,
    hooks: Sequence[str],
    stop: int | None,
    transform: Transform | None,
) -> dict[str, Tensor]:
    """Run one forward; each hook reduces its activations as the forward passes it."""
    device = forward.tokens.device
    rows = torch.arange(len(forward.indices), device=device)
    lo = torch.tensor(forward.lo, device=device)
    hi = torch.tensor(forward.hi, device=device)
    single = all(b - a == 1 for a, b in zip(forward.lo, forward.hi, strict=True))
    out: dict[str, Tensor] = {}

    def reader(name: str) -> Callable[[Tensor, object], None]:
        def read(act: Tensor, hook: object) -> None:  # noqa: ARG001
            out[name] = _reduce(act, rows, lo, hi, single, transform)

        return read

    # TransformerLens types fwd_hooks as an invariant list[tuple[str | Callable, Callable]]
    with model.hooks(fwd_hooks=[(h, reader(h)) for h in hooks]):  # pyright: ignore[reportArgumentType]
        model(forward.tokens, stop_at_layer=stop, return_type=None, **forward.kwargs)
    return {h: out[h] for h in hooks}  # in the order asked, not the order the forward passed them


def _plain_forwards(model: HookedTransformer, plan: ReadPlan, batch_size: int) -> Iterator[_Forward]:
    """Prompts sorted by length (longest first, to cut padding), left-padded with a mask."""
    ids = plan.token_ids
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    for rows, tokens, mask in padded_batches(model, [ids[i] for i in order], batch_size):
        batch = [order[r] for r in rows]
        width = tokens.shape[1]
        pad = [width - len(ids[i]) for i in batch]
        lo = [p + plan.spans[i][0] for p, i in zip(pad, batch, strict=True)]
        hi = [p + plan.spans[i][1] for p, i in zip(pad, batch, strict=True)]
        yield _Forward(batch, tokens, lo, hi, {"attention_mask": mask})


def _check_hooks(model: HookedTransformer, hooks: Any) -> list[str]:
    if isinstance(hooks, str):
        hooks = [hooks]
    if not isinstance(hooks, Sequence) or not hooks:
        raise ValueError(f"hooks must be a non-empty list of hook names, got {hooks!r}")
    for name in hooks:
        validate_hook_name(model, name)
    if len(set(hooks)) != len(hooks):
        raise ValueError(f"hooks must be distinct, got {list(hooks)}")
    return list(hooks)


def iter_reads(
    model: HookedTransformer,
    plan: ReadPlan,
    hooks: str | Sequence[str],
    *,
    transform: Transform | None = None,
    batch_size: int = 8,
    share_prefix: bool = True,
    show_progress: bool = False,
    desc: str = "reading",
) -> Iterator[ReadBatch]:
    """Read a plan batch by batch: each prompt's mean of ``transform(activations)`` over its span.

    Args:
        model: A ``HookedTransformer`` with a tokenizer.
        plan: Token ids and spans (:func:`plan_reads`).
        hooks: A full hook name or several; every one is read in the same forward.
        transform: Maps the activation rows of the spans before their mean (an SAE's encoder);
            ``None`` keeps the activations.
        batch_size: Prompts per forward (pairs per forward with prefix sharing: their prefixes run
            together, then their ``2 * batch_size`` suffixes).
        share_prefix: For contrast pairs, run each pair's common prefix once
            (:mod:`tlsteer.prefix`); ignored for plain prompts, a ContrastSet and hooks outside the
            blocks. Both ways give the same rows up to float error.
        show_progress: Show a tqdm progress bar over the batches.
        desc: The progress bar's label.

    Yields:
        :class:`ReadBatch` es whose indices cover the plan's prompts once, in no fixed order.
    """
    batch_size = check_batch_size(batch_size)
    hooks = _check_hooks(model, hooks)
    stop = stop_layer(hooks)
    with torch.no_grad():
        if share_prefix and plan.kind == "pairs" and stop is not None:
            layouts = pair_layouts(plan.token_ids, plan.spans)
            batches = prefix_batches(layouts, batch_size)
            head = shared_head(model, layouts, stop)
            n = plan.n_positive

            def forwards() -> Iterator[_Forward]:
                for batch in batches:
                    tokens, kwargs = prefix_forward(model, batch, head, stop)
                    spans = [p.pos_span for p in batch] + [p.neg_span for p in batch]
                    indices = [p.index for p in batch] + [n + p.index for p in batch]
                    yield _Forward(indices, tokens, [s[0] for s in spans], [s[1] for s in spans], kwargs)

            total, stream = len(batches), forwards()
        else:
            total, stream = -(-len(plan.prompts) // batch_size), _plain_forwards(model, plan, batch_size)
        for forward in tqdm(stream, total=total, desc=desc, disable=not show_progress, leave=False):
            yield ReadBatch(forward.indices, _run(model, forward, hooks, stop, transform))


def read_all(
    model: HookedTransformer,
    plan: ReadPlan,
    hooks: str | Sequence[str],
    *,
    transform: Transform | None = None,
    batch_size: int = 8,
    share_prefix: bool = True,
    show_progress: bool = False,
    desc: str = "reading",
) -> dict[str, Float[Tensor, "n d"]]:
    """Every prompt's row of :func:`iter_reads` at each hook, in the plan's order (float32, CPU).

    Example:
        >>> plan = plan_reads(model, ["I love it", "I hate it"], Read.mean())  # doctest: +SKIP
        >>> rows = read_all(model, plan, ["blocks.3.hook_resid_post"])  # doctest: +SKIP
        >>> rows["blocks.3.hook_resid_post"].shape  # doctest: +SKIP
        torch.Size([2, 576])
    """
    out: dict[str, Tensor] = {}
    for batch in iter_reads(
        model,
        plan,
        hooks,
        transform=transform,
        batch_size=batch_size,
        share_prefix=share_prefix,
        show_progress=show_progress,
        desc=desc,
    ):
        index = torch.tensor(batch.indices)
        for hook, rows in batch.rows.items():
            if hook not in out:
                out[hook] = torch.empty((len(plan.prompts), *rows.shape[1:]), dtype=torch.float32)
            out[hook][index] = rows
    return out


def as_contrast(
    plan: ReadPlan, rows: dict[str, Tensor], dictionary: str | None = None
) -> ContrastActivations:
    """The rows of a plan of contrast data split into positives and negatives."""
    if plan.kind == "prompts":
        raise TypeError(
            "plain prompts have no positive and negative sides; give contrast pairs or a ContrastSet"
        )
    n = plan.n_positive
    return ContrastActivations(
        {h: r[:n] for h, r in rows.items()},
        {h: r[n:] for h, r in rows.items()},
        paired=plan.kind == "pairs",
        dictionary=dictionary,
    )
