"""Reading activations: tokenize, left-pad, ``run_with_cache`` with a ``names_filter``, gather.

:func:`read_activations` reads one activation per prompt at each requested hook;
:func:`extract_activations` does it for the positive and negative sides of contrast data. Batches
are left-padded with an attention mask (TransformerLens shifts rotary and learned positions by the
padding), so a batched read equals a one-by-one read; prompts are sorted by length to cut padding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
from tlsteer.tokens import ReadIndex, check_pair_read_index, left_pad, read_indices, tokenize_prompts

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
    read_token_index: ReadIndex = -1,
    batch_size: int = 8,
    show_progress: bool = False,
    read_index_overrides: Sequence[int | None] | None = None,
    desc: str = "reading activations",
) -> dict[str, Float[Tensor, "n d_model"]]:
    """One activation per prompt at each hook, at the read position.

    Args:
        model: A ``HookedTransformer`` with a tokenizer.
        prompts: Formatted prompt strings (tokenized with :func:`tlsteer.data.tokenize`).
        hooks: Full hook names such as ``"blocks.10.hook_resid_post"``.
        read_token_index: Where to read, see :data:`ReadIndex`.
        batch_size: Prompts per forward pass.
        show_progress: Show a tqdm progress bar.
        read_index_overrides: Per-prompt indices that take precedence where not ``None``.
        desc: The progress bar's label.

    Returns:
        ``{hook: [len(prompts), d_model]}`` in the order of ``prompts``, float32 on the CPU.
    """
    batch_size = check_batch_size(batch_size)
    if not prompts:
        raise ValueError("no prompts to read; give at least one")
    layers = [parse_hook_name(h)[0] for h in hooks]
    for name in hooks:
        validate_hook_name(model, name)
    token_ids = tokenize_prompts(model, prompts)
    read_at = read_indices(prompts, token_ids, read_token_index, read_index_overrides)
    stop_at = max(layers) + 1
    order = sorted(range(len(prompts)), key=lambda i: -len(token_ids[i]))
    out = {h: torch.empty((len(prompts), model.cfg.d_model), dtype=torch.float32) for h in hooks}
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
    hook: str = "resid_post",
    read_token_index: ReadIndex = -1,
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
        read_token_index: Where to read; a pair's own ``read_index`` takes precedence.
        batch_size: Rows per forward over full-length prompts (with ``share_prefix``, the
            prefixes of ``batch_size`` pairs; their short suffixes run after in one forward).
        show_progress: Show a tqdm progress bar.
        share_prefix: For pairs, run each pair's common prefix once and only the differing
            suffixes after it (:mod:`tlsteer.prefix`); ``False`` reads every prompt in full
            with ``run_with_cache``. Both give the same activations up to float error.

    Example:
        >>> acts = extract_activations(model, [("I love it", "I hate it")], layers=[3])  # doctest: +SKIP
        >>> acts.positive["blocks.3.hook_resid_post"].shape  # doctest: +SKIP
        torch.Size([1, 576])
    """
    data = as_contrast_data(samples)
    validate_hook_point(hook)
    hooks = [hook_name(layer, hook) for layer in resolve_layers(model, layers)]
    kwargs = {"batch_size": batch_size, "show_progress": show_progress}
    if isinstance(data, ContrastSet):
        if not isinstance(read_token_index, (int, Callable)):  # type: ignore[arg-type]
            raise TypeError("a ContrastSet takes an int or a callable read_token_index")
        sides = {}
        for side in ("positive", "negative"):
            prompts = getattr(data, side)
            sides[side] = read_activations(
                model,
                prompts,
                hooks,
                read_token_index,
                read_index_overrides=[data.read_index] * len(prompts),
                desc=side,
                **kwargs,
            )
        return ContrastActivations(sides["positive"], sides["negative"], paired=False)
    check_pair_read_index(read_token_index, len(data))
    if share_prefix:
        n, d = len(data), model.cfg.d_model
        pos = {h: torch.empty((n, d), dtype=torch.float32) for h in hooks}
        neg = {h: torch.empty((n, d), dtype=torch.float32) for h in hooks}
        for batch in iter_pair_activations(model, data, hooks, read_token_index, **kwargs):
            index = torch.tensor(batch.indices)
            for h in hooks:
                pos[h][index] = batch.positive[h]
                neg[h][index] = batch.negative[h]
        return ContrastActivations(pos, neg, paired=True)
    overrides = [p.read_index for p in data]
    prompts = [p.positive for p in data] + [p.negative for p in data]
    if isinstance(read_token_index, Sequence):
        read_token_index = list(read_token_index) * 2
    acts = read_activations(
        model,
        prompts,
        hooks,
        read_token_index,
        read_index_overrides=overrides * 2,
        desc="pairs",
        **kwargs,
    )
    n = len(data)
    return ContrastActivations(
        {h: a[:n] for h, a in acts.items()}, {h: a[n:] for h, a in acts.items()}, paired=True
    )
