"""How well an SAE describes a model at its hook: reconstruction, sparsity, and loss when spliced in.

:func:`sae_quality` streams texts in left-padded batches. For each batch it runs the clean
model (reading the hook with ``run_with_cache``), the model with the SAE's reconstruction
spliced in at the hook (without the error term), and the model with the hook zero-ablated; the
first ``skip_first`` positions of every text are left out of every number (see
:class:`SAEQuality`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from tlsteer._types import check_batch_size, is_int
from tlsteer.reading import token_mask
from tlsteer.sae.adapter import as_feature_dictionary
from tlsteer.tokens import left_pad, tokenize_prompts

__all__ = ["QualityTargets", "SAEQuality", "sae_quality"]


@dataclass(frozen=True)
class QualityTargets:
    """What a good SAE reaches on held-out text (:meth:`SAEQuality.meets`).

    The defaults are the targets the shipped SAEs were trained for: explained variance at least
    0.90 with at most 64 active features per token, under 5% of the features dead, and a CE loss
    score of at least 0.97.
    """

    explained_variance: float = 0.90
    l0_max: int = 64
    dead_share_max: float = 0.05
    ce_loss_score: float = 0.97

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, eq=False)
class SAEQuality:
    """Reconstruction, sparsity and downstream loss of an SAE on some texts.

    The evaluated tokens are every position ``p >= skip_first`` of each text (the first positions
    are attention sinks: the first position of a chat prompt has a huge norm). There the hook's
    activation ``h`` is compared with ``h_hat = decode(encode(h))``; the SAE is spliced in, or the
    hook zero-ablated, at those positions only; and losses are the next-token cross-entropies
    (nats per token) predicted from those positions, except the last of each text.

    Attributes:
        explained_variance: ``1 - sum ||h - h_hat||^2 / sum ||h - mean(h)||^2`` over all evaluated
            tokens (one pooled ratio; ``mean(h)`` is the mean over those tokens).
        explained_variance_per_token: The mean over evaluated tokens of
            ``1 - ||h - h_hat||^2 / ||h - mean(h)||^2`` (same ``mean(h)``).
        l0: Mean number of nonzero features per evaluated token.
        dead_share: Share of features that are zero on every evaluated token.
        densities: ``[d_sae]``: the share of evaluated tokens where each feature is nonzero.
        ce_loss_score: ``(loss_zero_ablation - loss_with_sae) / (loss_zero_ablation - loss_clean)``.
        added_loss: ``loss_with_sae - loss_clean`` in nats per token.
        loss_clean, loss_with_sae, loss_zero_ablation: Mean cross-entropies (nats per token).
        n_tokens: Evaluated tokens; ``n_loss_tokens``: tokens whose next-token loss is counted.
    """

    hook_name: str
    explained_variance: float
    explained_variance_per_token: float
    l0: float
    dead_share: float
    ce_loss_score: float
    added_loss: float
    loss_clean: float
    loss_with_sae: float
    loss_zero_ablation: float
    n_tokens: int
    n_loss_tokens: int
    n_texts: int
    skip_first: int
    densities: Float[Tensor, " d_sae"]

    def meets(self, targets: QualityTargets | None = None) -> bool:
        """Whether every target is met (default :class:`QualityTargets`)."""
        t = QualityTargets() if targets is None else targets
        return bool(
            self.explained_variance >= t.explained_variance
            and self.l0 <= t.l0_max
            and self.dead_share < t.dead_share_max
            and self.ce_loss_score >= t.ce_loss_score
        )

    def to_dict(self, digits: int = 4) -> dict[str, Any]:
        """Every number but ``densities``, floats rounded to ``digits``."""
        return {
            f.name: round(v, digits) if isinstance(v, float) else v
            for f in dataclasses.fields(self)
            if f.name != "densities"
            for v in [getattr(self, f.name)]
        }

    def __str__(self) -> str:
        return (
            f"SAE at {self.hook_name} on {self.n_texts} texts ({self.n_tokens} tokens, first "
            f"{self.skip_first} of each left out): explained variance {self.explained_variance:.4f} "
            f"(per-token mean {self.explained_variance_per_token:.4f}), L0 {self.l0:.1f}, "
            f"dead {self.dead_share:.1%}, "
            f"CE loss score {self.ce_loss_score:.4f}, added loss {self.added_loss:+.4f} nats/token "
            f"(clean {self.loss_clean:.4f}, with SAE {self.loss_with_sae:.4f}, zero-ablated "
            f"{self.loss_zero_ablation:.4f})"
        )


def _next_token_nll(logits: Tensor, tokens: Tensor, counted: Tensor) -> float:
    """Summed negative log-likelihood of the next token, predicted at the ``counted`` columns."""
    logp = logits[:, :-1].float().log_softmax(dim=-1)
    nll = -logp.gather(-1, tokens[:, 1:, None])[..., 0]
    return float(nll[counted[:, :-1]].double().sum())


def _replace(where: Tensor, replacement: Tensor) -> Any:
    """A hook function that puts ``replacement`` where ``where`` is true."""

    def replace(act: Tensor, hook: Any) -> Tensor:  # noqa: ARG001
        return torch.where(where, replacement.to(act.dtype), act)

    return replace


def sae_quality(
    model: HookedTransformer,
    sae: Any,
    texts: Sequence[str],
    *,
    batch_size: int = 8,
    skip_first: int = 1,
    hook_name: str | None = None,
) -> SAEQuality:
    """Explained variance, L0, dead features and CE loss score of ``sae`` on ``texts``.

    ``sae`` is a sae-lens SAE or any :class:`~tlsteer.dictionary.FeatureDictionary` (a codebook:
    its L0 is its ``k``, its dead share the codes never chosen), read through
    :func:`~tlsteer.sae.adapter.as_feature_dictionary` with the same definitions.

    Keeps one ``d_model`` row per evaluated token (for the per-token explained variance); all
    other statistics are running sums.

    Example:
        >>> print(sae_quality(model, sae, tlsteer.load_neutral_text()))  # doctest: +SKIP
    """
    dictionary = as_feature_dictionary(sae, hook_name, model)
    hook, d_sae = dictionary.hook_name, dictionary.width
    batch_size = check_batch_size(batch_size)
    if not is_int(skip_first) or skip_first < 0:
        raise ValueError(f"skip_first must be an int >= 0, got {skip_first!r}")
    ids = tokenize_prompts(model, texts)
    device = dictionary.decoder_rows(torch.tensor([0])).device
    fires = torch.zeros(d_sae, dtype=torch.float64)
    sum_h = torch.zeros(model.cfg.d_model, dtype=torch.float64)
    sum_sq = sum_res = l0_sum = 0.0
    loss = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    n_loss = 0
    rows: list[Tensor] = []
    residuals: list[Tensor] = []
    with torch.no_grad():
        for first in range(0, len(ids), batch_size):
            batch = ids[first : first + batch_size]
            tokens, mask = left_pad(model, batch)
            evaluated = token_mask([len(t) for t in batch], tokens.shape[1], skip_first, tokens.device)
            out_logits, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=[hook])
            logits = cast(Tensor, out_logits)  # TransformerLens annotates it as its Output tuple
            h = cache[hook]
            feats = dictionary.encode(h[evaluated].to(device))
            h_hat = dictionary.decode(feats).to(h.device, h.dtype)
            recon = torch.zeros_like(h)
            recon[evaluated] = h_hat
            where = evaluated[..., None]
            spliced = model.run_with_hooks(
                tokens, attention_mask=mask, fwd_hooks=[(hook, _replace(where, recon))]
            )
            ablated = model.run_with_hooks(
                tokens, attention_mask=mask, fwd_hooks=[(hook, _replace(where, torch.zeros_like(h)))]
            )
            for key, out in (("clean", logits), ("sae", spliced), ("zero", ablated)):
                loss[key] += _next_token_nll(out, tokens, evaluated)
            n_loss += int(evaluated[:, :-1].sum())
            rows_h = h[evaluated].double().cpu()
            res = (rows_h - h_hat.double().cpu()).pow(2).sum(dim=-1)
            rows.append(rows_h.float())
            residuals.append(res)
            sum_h += rows_h.sum(dim=0)
            sum_sq += float(rows_h.pow(2).sum())
            sum_res += float(res.sum())
            active = (feats != 0).cpu()
            l0_sum += float(active.sum())
            fires += active.sum(dim=0).double()
    n_tok = int(sum(r.shape[0] for r in rows))
    if n_tok == 0 or n_loss == 0:
        raise ValueError(
            f"nothing to evaluate: with skip_first={skip_first}, a text needs at least {skip_first + 2} "
            "tokens (one evaluated position and the token after it)"
        )
    mean = sum_h / n_tok
    explained = 1.0 - sum_res / (sum_sq - n_tok * float(mean.pow(2).sum()))
    per_token = 1.0 - torch.cat(residuals) / (torch.cat(rows).double() - mean).pow(2).sum(dim=-1)
    clean, with_sae, zero_abl = (loss[k] / n_loss for k in ("clean", "sae", "zero"))
    return SAEQuality(
        hook_name=hook,
        explained_variance=explained,
        explained_variance_per_token=float(per_token.mean()),
        l0=l0_sum / n_tok,
        dead_share=float((fires == 0).double().mean()),
        ce_loss_score=(zero_abl - with_sae) / (zero_abl - clean),
        added_loss=with_sae - clean,
        loss_clean=clean,
        loss_with_sae=with_sae,
        loss_zero_ablation=zero_abl,
        n_tokens=n_tok,
        n_loss_tokens=n_loss,
        n_texts=len(ids),
        skip_first=int(skip_first),
        densities=(fires / n_tok).float(),
    )
