"""A sweep engine that runs the unsteered prompt once: KV-cached prefixes, batched settings.

With CAA semantics, steering starts at the last token of the user turn, so every position before
it is the same in every setting. :func:`cached_ab_scores` runs those positions once per batch of
items into a TransformerLens KV cache, then runs only the steered suffix (the last question token,
the end of turn, the assistant header and ``(``) for many ``(hook, multiplier)`` settings at once,
one setting per block of rows.

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

Both equal :func:`tlsteer.evaluate.ab_scores` with the same steering up to float error (tested
within 1e-4 on both tiny architectures).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.components import Attention, GroupedQueryAttention, Unembed
from transformer_lens.components.mlps.gated_mlp import GatedMLP
from transformer_lens.components.mlps.mlp import MLP
from transformer_lens.utilities.activation_functions import apply_softcap, softcap_enabled

from tlsteer._types import parse_hook_name, validate_hook_name
from tlsteer.data import ABItem
from tlsteer.evaluate import ABScore, ab_prompt_ids, score_logits, tokens_after_question
from tlsteer.extract import left_pad
from tlsteer.hooks import _check_multiplier
from tlsteer.prefix import _MIN_HEAD, _common_prefix, _head_cache, _repeated

__all__ = ["ATTENTION_MODES", "Setting", "cached_ab_scores", "shared_attention_unsupported"]

ATTENTION_MODES = ("auto", "shared", "repeat")


@dataclass(frozen=True)
class Setting:
    """Add ``multiplier * direction`` at ``hook`` from the end of the question onward."""

    hook: str
    direction: Tensor
    multiplier: float


def _row_delta(
    name: str, settings: Sequence[Setting | None], n_items: int, device: torch.device
) -> tuple[str, Callable[[Tensor, object], Tensor]]:
    """A hook at ``name``: row ``s * n_items + i`` gets ``settings[s]``'s addition if it is there.

    A ``None`` setting, or one at another hook, is a block of rows left as they are.
    """
    zero = torch.zeros_like(
        next(s for s in settings if s is not None).direction, dtype=torch.float32, device="cpu"
    )
    rows = torch.stack(
        [
            s.multiplier * s.direction.float().cpu() if s is not None and s.hook == name else zero
            for s in settings
        ]
    )
    delta = rows.repeat_interleave(n_items, dim=0)[:, None, :].to(device)  # [rows, 1, d_model]

    def add(act: Tensor, hook: object) -> Tensor:  # noqa: ARG001
        return act + delta.to(act.dtype)

    return name, add


_OLMO = ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")


def shared_attention_unsupported(model: HookedTransformer) -> str | None:
    """Why ``attention="shared"`` cannot run ``model`` (one reason), or ``None`` if it can.

    The shared path reimplements one step, causal softmax attention with rotary or learned absolute
    positions, so it refuses models whose attention does anything else.
    """
    cfg = model.cfg
    reasons = [
        (
            cfg.positional_embedding_type not in ("rotary", "standard"),
            f"positional_embedding_type={cfg.positional_embedding_type!r}",
        ),
        (cfg.attention_dir != "causal", f"attention_dir={cfg.attention_dir!r}"),
        (any(t != "global" for t in (cfg.attn_types or [])), "local (windowed) attention layers"),
        (cfg.use_attn_result, "use_attn_result=True"),
        (softcap_enabled(getattr(cfg, "attn_scores_soft_cap", None)), "attention score soft-capping"),
        (getattr(cfg, "use_logn_attn", False), "log-n attention scaling"),
        (getattr(cfg, "use_dynamic_ntk_rope", False), "dynamic NTK rotary scaling"),
        (getattr(cfg, "use_attention_sinks", False), "attention sinks"),
        (getattr(cfg, "load_in_4bit", False), "4-bit weights"),
        (getattr(cfg, "clip_qkv", None) is not None, "clip_qkv"),
        (cfg.original_architecture in _OLMO, f"architecture {cfg.original_architecture}"),
        (
            any(type(b.attn) not in (Attention, GroupedQueryAttention) for b in model.blocks),
            "an attention module other than Attention or GroupedQueryAttention",
        ),
    ]
    return next((why for bad, why in reasons if bad), None)


def _attention_hooks(model: HookedTransformer) -> list[str]:
    """Hook points inside attention modules that have hooks attached right now."""
    return [
        name
        for name, hp in model.hook_dict.items()
        if ".attn." in name and (hp._forward_hooks or hp._forward_pre_hooks)
    ]


def _resolve_attention(model: HookedTransformer, attention: str) -> str:
    if attention not in ATTENTION_MODES:
        raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
    if attention == "repeat":
        return attention
    why = shared_attention_unsupported(model)
    hooked = _attention_hooks(model)
    if attention == "shared" and why:
        raise ValueError(f"attention='shared' cannot run this model ({why}); use attention='repeat'")
    if attention == "shared" and hooked:
        raise ValueError(
            f"attention='shared' skips the hooks attached at {hooked}; remove them or use attention='repeat'"
        )
    return "repeat" if why or hooked else "shared"


class _Prefix:
    """One batch's unsteered prefix: per-layer keys (rotated) and values, one copy per item."""

    def __init__(self, model: HookedTransformer, cache: TransformerLensKeyValueCache, mask: Tensor) -> None:
        self.mask = mask  # [items, prefix]
        self.keys: list[Tensor] = []  # [items, kv_heads, prefix, d_head]
        self.values: list[Tensor] = []
        rotary = model.cfg.positional_embedding_type == "rotary"
        for block, entry in zip(model.blocks, cache.entries, strict=True):
            keys = entry.past_keys
            if rotary:  # TransformerLens caches keys before the rotation, as here
                keys = block.attn.apply_rotary(keys, 0, mask)
            self.keys.append(keys.transpose(1, 2).contiguous())
            self.values.append(entry.past_values.transpose(1, 2).contiguous())
        self.hidden = ~mask.bool()[:, None, None, None, None, :]  # [items, 1, 1, 1, 1, prefix]
        self._row_masks: dict[tuple[int, int], Tensor] = {}

    @property
    def n_items(self) -> int:
        return self.mask.shape[0]

    def row_mask(self, n_rows: int, n_new: int) -> Tensor:
        """The attention mask of ``n_rows`` setting-major rows, prefix then ``n_new`` new tokens.

        Every layer asks for the same one, so it is built once.
        """
        if (n_rows, n_new) not in self._row_masks:
            mask = self.mask.repeat(n_rows // self.n_items, 1)
            ones = torch.ones(n_rows, n_new, dtype=mask.dtype, device=mask.device)
            self._row_masks[n_rows, n_new] = torch.cat([mask, ones], dim=1)
        return self._row_masks[n_rows, n_new]


def _shared_attention(attn: Attention | GroupedQueryAttention, prefix: _Prefix, layer: int):
    """A forward for ``attn`` whose rows attend to ``prefix`` (shared per item) then to themselves."""
    rotary = attn.cfg.positional_embedding_type == "rotary"

    def forward(query_input, key_input, value_input, **_: object) -> Tensor:
        q, k, v = attn.calculate_qkv_matrices(query_input, key_input, value_input)
        n_rows, n_new, n_heads, d_head = q.shape
        n_items, n_kv = prefix.n_items, k.shape[2]
        n_set, group, n_prefix = n_rows // n_items, n_heads // n_kv, prefix.mask.shape[1]
        if rotary:
            mask = prefix.row_mask(n_rows, n_new)
            q = attn.apply_rotary(q, n_prefix, mask)
            k = attn.apply_rotary(k, n_prefix, mask)
        # query head h reads key/value head h // group, as repeat_interleave does in TransformerLens
        q6 = q.view(n_set, n_items, n_new, n_kv, group, d_head)
        stacked = q6.permute(1, 3, 0, 4, 2, 5).reshape(n_items, n_kv, -1, d_head)
        to_prefix = (stacked @ prefix.keys[layer].transpose(-1, -2)).view(
            n_items, n_kv, n_set, group, n_new, n_prefix
        )
        to_prefix = to_prefix.masked_fill(prefix.hidden, float("-inf"))
        k5, v5 = k.view(n_set, n_items, n_new, n_kv, d_head), v.view(n_set, n_items, n_new, n_kv, d_head)
        to_self = torch.einsum("sbqkgd,sbtkd->bksgqt", q6, k5)
        future = torch.ones(n_new, n_new, dtype=torch.bool, device=q.device).triu(1)
        to_self = to_self.masked_fill(future, float("-inf"))
        pattern = (torch.cat([to_prefix, to_self], dim=-1) / attn.attn_scale).softmax(-1)
        p_prefix, p_self = pattern.split([n_prefix, n_new], dim=-1)
        z = (p_prefix.reshape(n_items, n_kv, -1, n_prefix) @ prefix.values[layer]).view(
            n_items, n_kv, n_set, group, n_new, d_head
        ) + torch.einsum("bksgqt,sbtkd->bksgqd", p_self, v5)
        z = z.permute(2, 0, 4, 1, 3, 5).reshape(n_rows, n_new, n_heads * d_head)
        return F.linear(z, attn.W_O.reshape(n_heads * d_head, -1).T, attn.b_O)

    return forward


@contextmanager
def _attending_to(model: HookedTransformer, prefix: _Prefix):
    """Swap every block's attention forward for the shared-prefix one; restore it on exit."""
    try:
        for layer, block in enumerate(model.blocks):
            block.attn.forward = _shared_attention(block.attn, prefix, layer)
        yield
    finally:
        for block in model.blocks:
            block.attn.__dict__.pop("forward", None)


_MLP_WEIGHTS = ("W_in", "W_gate", "W_out")


@contextmanager
def _mlp_weights_stored_transposed(model: HookedTransformer):
    """Store each MLP weight column-major while the sweep runs, then row-major again.

    TransformerLens's MLPs call ``F.linear(x, W.T.contiguous())``, which copies every weight on
    every forward unless ``W.T`` is already contiguous. The values are the same bit for bit.
    """
    params = [
        p
        for block in model.blocks
        if isinstance(getattr(block, "mlp", None), (MLP, GatedMLP))
        for name in _MLP_WEIGHTS
        if isinstance(p := getattr(block.mlp, name, None), torch.nn.Parameter) and p.dim() == 2
    ]
    try:
        for p in params:
            p.data = p.data.T.contiguous().T
        yield
    finally:
        for p in params:
            p.data = p.data.contiguous()


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
    settings: Sequence[Setting],
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
    prefix = _Prefix(model, cache, cache.previous_attention_mask)
    n_prefix = prefix.mask.shape[1]
    suffix = tokens[:, first:]
    # steered settings, ordered by the block where they first differ from the unsteered run
    todo = sorted((i for i, s in enumerate(settings) if s.multiplier != 0), key=lambda i: starts[i])
    passes = [todo[:per_forward]] + [
        todo[c : c + per_forward] for c in range(per_forward, len(todo), per_forward)
    ]
    needed = {starts[i] for i in todo}
    saved: dict[int, Tensor] = {}
    out: list[Tensor | None] = [None] * len(settings)
    with _attending_to(model, prefix):
        for n_pass, chunk in enumerate(passes):
            first_pass = n_pass == 0
            layout: list[Setting | None] = [None] if first_pass else []  # None: the unsteered block
            hooks = []
            for name in dict.fromkeys(settings[i].hook for i in chunk):
                layer = parse_hook_name(name)[0]  # the rows present there: every block started by then
                present = layout + [settings[i] for i in chunk if starts[i] <= layer]
                hooks.append(_row_delta(name, present, n_items, mask.device))
            if first_pass:
                rows = model.get_residual(
                    model.hook_embed(model.embed(suffix)),
                    n_prefix,
                    attention_mask=prefix.row_mask(n_items, suffix.shape[1]),
                    tokens=suffix,
                    return_shortformer_pos_embed=False,
                )
                begin = 0
            else:
                rows, begin = None, starts[chunk[0]]
            with model.hooks(fwd_hooks=hooks):
                for layer in range(begin, model.cfg.n_layers):
                    if first_pass and layer in needed:
                        saved[layer] = rows[:n_items]
                    joining = sum(starts[i] == layer for i in chunk)
                    if joining:
                        new = saved[layer].repeat(joining, 1, 1)
                        rows = new if rows is None else torch.cat([rows, new])
                    rows = model.blocks[layer](rows)
            logits = _last_logits(model, rows).split(n_items)
            if first_pass:
                baseline, logits = logits[0], logits[1:]
                out = [baseline if s.multiplier == 0 else None for s in settings]
            for i, rows_logits in zip(chunk, logits, strict=True):
                out[i] = rows_logits
    return out


def _repeat_batch(
    model: HookedTransformer,
    tokens: Tensor,
    mask: Tensor,
    first: int,
    settings: Sequence[Setting],
    per_forward: int,
) -> list[Tensor]:
    """Next-token logits of one batch under each setting, with TransformerLens's repeated cache."""
    n_items = tokens.shape[0]
    device = torch.device(model.cfg.device)
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, device, n_items)
    model(tokens[:, :first], attention_mask=mask[:, :first], past_kv_cache=cache, return_type=None)
    suffix = tokens[:, first:]
    out = []
    for s0 in range(0, len(settings), per_forward):
        chunk = settings[s0 : s0 + per_forward]
        rows = suffix.repeat(len(chunk), 1)
        hooks = [_row_delta(name, chunk, n_items, device) for name in dict.fromkeys(c.hook for c in chunk)]
        with model.hooks(fwd_hooks=hooks):
            logits = model(
                rows, attention_mask=torch.ones_like(rows), past_kv_cache=_repeated(cache, len(chunk))
            )
        out += [logits[k * n_items : (k + 1) * n_items, -1] for k in range(len(chunk))]
    return out


