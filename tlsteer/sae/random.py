"""Random sae-lens SAEs: stand-ins of a given shape for tests, timing and tiny benchmark runs.

A random SAE has unit-norm random decoder rows, the encoder tied to them, and features that fire;
it supports every tlsteer function an SAE does. Its features mean nothing: results on it show
that code runs and what it costs, never what a model represents.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch

from tlsteer.sae._lens import sae_lens

__all__ = ["random_sae"]

RandomKind = Literal["topk", "standard"]


def random_sae(
    d_in: int,
    hook_name: str,
    *,
    kind: RandomKind = "topk",
    d_sae: int = 64,
    k: int = 8,
    seed: int = 0,
) -> Any:
    """A sae-lens SAE with random weights reading ``hook_name`` (``cfg.metadata.hook_name``).

    Args:
        d_in: The model's ``d_model``.
        hook_name: The hook it reads, e.g. ``"blocks.6.hook_resid_post"``.
        kind: ``"topk"`` (a ``TopKSAE`` keeping ``k`` features per token) or ``"standard"``
            (a ReLU ``StandardSAE`` with a small random encoder bias).
        d_sae: Number of features.
        k: Active features per token of a TopK SAE.
        seed: Seeds the weights.

    Example:
        >>> sae = random_sae(32, "blocks.1.hook_resid_post", d_sae=16, k=4)
        >>> sae.cfg.d_sae, sae.cfg.metadata.hook_name
        (16, 'blocks.1.hook_resid_post')
    """
    from sae_lens.saes.sae import SAEMetadata

    if kind not in get_args(RandomKind):
        raise ValueError(f"kind must be one of {list(get_args(RandomKind))}, got {kind!r}")
    for name, value in (("d_in", d_in), ("d_sae", d_sae), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if kind == "topk" and k > d_sae:
        raise ValueError(f"k={k} is more than d_sae={d_sae} features")
    meta = SAEMetadata(hook_name=hook_name)
    if kind == "topk":
        sae = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, metadata=meta))
    else:
        sae = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=meta))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = torch.randn(d_sae, d_in, generator=gen)
        sae.W_dec.copy_(w / w.norm(dim=1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
        if kind == "standard":
            sae.b_enc.copy_(0.1 * torch.randn(d_sae, generator=gen))
    return sae
