"""A sweep engine that runs the unsteered prompt once: KV-cached prefixes, batched settings.

With CAA semantics, steering starts at the last token of the user turn, so every position before
it is the same in every setting. :func:`cached_ab_scores` runs those positions once per batch of
items into a TransformerLens KV cache, then runs only the steered suffix (the last question token,
the end of turn, the assistant header and ``(``) for many ``(hook, multiplier)`` settings at once:
the cache is repeated per setting and each row of the suffix forward gets its own multiplier.
The result equals :func:`tlsteer.evaluate.ab_scores` with the same steering up to float error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from tlsteer._types import parse_hook_name, validate_hook_name
from tlsteer.data import ABItem
from tlsteer.evaluate import ABScore, ab_prompt_ids, score_logits, tokens_after_question
from tlsteer.extract import left_pad
from tlsteer.hooks import _check_multiplier
from tlsteer.prefix import _repeated

__all__ = ["Setting", "cached_ab_scores"]


@dataclass(frozen=True)
class Setting:
    """Add ``multiplier * direction`` at ``hook`` from the end of the question onward."""

    hook: str
    direction: Tensor
    multiplier: float


def _row_steering(
    settings: Sequence[Setting], n_items: int, device: torch.device
) -> list[tuple[str, object]]:
    """One hook per hook name; row ``s * n_items + i`` gets setting ``s``'s multiplier there."""
    hooks = []
    for name in dict.fromkeys(s.hook for s in settings):
        coef = torch.tensor(
            [s.multiplier if s.hook == name else 0.0 for s in settings], device=device
        ).repeat_interleave(n_items)
        directions = [s.direction for s in settings if s.hook == name]
        if any(not torch.equal(d, directions[0]) for d in directions[1:]):
            raise ValueError(f"settings at {name!r} use different directions; give one direction per hook")
        delta_dir = directions[0].to(device)

        def add(act: Tensor, hook: object, coef: Tensor = coef, d: Tensor = delta_dir) -> Tensor:  # noqa: ARG001
            return act + coef.to(act.dtype)[:, None, None] * d.to(act.dtype)

        hooks.append((name, add))
    return hooks


def cached_ab_scores(
    model: HookedTransformer,
    items: Sequence[ABItem],
    settings: Sequence[Setting],
    batch_size: int = 16,
    max_rows: int = 64,
) -> list[list[ABScore]]:
    """A/B scores of ``items`` under each setting, running each batch's prompt prefix once.

    Args:
        model: A ``HookedTransformer`` with a tokenizer.
        items: CAA A/B items.
        settings: ``(hook, direction, multiplier)`` settings; a multiplier of 0 is the baseline.
        batch_size: Items per prefix forward.
        max_rows: At most this many ``setting x item`` rows per suffix forward.

    Returns:
        One list of :class:`~tlsteer.evaluate.ABScore` per setting, in the order of ``items``.
    """
    if not items:
        raise ValueError("no A/B items to score")
    if not settings:
        raise ValueError("no settings to score; give at least one Setting")
    for s in settings:
        validate_hook_name(model, s.hook)
        parse_hook_name(s.hook)
        _check_multiplier(s.multiplier)
        if s.direction.shape != (model.cfg.d_model,):
            raise ValueError(
                f"direction at {s.hook!r} has shape {tuple(s.direction.shape)}; expected "
                f"({model.cfg.d_model},)"
            )
    if batch_size < 1 or max_rows < 1:
        raise ValueError(f"batch_size and max_rows must be >= 1, got {batch_size} and {max_rows}")
    n_after = tokens_after_question(model)
    out: list[list[ABScore]] = [[] for _ in settings]
    device = torch.device(model.cfg.device)
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            tokens, mask = left_pad(model, ab_prompt_ids(model, batch))
            first = tokens.shape[1] - n_after - 1  # the last token of the question
            cache = TransformerLensKeyValueCache.init_cache(model.cfg, device, len(batch))
            model(tokens[:, :first], attention_mask=mask[:, :first], past_kv_cache=cache, return_type=None)
            suffix = tokens[:, first:]
            per_forward = max(1, max_rows // len(batch))
            for s0 in range(0, len(settings), per_forward):
                chunk = settings[s0 : s0 + per_forward]
                rows = suffix.repeat(len(chunk), 1)
                with model.hooks(fwd_hooks=_row_steering(chunk, len(batch), device)):
                    logits = model(
                        rows,
                        attention_mask=torch.ones_like(rows),
                        past_kv_cache=_repeated(cache, len(chunk)),
                    )[:, -1]
                for k in range(len(chunk)):
                    scores = score_logits(model, logits[k * len(batch) : (k + 1) * len(batch)], batch)
                    out[s0 + k].extend(scores)
    return out