def cached_ab_scores(
    model: HookedTransformer,
    items: Sequence[ABItem],
    settings: Sequence[Setting],
    batch_size: int = 16,
    max_rows: int = 256,
    attention: str = "auto",
    share_head: bool = True,
) -> list[list[ABScore]]:
    """A/B scores of ``items`` under each setting, running each batch's prompt prefix once.

    Args:
        model: A ``HookedTransformer`` with a tokenizer.
        items: CAA A/B items.
        settings: ``(hook, direction, multiplier)`` settings; a multiplier of 0 is the baseline.
        batch_size: Items per prefix forward.
        max_rows: At most this many ``setting x item`` rows per suffix forward.
        attention: ``"auto"``, ``"shared"`` or ``"repeat"`` (see the module docstring).
        share_head: With ``"shared"`` attention, run the tokens every prompt starts with (the
            chat template's system turn and user header) once for all items, not once per batch.

    Returns:
        One list of :class:`~tlsteer.evaluate.ABScore` per setting, in the order of ``items``.
    """
    if not items:
        raise ValueError("no A/B items to score")
    if not settings:
        raise ValueError("no settings to score; give at least one Setting")
    starts = []
    for s in settings:
        validate_hook_name(model, s.hook)
        starts.append(parse_hook_name(s.hook)[0])
        _check_multiplier(s.multiplier)
        if s.direction.shape != (model.cfg.d_model,):
            raise ValueError(
                f"direction at {s.hook!r} has shape {tuple(s.direction.shape)}; expected "
                f"({model.cfg.d_model},)"
            )
    if batch_size < 1 or max_rows < 1:
        raise ValueError(f"batch_size and max_rows must be >= 1, got {batch_size} and {max_rows}")
    mode = _resolve_attention(model, attention)
    n_after = tokens_after_question(model)
    ids = ab_prompt_ids(model, items)
    out: list[list[ABScore]] = [[] for _ in settings]
    weights = _mlp_weights_stored_transposed(model) if mode == "shared" else nullcontext()
    with torch.no_grad(), weights:
        n_head, head = 0, None
        if mode == "shared" and share_head:
            # the chat template's head (system turn, user header) runs once for every item
            n_head = min(min(_common_prefix(ids[0], i) for i in ids), min(len(i) for i in ids) - n_after - 1)
            if n_head >= _MIN_HEAD:
                head = _head_cache(model, ids[0][:n_head], model.cfg.n_layers)
            else:
                n_head = 0
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            tokens, mask = left_pad(model, [i[n_head:] for i in ids[start : start + batch_size]])
            first = tokens.shape[1] - n_after - 1  # the last token of the question
            per_forward = max(1, max_rows // len(batch))
            if mode == "shared":
                cache = (
                    _repeated(head, len(batch))
                    if head is not None
                    else TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, len(batch))
                )
                logits = _shared_batch(model, cache, tokens, mask, first, settings, starts, per_forward)
            else:
                logits = _repeat_batch(model, tokens, mask, first, settings, per_forward)
            for k, rows in enumerate(logits):
                out[k].extend(score_logits(model, rows, batch))
    return out
