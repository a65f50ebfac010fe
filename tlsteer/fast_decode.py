"""The fast decoding path: one token per step through a HookedTransformer's own weights and hooks.

TransformerLens's forward is written for reading a model, not for generating with it: at every
step it copies each weight matrix into the layout ``F.linear`` wants (``W_U.T.contiguous()``
alone is the size of the embedding matrix), grows its KV cache by concatenation, caches keys
before rotary and rotates every cached key again, and repeats grouped-query keys and values for
every head. :class:`FastDecoder` runs the same computation for one new token per row with the
weights laid out once per generation, keys cached after rotary in a cache allocated once, and
grouped-query heads sharing their cached keys without copies. The prompt itself still goes
through TransformerLens's forward.

Hook semantics stay TransformerLens's: every hook point the step computes is the model's own
``HookPoint``, called in TransformerLens's order with the same tensor shapes, so anything added
with ``model.hooks`` / ``add_hook`` (a :class:`~tlsteer.Steering`, a user's hook) sees and edits
the same activations. ``ln1`` is called three times per block, as TransformerLens does, when
something listens to it. Attention scores and pattern are computed as TransformerLens does, for
the one new query, and go through ``attn.hook_attn_scores`` and ``attn.hook_pattern`` (the
position tracker of a :class:`~tlsteer.Positions` reads block 0's scores). The two hook points
the step does not compute, ``attn.hook_rot_q`` and ``attn.hook_rot_k`` (TransformerLens rotates
every cached key again at each step and hooks them all), are checked: a hook on either sends the
generation back to TransformerLens's forward (:func:`unheard_hooks`). Hooks are read when the
decoder is built: add them first, as ``model.hooks(...)`` around a generation does.
:func:`unsupported` says which architectures the fast path covers (rotary decoders with RMS or
layer norms, plain or gated MLPs, grouped-query attention: Llama, Mistral, Qwen 2); the rest use
TransformerLens's forward, with the reason.
"""

from __future__ import annotations

from typing import Any
from weakref import WeakKeyDictionary

import torch
import torch.nn.functional as F
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.components.grouped_query_attention import GroupedQueryAttention
from transformer_lens.components.mlps.gated_mlp import GatedMLP

__all__ = ["FastDecoder", "unheard_hooks", "unsupported"]

_NOT_COMPUTED = ("attn.hook_rot_q", "attn.hook_rot_k")
"""Hook points of a block that the fast step never calls."""

_OFF_FLAGS = (
    "use_local_attn",
    "use_attn_result",
    "use_split_qkv_input",
    "use_attn_in",
    "use_hook_mlp_in",
    "parallel_attn_mlp",
    "attn_only",
    "use_normalization_before_and_after",
    "use_qk_norm",
    "use_attention_sinks",
    "use_logn_attn",
    "use_dynamic_ntk_rope",
    "load_in_4bit",
    "post_embedding_ln",
    "scale_attn_by_inverse_layer_idx",
)
"""Config flags the fast step does not implement: any of them on means TransformerLens's forward."""

_COVERED_ARCHITECTURES = (None, "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")


def unsupported(model: HookedTransformer) -> str | None:
    """Why the fast path does not cover ``model`` (``None``: it does).

    Example:
        >>> from tlsteer.models import tiny_model
        >>> unsupported(tiny_model("llama")) is None, unsupported(tiny_model("gpt2"))
        (True, "positional_embedding_type='standard' (the fast path covers 'rotary')")
    """
    cfg = model.cfg
    if cfg.positional_embedding_type != "rotary":
        return f"positional_embedding_type={cfg.positional_embedding_type!r} (the fast path covers 'rotary')"
    if cfg.original_architecture not in _COVERED_ARCHITECTURES:
        return (
            f"architecture {cfg.original_architecture!r} (the fast path covers "
            f"{', '.join(a for a in _COVERED_ARCHITECTURES if a)} and tiny test models)"
        )
    for flag in _OFF_FLAGS:
        if getattr(cfg, flag, False):
            return f"cfg.{flag}=True"
    for cap in ("attn_scores_soft_cap", "output_logits_soft_cap"):
        if (getattr(cfg, cap, None) or 0) > 0:
            return f"cfg.{cap}={getattr(cfg, cap)}"
    if getattr(cfg, "clip_qkv", None) is not None:
        return f"cfg.clip_qkv={cfg.clip_qkv}"
    if cfg.attention_dir != "causal":
        return f"attention_dir={cfg.attention_dir!r}"
    if cfg.normalization_type not in ("RMS", "LN"):
        return f"normalization_type={cfg.normalization_type!r} (the fast path covers 'RMS' and 'LN')"
    if cfg.final_rms is False and cfg.normalization_type == "RMS":
        return "final_rms=False with RMS blocks"
    if cfg.is_layer_norm_activation():
        return f"act_fn={cfg.act_fn!r} (a layer-norm activation)"
    if getattr(cfg, "n_devices", 1) != 1:
        return f"n_devices={cfg.n_devices}"
    for block in model.blocks:
        if block.attn._attention_dir_override not in (None, "causal"):
            return f"a block with attention_dir override {block.attn._attention_dir_override!r}"
    return None


