"""Training a codebook on cached activations, with the model frozen.

The paper's recipe (Tamkin, Taufeeque and Goodman 2023, and its library ``codebook-features``):
codes initialised by k-means of the activations, dead codes (never chosen for a while) replaced by
activations drawn from a batch, and the codes trained so that the codebook's output reconstructs
its input (the library's ``aeloss``: the squared error between the output and the input); the
paper also trains through the next-token loss of the model with the codebook in the forward pass.

- :func:`kmeans`: Lloyd's k-means in torch on a sample of activations (k-means++ seeding; a
  cluster that empties is re-seeded from the rows farthest from their centre).
- :func:`train_codebook`: Adam on the reconstruction error over batches of activations, with
  dead-code replacement every ``replace_every`` steps.
- :func:`next_token_step`: one step of the next-token objective through a frozen
  ``HookedTransformer`` with the codebook spliced in (straight-through: the codebook's output
  replaces the activation in the forward pass, and the gradient reaches the chosen codes).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from tlsteer._types import is_int
from tlsteer.codebook.codebook import Codebook

__all__ = ["TrainingLog", "kmeans", "next_token_step", "train_codebook"]


def _positive_int(value: Any, name: str) -> int:
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


def _finite_rows(x: Any, name: str) -> Tensor:
    if not isinstance(x, Tensor) or x.ndim != 2 or not x.is_floating_point():
        raise ValueError(f"{name} must be a float tensor [n, d_model], got {x!r:.80}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} hold NaN or inf; train on finite activations only")
    return x


def _nearest(x: Tensor, centres: Tensor, chunk: int = 8192) -> tuple[Tensor, Tensor]:
    """Each row's nearest centre and its squared distance, in chunks of rows."""
    c_sq = centres.pow(2).sum(-1)
    ids, dist = [], []
    for first in range(0, x.shape[0], chunk):
        part = x[first : first + chunk]
        d = part.pow(2).sum(-1, keepdim=True) - 2 * part @ centres.T + c_sq
        best, where = d.min(-1)
        ids.append(where)
        dist.append(best.clamp_min(0))
    return torch.cat(ids), torch.cat(dist)


def _plus_plus(x: Tensor, n: int, gen: torch.Generator) -> Tensor:
    """k-means++ seeding: each next centre a row drawn with probability proportional to its squared
    distance from the nearest centre so far (Arthur and Vassilvitskii 2007)."""
    first = int(torch.randint(0, x.shape[0], (1,), generator=gen))
    centres = torch.empty(n, x.shape[1], dtype=x.dtype, device=x.device)
    centres[0] = x[first]
    nearest = (x - x[first]).pow(2).sum(-1)
    for i in range(1, n):
        weights = nearest.clamp_min(0).double().cpu()
        if not float(weights.sum()) > 0:  # every row sits on a centre: take any row
            pick = int(torch.randint(0, x.shape[0], (1,), generator=gen))
        else:
            pick = int(torch.multinomial(weights, 1, generator=gen))
        centres[i] = x[pick]
        nearest = torch.minimum(nearest, (x - x[pick]).pow(2).sum(-1))
    return centres


def kmeans(x: Tensor, n_codes: int, *, iters: int = 10, seed: int = 0) -> Tensor:
    """``n_codes`` centres of the rows of ``x`` by Lloyd's algorithm (float32, on ``x``'s device).

    The centres start from k-means++ seeding (rows drawn with ``seed``, each with probability
    proportional to its squared distance from the centres so far); a centre left with no rows is
    moved to the row farthest from its own centre, so every centre ends up holding rows.

    Example:
        >>> x = torch.cat([torch.randn(50, 2) * 0.1 + 5, torch.randn(50, 2) * 0.1 - 5])
        >>> sorted(round(float(c[0])) for c in kmeans(x, 2, seed=0))
        [-5, 5]
    """
    x = _finite_rows(x, "the k-means sample").float()
    n_codes, iters = _positive_int(n_codes, "n_codes"), _positive_int(iters, "iters")
    if n_codes > x.shape[0]:
        raise ValueError(f"k-means of {x.shape[0]} rows cannot give {n_codes} centres; sample more rows")
    centres = _plus_plus(x, n_codes, torch.Generator().manual_seed(int(seed)))
    for _ in range(iters):
        ids, dist = _nearest(x, centres)
        counts = torch.bincount(ids, minlength=n_codes)
        sums = torch.zeros_like(centres).index_add_(0, ids, x)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None].to(x.dtype)
        empty = (~filled).nonzero().flatten()
        if len(empty):
            far = dist.topk(len(empty)).indices
            centres[empty] = x[far]
    return centres


@dataclass
class TrainingLog:
    """What :func:`train_codebook` did: per-step losses, replacements, timing."""

    steps: int = 0
    tokens: int = 0
    losses: list[float] = field(default_factory=list)
    """The mean squared reconstruction error per token, each step."""
    replaced: list[tuple[int, int]] = field(default_factory=list)
    """``(step, codes replaced)`` at each replacement that replaced any."""
    dead_at_end: int = 0
    """Codes not chosen since the last replacement (or the start) when training stopped."""
    seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else math.nan

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["losses"] = [round(v, 6) for v in self.losses]
        out["tokens_per_s"] = round(self.tokens_per_s, 1)
        return out


