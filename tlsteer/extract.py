"""Reading activations: tokenize, left-pad, ``run_with_cache`` with a ``names_filter``, gather.

:func:`read_activations` reads one activation per prompt at each requested hook;
:func:`extract_activations` does it for the positive and negative sides of contrast data. Batches
are left-padded with an attention mask (TransformerLens shifts rotary and learned positions by the
padding), so a batched read equals a one-by-one read; prompts are sorted by length to cut padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from tlsteer._types import (
    check_batch_size,
    hook_name,
    parse_hook_name,
    resolve_layers,
    validate_hook_name,
    validate_hook_point,
)
from tlsteer.data import ContrastPair, ContrastSet, as_contrast_data
from tlsteer.prefix import iter_pair_activations
from tlsteer.read import Read, as_read
from tlsteer.reading import ReadPlan, plan_reads, read_all
from tlsteer.tokens import left_pad

__all__ = ["ContrastActivations", "extract_activations", "read_activations"]


@dataclass(frozen=True)
class ContrastActivations:
    """Activations of the positive and negative prompts, keyed by full hook name."""

    positive: dict[str, Float[Tensor, "n_pos d_model"]]
    negative: dict[str, Float[Tensor, "n_neg d_model"]]
    paired: bool

    @property
    def hooks(self) -> list[str]:
        return list(self.positive)


def read_activations(
    model: HookedTransformer,
    prompts: Sequence[str],
    hooks: Sequence[str],
    *,
    read: Read | None = None,
    batch_size: int = 8,
    show_progress: bool = False,
    desc: str = "reading activations",
) -> dict[str, Float[Tensor, "n d_model"]]:
    """One activation per prompt at each hook: at a position, or the mean over a span.

    Args:
        model: A ``HookedTransformer`` with a tokenizer.
        prompts: Formatted prompt strings (tokenized with :func:`tlsteer.data.tokenize`).
        hooks: Full hook names such as ``"blocks.10.hook_resid_post"``.
        read: Where to read (default :meth:`Read.last <tlsteer.Read.last>`); a mean read
            (:meth:`Read.mean <tlsteer.Read.mean>`) runs the span engine.
        batch_size: Prompts per forward pass.
        show_progress: Show a tqdm progress bar.
        desc: The progress bar's label.

    Returns:
        ``{hook: [len(prompts), d_model]}`` in the order of ``prompts``, float32 on the CPU.
    """
    batch_size = check_batch_size(batch_size)
    read = as_read(read, Read.last())
    if isinstance(prompts, str) or not prompts:
        raise ValueError(f"no prompts to read; give a non-empty list of strings, got {prompts!r}")
    for name in hooks:
        validate_hook_name(model, name)
        parse_hook_name(name)
    plan = plan_reads(model, list(prompts), read)
    if not read.is_position:
        return {h: read_all(model, h, plan, _identity, model.cfg.d_model, batch_size) for h in hooks}
    return _read_positions(model, plan, hooks, batch_size, show_progress, desc)


def _read_positions(
    model: HookedTransformer,
    plan: ReadPlan,
    hooks: Sequence[str],
    batch_size: int,
    show_progress: bool,
    desc: str = "reading activations",
) -> dict[str, Tensor]:
    """Each prompt's activation at its one-token span, prompts sorted by length, left-padded."""
    token_ids = [list(t) for t in plan.token_ids]
    read_at = [start for start, _ in plan.spans]
    stop_at = max(parse_hook_name(h)[0] for h in hooks) + 1
    n = len(token_ids)
    order = sorted(range(n), key=lambda i: -len(token_ids[i]))
    out = {h: torch.empty((n, model.cfg.d_model), dtype=torch.float32) for h in hooks}
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    with torch.no_grad():
        for batch in tqdm(batches, desc=desc, disable=not show_progress, leave=False):
            tokens, mask = left_pad(model, [token_ids[i] for i in batch])
            width = tokens.shape[1]
            _, cache = model.run_with_cache(
                tokens,
                attention_mask=mask,
                names_filter=list(hooks),
                stop_at_layer=stop_at,
                return_type=None,
            )
            rows = torch.arange(len(batch), device=tokens.device)
            cols = torch.tensor([width - len(token_ids[i]) + read_at[i] for i in batch], device=tokens.device)
            index = torch.tensor(batch)
            for h in hooks:
                out[h][index] = cache[h][rows, cols].float().cpu()
    return out


def extract_activations(
    model: HookedTransformer,
    samples: Sequence[ContrastPair | tuple[str, str]] | ContrastSet,
    layers: int | Sequence[int] | None = None,
    *,
    hook: str = "resid_post",
    read: Read | None = None,
    batch_size: int = 8,
    show_progress: bool = False,
    share_prefix: bool = True,
) -> ContrastActivations:
    """Activations of the positive and negative prompts of contrast data.

    Args:
        model: A ``HookedTransformer`` with a tokenizer.
        samples: Contrast pairs, ``(positive, negative)`` tuples, or a :class:`ContrastSet`.
        layers: Layer indices (negative counts from the end); ``None`` means all layers.
        hook: The hook point inside each block: ``resid_post`` (default), ``resid_pre``,
            ``resid_mid``, ``attn_out`` or ``mlp_out``.
        read: Where to read (default :meth:`Read.answer <tlsteer.Read.answer>`: a pair's own read
            position, the answer letter of a CAA item, else the last token).
        batch_size: Rows per forward over full-length prompts (with ``share_prefix``, the
            prefixes of ``batch_size`` pairs; their short suffixes run after in one forward).
        show_progress: Show a tqdm progress bar.
        share_prefix: For pairs read at a position, run each pair's common prefix once and only
            the differing suffixes after it (:mod:`tlsteer.prefix`); ``False`` reads every prompt
            in full with ``run_with_cache``. Both give the same activations up to float error. A
            mean read always reads the prompts in full.

    Example:
        >>> acts = extract_activations(model, [("I love it", "I hate it")], layers=[3])  # doctest: +SKIP
        >>> acts.positive["blocks.3.hook_resid_post"].shape  # doctest: +SKIP
        torch.Size([1, 576])
    """
    data = as_contrast_data(samples)
    read = as_read(read, Read.answer())
    validate_hook_point(hook)
    hooks = [hook_name(layer, hook) for layer in resolve_layers(model, layers)]
    batch_size = check_batch_size(batch_size)
    paired = not isinstance(data, ContrastSet)
    if paired and share_prefix and read.is_position:
        n, d = len(data), model.cfg.d_model
        pos = {h: torch.empty((n, d), dtype=torch.float32) for h in hooks}
        neg = {h: torch.empty((n, d), dtype=torch.float32) for h in hooks}
        for batch in iter_pair_activations(model, data, hooks, read, batch_size, show_progress):
            index = torch.tensor(batch.indices)
            for h in hooks:
                pos[h][index] = batch.positive[h]
                neg[h][index] = batch.negative[h]
        return ContrastActivations(pos, neg, paired=True)
    plan = plan_reads(model, data, read)  # positives first, then negatives, with their spans
    n = plan.n_positive
    if read.is_position:
        acts = _read_positions(model, plan, hooks, batch_size, show_progress, "pairs" if paired else "set")
    else:
        acts = {h: read_all(model, h, plan, _identity, model.cfg.d_model, batch_size) for h in hooks}
    return ContrastActivations(
        {h: a[:n] for h, a in acts.items()}, {h: a[n:] for h, a in acts.items()}, paired=paired
    )


def _identity(rows: Tensor) -> Tensor:
    return rows