def unheard_hooks(model: HookedTransformer) -> list[str]:
    """Hook points that something listens to but the fast step would not call."""
    found = []
    for i in range(model.cfg.n_layers):
        for name in _NOT_COMPUTED:
            point = model.hook_dict.get(f"blocks.{i}.{name}")
            if point is not None and point._forward_hooks:
                found.append(f"blocks.{i}.{name}")
    return found


class _Layer:
    """One block's weights in the layout the step uses, laid out once."""

    def __init__(self, block: Any) -> None:
        attn = block.attn
        self.block: Any = block  # a TransformerBlock; its submodules are typed Tensor | Module upstream
        self.attn: Any = attn
        grouped = isinstance(attn, GroupedQueryAttention) and not attn.cfg.ungroup_grouped_query_attention
        # grouped: the key/value heads themselves (W_K repeats each one for its query heads)
        prefix = "_" if grouped else ""
        w_k, b_k = getattr(attn, f"{prefix}W_K"), getattr(attn, f"{prefix}b_K")
        w_v, b_v = getattr(attn, f"{prefix}W_V"), getattr(attn, f"{prefix}b_V")
        self.q = _linear_heads(attn.W_Q, attn.b_Q)
        self.k = _linear_heads(w_k, b_k)
        self.v = _linear_heads(w_v, b_v)
        self.n_kv = w_k.shape[0]
        n_heads, d_head, d_model = attn.W_O.shape
        self.w_o = attn.W_O.detach().reshape(n_heads * d_head, d_model).T.contiguous()
        self.b_o = attn.b_O.detach()
        self.scale = 1.0 / float(attn.attn_scale)
        mlp = block.mlp
        self.gated = isinstance(mlp, GatedMLP)
        self.w_in = mlp.W_in.detach().T.contiguous()
        self.b_in = mlp.b_in.detach()
        self.w_gate = mlp.W_gate.detach().T.contiguous() if self.gated else self.w_in
        self.w_out = mlp.W_out.detach().T.contiguous()
        self.b_out = mlp.b_out.detach()


def _linear_heads(w: Tensor, b: Tensor) -> tuple[Tensor, Tensor, int, int]:
    """``W [head, d_model, d_head]`` and ``b [head, d_head]`` as one ``F.linear`` weight and bias."""
    n_heads, _, d_head = w.shape
    return (
        w.detach().permute(0, 2, 1).reshape(n_heads * d_head, -1).contiguous(),
        b.detach().reshape(-1),
        n_heads,
        d_head,
    )


def _project(x: Tensor, weights: tuple[Tensor, Tensor, int, int]) -> Tensor:
    w, b, n_heads, d_head = weights
    return F.linear(x, w, b).reshape(x.shape[0], x.shape[1], n_heads, d_head)


_LAYOUTS: WeakKeyDictionary[HookedTransformer, tuple[tuple[tuple[int, int], ...], Any]] = WeakKeyDictionary()
"""Each model's weights in the step's layout, with the parameters' (storage, version) they came from."""


def _layout(model: HookedTransformer) -> tuple[list[_Layer], Tensor, Tensor]:
    """The model's weights laid out for the step: once per model, again only after a parameter
    changes (an in-place edit bumps its version; a new tensor has a new storage)."""
    stamp = tuple((p.data_ptr(), p._version) for p in model.parameters())
    cached = _LAYOUTS.get(model)
    if cached is None or cached[0] != stamp:
        w_u = model.unembed.W_U.detach().T.contiguous()
        cached = (stamp, ([_Layer(block) for block in model.blocks], w_u, model.unembed.b_U.detach()))
        _LAYOUTS[model] = cached
    return cached[1]


