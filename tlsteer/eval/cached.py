"""A sweep engine that runs the unsteered prompt once: KV-cached prefixes, batched settings.

With CAA semantics (:func:`tlsteer.eval.ab.question_end`), steering starts at the last token of
the user turn, so every position before it is the same in every steering. :func:`cached_ab_scores`
runs those positions once per batch of items into a TransformerLens KV cache, then runs only the
steered suffix (the last question token, the end of turn, the assistant header and ``(``) for many
steerings at once (each one edit at one hook), one steering per block of rows.

Two ways to run the suffix rows (``attention=``):

``"shared"``
    Every row attends to its item's prefix keys and values, kept once per batch: the suffix
    queries of all settings for an item are stacked against one copy of that item's prefix (and
    against their own row's suffix keys), so the cache is never copied per setting and grouped-query
    heads are never expanded. A setting at block ``L`` equals the unsteered run before block ``L``,
    so its rows start there, from the unsteered residual; multiplier 0 is the unsteered run itself.
    The tokens every prompt starts with (the chat template's system turn and user header) run once
    per call, not once per batch. Only the last position is unembedded. The blocks, norms, MLPs
    and every residual hook are TransformerLens's own; only the attention step inside each block
    is replaced for the suffix, and MLP weights are stored transposed (same values) while it runs.
``"repeat"``
    TransformerLens's own forward with its KV cache repeated once per setting. Slower, but it runs
    every hook point, attention internals included, on any architecture.
``"auto"`` (default)
    ``"shared"`` where the model supports it (:func:`shared_attention_unsupported`) and no hook is
    attached inside an attention module, else ``"repeat"``.

Both equal :func:`tlsteer.eval.ab.ab_scores` with the same steering up to float error (tested
within 1e-4 on both tiny architectures).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.components.unembed import Unembed
from transformer_lens.utilities.activation_functions import apply_softcap

from tlsteer._types import parse_hook_name, validate_hook_name
from tlsteer.data import ABItem
from tlsteer.eval.ab import (
    ABScore,
    OutsideAB,
    ab_prompt_ids,
    check_ab_items,
    question_end,
    score_logits,
    tokens_after_question,
)
from tlsteer.eval.shared_attention import (
    SharedPrefix,
    attending_to,
    mlp_weights_stored_transposed,
    resolve_attention,
)
from tlsteer.hooks import DirectionEdit, Edit, check_direction
from tlsteer.kv import MIN_SHARED_HEAD, common_prefix_length, head_cache, repeat_cache
from tlsteer.operators import is_addition
from tlsteer.steering import Steering, check_model_match
from tlsteer.tokens import left_pad

__all__ = ["cached_ab_scores"]


@dataclass(frozen=True)
class _Setting:
    """One steering as the engine runs it: ``delta`` added at ``hook`` (an addition), or ``edit``."""

    hook: str
    delta: Tensor | None = None
    edit: Edit | None = None

    @property
    def is_baseline(self) -> bool:
        return self.edit is None and (self.delta is None or not bool(self.delta.any()))


def _setting(model: HookedTransformer, steering: Steering, where: Any, check_model: bool) -> _Setting:
    if not isinstance(steering, Steering):
        raise TypeError(f"steerings must be tlsteer.Steering values, got {steering!r}")
    if check_model:
        check_model_match(model, steering.model_name)
    if steering.prefix:
        raise ValueError(
            f"the cached engine shares the prompt's prefix across steerings, so it cannot run {steering!r} "
            "with a prompt prefix; score it with tlsteer.eval.ab_scores"
        )
    if steering.is_unsteered:
        return _Setting(f"blocks.{model.cfg.n_layers - 1}.hook_resid_post")
    if len(steering.edits) != 1:
        raise ValueError(
            f"the cached engine runs one edit at one hook per steering; {steering!r} has "
            f"{len(steering.edits)}: score it with tlsteer.eval.ab_scores"
        )
    if steering.positions != where:
        raise ValueError(
            f"the cached engine steers from the end of the question ({where.describe()}: "
            f"question_end(model)); {steering!r} acts at {steering.positions.describe()}: move it with "
            ".at(question_end(model)) or score it with tlsteer.eval.ab_scores"
        )
    hook, edit = steering.edits[0]
    validate_hook_name(model, hook)
    parse_hook_name(hook)
    if isinstance(edit, DirectionEdit):
        check_direction(hook, edit.direction, model.cfg.d_model)
        if is_addition(edit.operator):
            return _Setting(hook, delta=edit.direction)
    return _Setting(hook, edit=edit)


def model_width(settings: Sequence[_Setting | None]) -> int:
    """``d_model`` as the settings' deltas know it (every addition setting has one)."""
    return next(s.delta.shape[0] for s in settings if s is not None and s.delta is not None)