def _output(codebook: Codebook, vectors: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """The codebook's output with ``vectors`` (differentiable in them) and the chosen ids."""
    with torch.no_grad():
        ids = Codebook(
            vectors.detach(),
            codebook.k,
            codebook.hook_name,
            codebook.similarity,
            codebook.layer_norm,
            codebook.eps,
        ).codes(x)[0]
    return torch.nn.functional.embedding(ids, vectors).sum(-2) / codebook.k, ids


def train_codebook(
    codebook: Codebook,
    batches: Iterable[Tensor],
    *,
    steps: int,
    lr: float = 1e-3,
    replace_every: int = 100,
    replace_rho: float = 0.0,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    log_every: int = 50,
) -> tuple[Codebook, TrainingLog]:
    """Train ``codebook``'s codes to reconstruct activations; a new codebook and the log.

    Each step takes the next batch ``[n, d_model]`` from ``batches`` (cycled if it runs out), finds
    each row's ``k`` codes (no gradient through the choice), and takes an Adam step on the mean
    over rows of ``||output - target||^2``, where the target is what the codebook compares
    (:meth:`Codebook.normalized`: the activation, layer-normalised if the codebook has a
    LayerNorm, as the paper's ``aeloss`` does). Every ``replace_every`` steps, codes that no row chose
    since the last replacement take the values of rows drawn from the current batch (plus
    Gaussian noise of ``replace_rho`` times their norm), as the paper's ``replace_dead_codes`` does.

    Args:
        codebook: The starting codes (from :func:`kmeans`, say) and settings.
        batches: An iterable of activation batches.
        steps: Optimiser steps.
        lr: Adam's learning rate.
        replace_every: Steps between dead-code replacements (0: never).
        replace_rho: Relative noise added to a replaced code.
        seed: Seeds the draws of replacement rows.
        log: Called with a progress line every ``log_every`` steps.
    """
    steps = _positive_int(steps, "steps")
    if not is_int(replace_every) or replace_every < 0:
        raise ValueError(f"replace_every must be an int >= 0, got {replace_every!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    vectors = codebook.vectors.detach().float().clone().requires_grad_(True)
    opt = torch.optim.Adam([vectors], lr=float(lr))
    gen = torch.Generator().manual_seed(int(seed))
    counts = torch.zeros(codebook.n_codes, dtype=torch.long)
    record = TrainingLog()
    start = time.perf_counter()
    source = iter(batches)
    for step in range(steps):
        try:
            x = next(source)
        except StopIteration:
            source = iter(batches)
            try:
                x = next(source)
            except StopIteration:
                raise ValueError("batches yielded nothing to train on") from None
        x = _finite_rows(x.reshape(-1, codebook.d_model), "the activation batch").float()
        target = codebook.normalized(x) if codebook.layer_norm is not None else x
        out, ids = _output(codebook, vectors, x)
        loss = (out - target).pow(2).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        counts += torch.bincount(ids.flatten().cpu(), minlength=codebook.n_codes)
        record.losses.append(float(loss.detach()))
        record.tokens += x.shape[0]
        if replace_every and (step + 1) % replace_every == 0:
            dead = (counts == 0).nonzero().flatten()
            if len(dead):
                with torch.no_grad():
                    pick = torch.randint(0, target.shape[0], (len(dead),), generator=gen)
                    new = target[pick].detach().clone()
                    if replace_rho > 0:
                        noise = torch.randn(new.shape, generator=gen).to(new)
                        new = new + replace_rho * new.norm(dim=-1, keepdim=True) * noise
                    vectors[dead] = new
                record.replaced.append((step + 1, len(dead)))
            counts.zero_()
        if log is not None and (step + 1) % log_every == 0:
            log(f"step {step + 1}/{steps}: loss {record.losses[-1]:.4f}, {record.tokens} tokens")
    record.steps = steps
    record.dead_at_end = int((counts == 0).sum()) if counts.sum() else codebook.n_codes
    record.seconds = time.perf_counter() - start
    trained = replace(codebook, vectors=vectors.detach().clone(), info=dict(codebook.info))
    return trained, record


def next_token_step(
    model: HookedTransformer,
    codebook: Codebook,
    vectors: Tensor,
    tokens: Tensor,
    *,
    skip_first: int = 1,
    reconstruction_weight: float = 1.0,
) -> tuple[Tensor, dict[str, float]]:
    """The next-token loss of ``model`` with the codebook (codes ``vectors``) spliced in at its hook.

    The codebook's output (differentiable in ``vectors``) replaces the activation at every position
    from ``skip_first`` on; the loss is the mean next-token cross-entropy predicted from those
    positions plus ``reconstruction_weight`` times the reconstruction error (the paper trains
    with both). The model's weights get no gradient (the caller freezes them); call
    ``loss.backward()`` and step an optimiser over ``vectors``.

    Returns:
        ``(loss, {"next_token": ..., "reconstruction": ...})``.
    """
    if not vectors.requires_grad:
        raise ValueError("vectors must require grad (the codes being trained)")
    parts: dict[str, Tensor] = {}

    def splice(act: Tensor, hook: Any) -> Tensor:  # noqa: ARG001
        tail = act[:, skip_first:]
        out, _ = _output(codebook, vectors, tail.reshape(-1, codebook.d_model))
        out = out.reshape(tail.shape)
        target = codebook.normalized(tail) if codebook.layer_norm is not None else tail
        parts["reconstruction"] = (out - target.detach()).pow(2).sum(-1).mean()
        return torch.cat([act[:, :skip_first], out.to(act.dtype)], dim=1)

    logits = model.run_with_hooks(tokens, fwd_hooks=[(codebook.hook_name, splice)])
    logp = logits[:, skip_first:-1].float().log_softmax(-1)
    nll = -logp.gather(-1, tokens[:, skip_first + 1 :, None])[..., 0].mean()
    loss = nll + reconstruction_weight * parts["reconstruction"]
    return loss, {
        "next_token": float(nll.detach()),
        "reconstruction": float(parts["reconstruction"].detach()),
    }
