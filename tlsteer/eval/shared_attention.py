"""Shared-prefix attention: suffix rows of many settings attend to one copy of each item's prefix.

The cached sweep engine (:mod:`tlsteer.eval.cached`) swaps each block's attention forward for
:func:`shared_attention_forward` while it runs the steered suffix rows, and stores MLP weights
transposed (same values) so TransformerLens's forward copies nothing. Both swaps are context
managers that restore the model on exit, also after an exception.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.components.attention import Attention
from transformer_lens.components.grouped_query_attention import GroupedQueryAttention
from transformer_lens.components.mlps.gated_mlp import GatedMLP
from transformer_lens.components.mlps.mlp import MLP
from transformer_lens.utilities.activation_functions import softcap_enabled

__all__ = [
    "ATTENTION_MODES",
    "SharedPrefix",
    "attending_to",
    "attention_hooks",
    "mlp_weights_stored_transposed",
    "resolve_attention",
    "shared_attention_forward",
    "shared_attention_unsupported",
]


ATTENTION_MODES = ("auto", "shared", "repeat")

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


def attention_hooks(model: HookedTransformer) -> list[str]:
    """Hook points inside attention modules that have hooks attached right now."""
    return [
        name
        for name, hp in model.hook_dict.items()
        if ".attn." in name and (hp._forward_hooks or hp._forward_pre_hooks)
    ]


def resolve_attention(model: HookedTransformer, attention: str) -> str:
    """The attention mode to run: ``attention``, or for ``"auto"`` the fastest that is exact here."""
    if attention not in ATTENTION_MODES:
        raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
    if attention == "repeat":
        return attention
    why = shared_attention_unsupported(model)
    hooked = attention_hooks(model)
    if attention == "shared" and why:
        raise ValueError(f"attention='shared' cannot run this model ({why}); use attention='repeat'")
    if attention == "shared" and hooked:
        raise ValueError(
            f"attention='shared' skips the hooks attached at {hooked}; remove them or use attention='repeat'"
        )
    return "repeat" if why or hooked else "shared"


class SharedPrefix:
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


def shared_attention_forward(attn: Attention | GroupedQueryAttention, prefix: SharedPrefix, layer: int):
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
def attending_to(model: HookedTransformer, prefix: SharedPrefix):
    """Swap every block's attention forward for the shared-prefix one; restore it on exit."""
    try:
        for layer, block in enumerate(model.blocks):
            # an instance attribute over the class's method, on purpose: popped again below
            block.attn.forward = shared_attention_forward(block.attn, prefix, layer)  # pyright: ignore[reportAttributeAccessIssue]
        yield
    finally:
        for block in model.blocks:
            vars(block.attn).pop("forward", None)


_MLP_WEIGHTS = ("W_in", "W_gate", "W_out")


@contextmanager
def mlp_weights_stored_transposed(model: HookedTransformer):
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