def _row_hook(
    name: str, settings: Sequence[_Setting | None], n_items: int, device: torch.device
) -> tuple[str, Callable[[Tensor, object], Tensor]]:
    """A hook at ``name``: the block of rows ``s * n_items ...`` gets ``settings[s]``'s steering.

    A ``None`` setting, or one at another hook, is a block of rows left as they are.
    """
    here = [s if s is not None and s.hook == name and not s.is_baseline else None for s in settings]
    if all(s is None for s in here):

        def keep(act: Tensor, hook: object) -> Tensor:  # noqa: ARG001
            return act

        return name, keep
    if all(s is None or s.edit is None for s in here):  # additions only: one precomputed delta
        zero = torch.zeros(model_width(here), dtype=torch.float32)
        rows = torch.stack(
            [s.delta.float().cpu() if s is not None and s.delta is not None else zero for s in here]
        )
        delta = rows.repeat_interleave(n_items, dim=0)[:, None, :].to(device)  # [rows, 1, d_model]

        def add(act: Tensor, hook: object) -> Tensor:  # noqa: ARG001
            return act + delta.to(act.dtype)

        return name, add

    def delta_of(s: _Setting | None, b: Tensor) -> Tensor | None:
        if s is None:
            return None
        if s.edit is not None:
            return s.edit(b)
        return None if s.delta is None else s.delta.to(b.dtype).expand_as(b)

    def edit_rows(act: Tensor, hook: object) -> Tensor:  # noqa: ARG001
        blocks = act.split(n_items)
        out = []
        for b, s in zip(blocks, here, strict=True):
            d = delta_of(s, b)
            out.append(b if d is None else b + d)
        return torch.cat(out)

    return name, edit_rows


def _last_logits(model: HookedTransformer, resid: Tensor) -> Tensor:
    """Next-token logits from the final residual at the last position only."""
    x = resid[:, -1:]
    if model.cfg.normalization_type is not None:
        x = model.ln_final(x)
    unembed = model.unembed
    if type(unembed) is Unembed:  # its forward copies the whole transposed W_U on every call
        logits = unembed.hook_out(unembed.hook_in(x) @ unembed.W_U + unembed.b_U)
    else:
        logits = unembed(x)
    return apply_softcap(logits[:, 0], model.cfg.output_logits_soft_cap)


