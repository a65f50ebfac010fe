"""What feature selection needs to know about each feature: densities, first-token features, output scores.

:func:`feature_stats` streams texts through the model and a feature dictionary (an SAE or any
:class:`~tlsteer.dictionary.FeatureDictionary`) once and counts, per feature, how often it fires
(its density over tokens, the first positions left out), its mean activation when it fires, and
how often it fires on a text's first token (an attention-sink feature; FGAA, Soo et al. 2025,
drops those). :func:`output_scores` measures what a feature *does* rather than what it reads:
amplify what it writes (its decoder row) in one forward pass and see whether the tokens its logit
lens promotes become more likely (the output score of Arad et al. 2025, who found that keeping
features with high output scores made SAE steering 2-3x better), either as their rank-times-
probability score (``definition="rank"``) or as a gain in probability mass (``"mass"``, the
default). Feed both to the selections of
:class:`~tlsteer.sae.FeatureVector` (``max_density``, ``min_frequency``,
``drop_first_token_features``, ``by_output_score``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from tlsteer._types import check_batch_size, is_int
from tlsteer.data import chat_prompt, load_open_prompts
from tlsteer.dictionary import check_feature_ids
from tlsteer.errors import format_options
from tlsteer.kv import head_cache, repeat_cache
from tlsteer.operators import check_multiplier
from tlsteer.reading import hook_batches, token_mask
from tlsteer.sae.adapter import as_feature_dictionary
from tlsteer.sae.features import FeatureVector
from tlsteer.tokens import tokenize_prompts

__all__ = ["OUTPUT_SCORE_DEFINITIONS", "FeatureStats", "feature_stats", "output_scores"]

OUTPUT_SCORE_DEFINITIONS = ("mass", "rank")
"""How :func:`output_scores` turns an amplified forward pass into a score (see its docstring)."""


@dataclass(frozen=True)
class FeatureStats:
    """Per-feature counts over a corpus (all tensors ``[width]``, float32, CPU).

    ``density``: share of the counted tokens (own positions ``>= skip_first``) where the feature
    is nonzero. ``mean_active``: its mean activation where it is nonzero (0 if it never fires).
    ``first_token_rate``: share of texts whose first token (position 0) fires it.
    """

    hook_name: str
    density: Float[Tensor, " width"] = field(repr=False)
    mean_active: Float[Tensor, " width"] = field(repr=False)
    first_token_rate: Float[Tensor, " width"] = field(repr=False)
    n_tokens: int
    n_texts: int
    skip_first: int

    def first_token_features(self, min_rate: Any = 0.5) -> list[int]:
        """Features that fire on the first token of at least ``min_rate`` of the texts."""
        rate = check_multiplier(min_rate)
        if not 0 < rate <= 1:
            raise ValueError(f"min_rate must be in (0, 1], got {min_rate!r}")
        return (self.first_token_rate >= rate).nonzero().flatten().tolist()

    def dead(self) -> list[int]:
        """Features that never fired on the counted tokens."""
        return (self.density == 0).nonzero().flatten().tolist()


def _check_texts(texts: Any, name: str = "texts") -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
        raise ValueError(f"{name} must be a non-empty list of strings, got {texts!r:.80}")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t]
    if bad:
        raise ValueError(f"{name}[{bad[0]}] must be a non-empty string, got {texts[bad[0]]!r:.80}")
    return list(texts)


def feature_stats(
    model: HookedTransformer,
    dictionary: object,
    texts: Any,
    *,
    batch_size: Any = 8,
    hook_name: str | None = None,
    skip_first: Any = 1,
) -> FeatureStats:
    """Density, mean activation and first-token rate of every feature over ``texts`` (streamed).

    Args:
        model: A ``HookedTransformer`` with a tokenizer.
        dictionary: A sae-lens SAE or a :class:`~tlsteer.dictionary.FeatureDictionary` that fits
            the model.
        texts: Texts as the model sees them (chat-formatted or raw); tokenized with a BOS where the
            model adds one.
        batch_size: Texts per forward pass; memory holds one batch.
        hook_name: Where an SAE reads, if its metadata does not say.
        skip_first: Positions at the start of each text left out of ``density`` and
            ``mean_active`` (the first is an attention sink).

    Example:
        >>> stats = feature_stats(model, sae, tlsteer.load_neutral_text())  # doctest: +SKIP
        >>> sink = stats.first_token_features()  # doctest: +SKIP
        >>> fv.max_density(0.05, stats.density).drop_first_token_features(sink)  # doctest: +SKIP
    """
    found = as_feature_dictionary(dictionary, hook_name, model)
    hook, width = found.hook_name, found.width
    batch_size = check_batch_size(batch_size)
    if not is_int(skip_first) or skip_first < 0:
        raise ValueError(f"skip_first must be an int >= 0, got {skip_first!r}")
    ids = tokenize_prompts(model, _check_texts(texts))
    fired = torch.zeros(width, dtype=torch.float64)
    total = torch.zeros(width, dtype=torch.float64)
    first = torch.zeros(width, dtype=torch.float64)
    counted = 0
    with torch.no_grad():
        for batch, tokens, acts in hook_batches(model, hook, ids, batch_size):
            width = tokens.shape[1]
            lengths = [len(ids[i]) for i in batch]
            chosen = token_mask(lengths, width, int(skip_first), tokens.device)
            feats = found.encode(acts[chosen]).float()
            fired += (feats != 0).sum(0).double().cpu()
            total += feats.sum(0).double().cpu()
            counted += feats.shape[0]
            starts = torch.tensor([width - n for n in lengths], device=acts.device)
            at_zero = found.encode(acts[torch.arange(len(batch), device=acts.device), starts])
            first += (at_zero != 0).sum(0).double().cpu()
    if counted == 0:
        raise ValueError(f"no tokens to count: every text has at most skip_first={skip_first} tokens")
    mean_active = torch.where(fired > 0, total / fired.clamp(min=1), 0.0)
    return FeatureStats(
        hook,
        (fired / counted).float(),
        mean_active.float(),
        (first / len(ids)).float(),
        counted,
        len(ids),
        int(skip_first),
    )


def default_score_prompts(model: HookedTransformer, n: int = 4) -> list[str]:
    """The first ``n`` built-in open prompts, chat-formatted: where output scores are measured."""
    return [chat_prompt(model, p) for p in load_open_prompts()[:n]]


def output_scores(
    model: HookedTransformer,
    dictionary: object,
    features: Any,
    prompts: Any = None,
    *,
    strength: Any = 1.0,
    n_tokens: Any = 10,
    batch_size: Any = 16,
    hook_name: str | None = None,
    definition: Any = "mass",
) -> Float[Tensor, " width"]:
    """How much amplifying each feature raises the probability of the tokens its logit lens names.

    For each chosen feature ``f``, its unit row (what one unit of ``f`` writes, through the
    dictionary's one decoding path ``decode_change``: the decoder row) times ``strength`` times
    the mean residual norm at the hook (measured on each prompt, first position left out) is added
    to the residual stream at the hook, and the next-token distribution at the prompt's last
    position is read. ``definition`` says where it is added and what is read:

    - ``"mass"`` (the default): added at every position but the first, in one forward pass. The
      score is the increase of the total probability of the ``n_tokens`` tokens that the row
      promotes most (``row @ W_U``). A probability-mass variant of the output score of Arad et al.
    - ``"rank"``: the output score of Arad, Mueller and Belinkov (2025, "SAEs Are Good for
      Steering - If You Select the Right Features", EMNLP), as they define it: added at the last
      position only. The logit-lens tokens are the ``n_tokens`` (they use 20) most likely under
      ``softmax(ln_final(row) @ W_U + b_U)``. With ``p`` the amplified next-token distribution,
      ``r`` the smallest 0-based rank in ``p`` of a logit-lens token (the number of tokens more
      likely than it) and ``V`` the vocabulary size, the score is ``(1 - r / V) * max p(t)`` over
      the logit-lens tokens ``t``: near 1 when a logit-lens token becomes the likely next token,
      near 0 when none does. It is not a difference with the unsteered pass: a token that was
      already likely counts. Arad et al. amplify by 10 times the largest feature activation at the
      last token on one neutral prompt (``"From my experience,"``); here the amount is ``strength``
      (in residual-norm units, like ``"mass"``) and the score is averaged over ``prompts``. The
      prompt before the last token is run once and its KV cache reused.

    A feature whose decoder row does what its logit lens says scores high under both; an input
    feature (one that reads a pattern but writes nothing legible) scores near 0 under ``"mass"``
    and low under ``"rank"``.

    Args:
        model: A ``HookedTransformer`` with a tokenizer.
        dictionary: A sae-lens SAE or a :class:`~tlsteer.dictionary.FeatureDictionary` that fits
            the model.
        features: Feature ids (an int or a list), or a :class:`FeatureVector` (its nonzero features).
        prompts: Texts as the model sees them; default: 4 built-in open prompts, chat-formatted.
        strength: The added norm in units of the mean residual norm at the hook (> 0).
        n_tokens: How many logit-lens tokens per feature.
        batch_size: Features per forward pass (each prompt is repeated once per feature).
        hook_name: Where an SAE reads, if its metadata does not say.
        definition: One of :data:`OUTPUT_SCORE_DEFINITIONS`: ``"mass"`` or ``"rank"`` (above).

    Returns:
        ``[width]`` float32 scores; features not chosen score 0 (pass the same features to
        ``FeatureVector.by_output_score``, which ranks only a vector's nonzero features).

    Example:
        >>> scores = output_scores(model, sae, fv.top_k(50))  # doctest: +SKIP
        >>> fv.by_output_score(scores, k=10)  # doctest: +SKIP
        >>> arad = output_scores(model, sae, fv.top_k(50), n_tokens=20, definition="rank")  # doctest: +SKIP
    """
    found = as_feature_dictionary(dictionary, hook_name, model)
    at, width = found.hook_name, found.width
    if definition not in OUTPUT_SCORE_DEFINITIONS:
        raise ValueError(
            f"definition must be one of {format_options(OUTPUT_SCORE_DEFINITIONS)}, got {definition!r}"
        )
    if isinstance(features, FeatureVector):
        features.check_dictionary(found)
        ids = features.features  # never empty: a FeatureVector has a nonzero feature
    else:
        ids = check_feature_ids(features, width)
    strength = check_multiplier(strength)
    if strength <= 0:
        raise ValueError(f"strength must be > 0, got {strength!r}")
    if not is_int(n_tokens) or n_tokens < 1:
        raise ValueError(f"n_tokens must be an int >= 1, got {n_tokens!r}")
    batch_size = check_batch_size(batch_size)
    texts = default_score_prompts(model) if prompts is None else _check_texts(prompts, "prompts")
    token_ids = tokenize_prompts(model, texts)
    if min(len(t) for t in token_ids) < 2:
        raise ValueError("every prompt needs at least 2 tokens (the first position is left unsteered)")

    w_u = model.W_U.detach().float()
    with torch.no_grad():
        index = torch.tensor(ids, dtype=torch.long)
        rows = found.decode_change(torch.eye(len(ids)), index).detach().float().to(w_u.device)
    rows = rows / rows.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    k = min(int(n_tokens), w_u.shape[1])
    if definition == "rank":
        with torch.no_grad():
            lens = model.ln_final(rows[None].to(model.cfg.dtype))[0].float() @ w_u + model.b_U.float()
        named = lens.topk(k, dim=-1).indices  # [n_ids, n_tokens]
        per_prompt = _rank_scores
    else:
        named = (rows @ w_u).topk(k, dim=-1).indices
        per_prompt = _mass_gains
    scores = torch.zeros(len(ids), dtype=torch.float64)
    with torch.no_grad():
        for ids_one in token_ids:
            scores += per_prompt(model, at, ids_one, rows, named, float(strength), batch_size)
    out = torch.zeros(width, dtype=torch.float32)
    out[torch.tensor(ids)] = (scores / len(token_ids)).float()
    return out


def _mass_gains(
    model: HookedTransformer,
    at: str,
    ids_one: list[int],
    rows: Tensor,
    named: Tensor,
    strength: float,
    batch_size: int,
) -> Tensor:
    """One prompt's ``"mass"`` scores (``[n_ids]``, float64, CPU): rows added at positions 1 onwards."""
    tokens = torch.tensor([ids_one], device=model.cfg.device)
    out_logits, cache = model.run_with_cache(tokens, names_filter=[at])
    base_logits = cast(Tensor, out_logits)  # TransformerLens annotates it as its Output tuple
    resid = cache[at][0, 1:]
    scale = strength * float(resid.norm(dim=-1).mean())
    base = base_logits[0, -1].float().softmax(-1)
    scores = torch.zeros(len(rows), dtype=torch.float64)
    for lo in range(0, len(rows), batch_size):
        added = (rows[lo : lo + batch_size] * scale).to(resid.dtype).to(resid.device)

        def add(act: Tensor, hook: Any = None, added: Tensor = added) -> Tensor:  # noqa: ARG001
            act = act.clone()
            act[:, 1:] += added[:, None, :]
            return act

        with model.hooks(fwd_hooks=[(at, add)]):
            logits = model(tokens.expand(len(added), -1))
        probs = logits[:, -1].float().softmax(-1)
        picked = named[lo : lo + batch_size].to(probs.device)
        gain = probs.gather(-1, picked).sum(-1) - base[picked].sum(-1)
        scores[lo : lo + batch_size] = gain.double().cpu()
    return scores


def _rank_scores(
    model: HookedTransformer,
    at: str,
    ids_one: list[int],
    rows: Tensor,
    named: Tensor,
    strength: float,
    batch_size: int,
) -> Tensor:
    """One prompt's ``"rank"`` scores (``[n_ids]``, float64, CPU): rows added at the last position,
    the prompt before it run once (its KV cache repeated for each batch of rows)."""
    tokens = torch.tensor([ids_one], device=model.cfg.device)
    _, cache = model.run_with_cache(tokens, names_filter=[at])
    resid = cache[at][0, 1:]
    scale = strength * float(resid.norm(dim=-1).mean())
    head = head_cache(model, ids_one[:-1], model.cfg.n_layers)
    last = tokens[:, -1:]
    scores = torch.zeros(len(rows), dtype=torch.float64)
    for lo in range(0, len(rows), batch_size):
        added = (rows[lo : lo + batch_size] * scale).to(resid.dtype).to(resid.device)

        def add(act: Tensor, hook: Any = None, added: Tensor = added) -> Tensor:  # noqa: ARG001
            return act + added[:, None, :]  # the one position this pass runs: the prompt's last

        feed = last.expand(len(added), -1)
        with model.hooks(fwd_hooks=[(at, add)]):
            logits = model(
                feed, attention_mask=torch.ones_like(feed), past_kv_cache=repeat_cache(head, len(added))
            )
        probs = logits[:, -1].float().softmax(-1)
        picked = named[lo : lo + batch_size].to(probs.device)
        p_named = probs.gather(-1, picked)  # [chunk, n_tokens]
        above = (probs[:, None, :] > p_named[:, :, None]).sum(-1)  # tokens more likely than each
        rank = above.min(-1).values.double()
        scores[lo : lo + batch_size] = ((1 - rank / probs.shape[-1]) * p_named.max(-1).values.double()).cpu()
    return scores