class FastDecoder:
    """Generation state for one batch: the KV cache (after rotary) and the weights, laid out once.

    :meth:`prefill` runs the left-padded prompts through TransformerLens's forward (every hook
    fires as usual) and keeps their keys and values; :meth:`step` then takes one token per row
    and returns the next logits, ``[n_rows, d_vocab]``. Call both inside the ``model.hooks(...)``
    context that steers the generation, after :func:`unsupported` and :func:`unheard_hooks` said
    the fast path applies.
    """

    def __init__(self, model: HookedTransformer, n_rows: int, capacity: int) -> None:
        reason = unsupported(model)
        if reason is not None:
            raise ValueError(f"the fast decoding path does not cover this model: {reason}")
        self.model = model
        cfg = model.cfg
        self.capacity = capacity
        self.layers, self.w_u, self.b_u = _layout(model)
        # as TransformerLens does: ln1 runs once per q, k and v input where something listens to it
        self.ln1_heard = [
            bool(layer.block.ln1.hook_normalized._forward_hooks or layer.block.ln1.hook_scale._forward_hooks)
            for layer in self.layers
        ]
        first = model.blocks[0].attn
        for layer in self.layers:  # as TransformerLens's forward would, for a long generation
            rows = layer.attn.rotary_cos.shape[0]
            if capacity > rows:
                layer.attn._extend_rotary_embeddings(min(cfg.n_ctx, max(capacity, 2 * rows)))
        if capacity > first.rotary_cos.shape[0]:
            raise ValueError(f"{capacity} positions do not fit the model's context of {cfg.n_ctx}")
        for layer in self.layers[1:]:
            if not (
                torch.equal(layer.attn.rotary_cos[:capacity], first.rotary_cos[:capacity])
                and torch.equal(layer.attn.rotary_sin[:capacity], first.rotary_sin[:capacity])
            ):
                raise ValueError("the fast decoding path needs the same rotary tables in every block")
        self.rotary_dim = int(cfg.rotary_dim or cfg.d_head)
        self.adjacent = bool(cfg.rotary_adjacent_pairs)
        self.cos, self.sin = first.rotary_cos, first.rotary_sin
        device, dtype = cfg.device, cfg.dtype
        shape = lambda n_kv: (n_rows, n_kv, capacity, cfg.d_head)  # noqa: E731
        self.keys = [torch.zeros(shape(layer.n_kv), device=device, dtype=dtype) for layer in self.layers]
        self.values = [torch.zeros(shape(layer.n_kv), device=device, dtype=dtype) for layer in self.layers]
        self.mask = torch.zeros(n_rows, 1, 1, capacity, dtype=torch.bool, device=device)
        self.length = 0
        self.seen = torch.zeros(n_rows, dtype=torch.long, device=device)

    def prefill(self, tokens: Tensor, attention_mask: Tensor) -> Tensor:
        """The logits after the prompt, ``[n_rows, d_vocab]``; the cache then holds the prompt."""
        model = self.model
        cache = TransformerLensKeyValueCache.init_cache(model.cfg, tokens.device, tokens.shape[0])
        logits = model(tokens, attention_mask=attention_mask, past_kv_cache=cache)[:, -1]
        self.load(cache)
        return logits

    def load(self, cache: TransformerLensKeyValueCache) -> None:
        """Start from a TransformerLens KV cache of left-padded prompts (one row per decoder row),
        as :meth:`prefill` leaves it; the next :meth:`step` feeds the token after them."""
        mask = cache.previous_attention_mask
        n_rows, width = mask.shape
        if n_rows != self.mask.shape[0] or width >= self.capacity:
            raise ValueError(
                f"a cache of {n_rows} rows x {width} positions does not fit a decoder of "
                f"{self.mask.shape[0]} rows x {self.capacity} positions"
            )
        for layer, entry, keys, values in zip(
            self.layers, cache.entries, self.keys, self.values, strict=True
        ):
            rotated = layer.attn.apply_rotary(entry.past_keys, 0, mask)
            keys[:, :, :width] = rotated.transpose(1, 2)
            values[:, :, :width] = entry.past_values.transpose(1, 2)
        self.mask[:, 0, 0, :width] = mask.bool()
        self.mask[:, 0, 0, width:] = False
        self.length = width
        self.seen = mask.sum(1).long()

    def _rotate(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        rot, rest = x[..., : self.rotary_dim], x[..., self.rotary_dim :]
        flip = torch.empty_like(rot)
        if self.adjacent:
            flip[..., ::2] = -rot[..., 1::2]
            flip[..., 1::2] = rot[..., ::2]
        else:
            half = rot.shape[-1] // 2
            flip[..., :half] = -rot[..., half:]
            flip[..., half:] = rot[..., :half]
        out = rot * cos + flip * sin
        return torch.cat([out, rest], dim=-1) if rest.shape[-1] else out

    def _attend(self, layer: _Layer, q: Tensor, keys: Tensor, values: Tensor, mask: Tensor, n: int) -> Tensor:
        """``z`` of one query per row, ``[n_rows, 1, n_heads, d_head]``, over the first ``n`` positions.

        Scores and pattern are TransformerLens's (masked with ``attn.IGNORE``, NaN rows zeroed) and
        go through its hook points; grouped-query heads share their key/value head by a reshape,
        not a copy of the cache.
        """
        attn = layer.attn
        n_rows, n_heads, _, d_head = q.shape
        grouped = q.reshape(n_rows, layer.n_kv, n_heads // layer.n_kv, d_head)
        scores = (grouped @ keys[:, :, :n].transpose(-1, -2)).reshape(n_rows, n_heads, 1, n) / attn.attn_scale
        scores = attn.hook_attn_scores(torch.where(mask, scores, attn.IGNORE))
        pattern = F.softmax(scores, dim=-1)
        pattern = attn.hook_pattern(torch.where(torch.isnan(pattern), torch.zeros_like(pattern), pattern))
        z = pattern.reshape(n_rows, layer.n_kv, n_heads // layer.n_kv, n) @ values[:, :, :n]
        return z.reshape(n_rows, 1, n_heads, d_head)

    def step(self, tokens: Tensor) -> Tensor:
        """Feed one token per row (``[n_rows, 1]``, every one attended); the next logits."""
        model = self.model
        t = self.length
        if t >= self.capacity:
            raise RuntimeError(f"the decoder's cache holds {self.capacity} positions; all are used")
        self.mask[:, 0, 0, t] = True
        position = self.seen  # rotary position of the new token: real tokens before it
        cos = self.cos[position][:, None, None, :]
        sin = self.sin[position][:, None, None, :]
        self.seen = self.seen + 1
        if model.cfg.use_hook_tokens:
            tokens = model.hook_tokens(tokens)
        x = model.hook_embed(model.embed.W_E[tokens, :])
        mask = self.mask[..., : t + 1]
        for layer, keys, values, ln1_heard in zip(
            self.layers, self.keys, self.values, self.ln1_heard, strict=True
        ):
            block, attn = layer.block, layer.attn
            x = block.hook_resid_pre(x)
            normed = block.ln1(x)
            k_in, v_in = (block.ln1(x), block.ln1(x)) if ln1_heard else (normed, normed)
            q = attn.hook_q(_project(normed, layer.q))
            k = attn.hook_k(_project(k_in, layer.k))
            v = attn.hook_v(_project(v_in, layer.v))
            keys[:, :, t : t + 1] = self._rotate(k, cos, sin).transpose(1, 2)
            values[:, :, t : t + 1] = v.transpose(1, 2)
            z = attn.hook_z(
                self._attend(layer, self._rotate(q, cos, sin).transpose(1, 2), keys, values, mask, t + 1)
            )
            attn_out = block.hook_attn_out(F.linear(z.reshape(z.shape[0], 1, -1), layer.w_o, layer.b_o))
            resid_mid = block.hook_resid_mid(x + attn_out)
            h = block.ln2(resid_mid)
            mlp = block.mlp
            if layer.gated:
                pre = mlp.hook_pre(F.linear(h, layer.w_gate))
                post = mlp.hook_post(
                    mlp.act_fn(pre) * mlp.hook_pre_linear(F.linear(h, layer.w_in)) + layer.b_in
                )
            else:
                post = mlp.hook_post(mlp.act_fn(mlp.hook_pre(F.linear(h, layer.w_in, layer.b_in))))
            mlp_out = block.hook_mlp_out(F.linear(post, layer.w_out, layer.b_out))
            x = block.hook_resid_post(resid_mid + mlp_out)
        x = model.ln_final(x)
        x = model.unembed.hook_in(x)
        logits = model.unembed.hook_out(F.linear(x, self.w_u, self.b_u))
        self.length = t + 1
        return logits[:, -1]