def _shared_batch(
    model: HookedTransformer,
    cache: TransformerLensKeyValueCache,
    tokens: Tensor,
    mask: Tensor,
    first: int,
    settings: Sequence[_Setting],
    starts: Sequence[int],
    per_forward: int,
) -> list[Tensor]:
    """Next-token logits ``[items, d_vocab]`` of one batch under each setting (shared prefix).

    ``cache`` holds what comes before ``tokens`` (a shared head, or nothing). Rows are
    setting-major blocks of ``items`` rows. The first pass carries the unsteered block
    from block 0 on; a steered setting's block joins at the block it is applied in, as a copy of
    the unsteered residual there, and later passes start from those saved residuals.
    """
    n_items = tokens.shape[0]
    if first > 0:
        model(tokens[:, :first], attention_mask=mask[:, :first], past_kv_cache=cache, return_type=None)
    prefix = SharedPrefix(model, cache, cache.previous_attention_mask)
    n_prefix = prefix.mask.shape[1]
    suffix = tokens[:, first:]
    # steered settings, ordered by the block where they first differ from the unsteered run
    todo = sorted((i for i, s in enumerate(settings) if not s.is_baseline), key=lambda i: starts[i])
    passes = [todo[:per_forward]] + [
        todo[c : c + per_forward] for c in range(per_forward, len(todo), per_forward)
    ]
    needed = {starts[i] for i in todo}
    saved: dict[int, Tensor] = {}
    out: list[Tensor | None] = [None] * len(settings)
    with attending_to(model, prefix):
        for n_pass, chunk in enumerate(passes):
            first_pass = n_pass == 0
            layout: list[_Setting | None] = [None] if first_pass else []  # None: the unsteered block
            hooks = []
            for name in dict.fromkeys(settings[i].hook for i in chunk):
                layer = parse_hook_name(name)[0]  # the rows present there: every block started by then
                present = layout + [settings[i] for i in chunk if starts[i] <= layer]
                hooks.append(_row_hook(name, present, n_items, mask.device))
            rows: Tensor | None
            if first_pass:
                residual = model.get_residual(
                    model.hook_embed(model.embed(suffix)),
                    n_prefix,
                    attention_mask=prefix.row_mask(n_items, suffix.shape[1]),
                    tokens=suffix,
                    return_shortformer_pos_embed=False,
                )
                rows = cast(Tensor, residual)  # unannotated upstream: without the shortformer term, a tensor
                begin = 0
            else:
                rows, begin = None, starts[chunk[0]]
            with model.hooks(fwd_hooks=hooks):
                for layer in range(begin, model.cfg.n_layers):
                    if first_pass and layer in needed:
                        assert rows is not None  # the first pass starts from the embedding
                        saved[layer] = rows[:n_items]
                    joining = sum(starts[i] == layer for i in chunk)
                    if joining:
                        new = saved[layer].repeat(joining, 1, 1)
                        rows = new if rows is None else torch.cat([rows, new])
                    rows = model.blocks[layer](rows)
            assert rows is not None  # every pass runs at least its starting block
            logits = _last_logits(model, rows).split(n_items)
            if first_pass:
                baseline, logits = logits[0], logits[1:]
                out = [baseline if s.is_baseline else None for s in settings]
            for i, rows_logits in zip(chunk, logits, strict=True):
                out[i] = rows_logits
    done = [found for found in out if found is not None]
    assert len(done) == len(out)  # every setting is the baseline or in one pass
    return done


def _repeat_batch(
    model: HookedTransformer,
    tokens: Tensor,
    mask: Tensor,
    first: int,
    settings: Sequence[_Setting],
    per_forward: int,
) -> list[Tensor]:
    """Next-token logits of one batch under each setting, with TransformerLens's repeated cache."""
    n_items = tokens.shape[0]
    # TransformerLens types cfg.device as optional; a built model's config always has one
    device = torch.device(model.cfg.device)  # pyright: ignore[reportArgumentType]
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, device, n_items)
    model(tokens[:, :first], attention_mask=mask[:, :first], past_kv_cache=cache, return_type=None)
    suffix = tokens[:, first:]
    out = []
    for s0 in range(0, len(settings), per_forward):
        chunk = settings[s0 : s0 + per_forward]
        rows = suffix.repeat(len(chunk), 1)
        names = dict.fromkeys(c.hook for c in chunk if not c.is_baseline)
        hooks = [_row_hook(name, chunk, n_items, device) for name in names]
        # TransformerLens types fwd_hooks as an invariant list[tuple[str | Callable, Callable]]
        with model.hooks(fwd_hooks=hooks):  # pyright: ignore[reportArgumentType]
            logits = model(
                rows, attention_mask=torch.ones_like(rows), past_kv_cache=repeat_cache(cache, len(chunk))
            )
        out += [logits[k * n_items : (k + 1) * n_items, -1] for k in range(len(chunk))]
    return out


def cached_ab_scores(
    model: HookedTransformer,
    items: Sequence[ABItem],
    steerings: Sequence[Steering],
    *,
    batch_size: int = 16,
    max_rows: int = 256,
    attention: str = "auto",
    share_head: bool = True,
    outside_ab: OutsideAB = "error",
    check_model: bool = True,
) -> list[list[ABScore]]:
    """A/B scores of ``items`` under each steering, running each batch's prompt prefix once.

    Args:
        model: A ``HookedTransformer`` with a tokenizer.
        items: CAA A/B items.
        steerings: Each the unsteered ``Steering()`` or one edit at one hook acting at
            :func:`~tlsteer.eval.ab.question_end` (``vec.select(l).steering(m,
            positions=question_end(model))``); anything else is refused, naming
            :func:`~tlsteer.eval.ab.ab_scores`, which scores any steering.
        batch_size: Items per prefix forward (items of similar lengths are batched together).
        max_rows: At most this many ``steering x item`` rows per suffix forward.
        attention: ``"auto"``, ``"shared"`` or ``"repeat"`` (see the module docstring).
        share_head: With ``"shared"`` attention, run the tokens every prompt starts with (the
            chat template's system turn and user header) once for all items, not once per batch.
        outside_ab: ``"zero"`` scores items with answers outside A/B as 0 (CAA); ``"error"``
            refuses them.
        check_model: Refuse a steering made for another model.

    Returns:
        One list of :class:`~tlsteer.eval.ab.ABScore` per steering, in the order of ``items``.
    """
    check_ab_items(items, outside_ab)
    if isinstance(steerings, Steering) or not steerings:
        raise ValueError("no steerings to score; give a non-empty list of Steering values")
    where = question_end(model)
    settings = [_setting(model, s, where, check_model) for s in steerings]
    starts = [parse_hook_name(s.hook)[0] for s in settings]
    if batch_size < 1 or max_rows < 1:
        raise ValueError(f"batch_size and max_rows must be >= 1, got {batch_size} and {max_rows}")
    mode = resolve_attention(model, attention)
    n_after = tokens_after_question(model)
    ids = ab_prompt_ids(model, items)
    out: list[list[ABScore]] = [[ABScore(0.0, 0.0, 0.0)] * len(items) for _ in settings]  # all filled
    weights = mlp_weights_stored_transposed(model) if mode == "shared" else nullcontext()
    with torch.no_grad(), weights:
        n_head, head = 0, None
        if mode == "shared" and share_head:
            # the chat template's head (system turn, user header) runs once for every item
            n_head = min(
                min(common_prefix_length(ids[0], i) for i in ids), min(len(i) for i in ids) - n_after - 1
            )
            if n_head >= MIN_SHARED_HEAD:
                head = head_cache(model, ids[0][:n_head], model.cfg.n_layers)
            else:
                n_head = 0
        order = sorted(range(len(items)), key=lambda i: len(ids[i]))  # similar lengths: less padding
        for start in range(0, len(items), batch_size):
            chosen = order[start : start + batch_size]
            batch = [items[i] for i in chosen]
            tokens, mask = left_pad(model, [ids[i][n_head:] for i in chosen])
            first = tokens.shape[1] - n_after - 1  # the last token of the question
            per_forward = max(1, max_rows // len(batch))
            if mode == "shared":
                cache = (
                    repeat_cache(head, len(batch))
                    if head is not None
                    else TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, len(batch))
                )
                logits = _shared_batch(model, cache, tokens, mask, first, settings, starts, per_forward)
            else:
                logits = _repeat_batch(model, tokens, mask, first, settings, per_forward)
            for k, rows in enumerate(logits):
                for i, score in zip(chosen, score_logits(model, rows, batch), strict=True):
                    out[k][i] = score
    return out
