"""Side-effect budgets: per-token KL statistics, calibration to a KL budget, bootstrap intervals.

Methods of steering are compared fairly at the same cost: :func:`kl_stats` measures how far a
:class:`~tlsteer.Steering` (vectors, edits such as SAE feature edits, or an instruction prefix
for the "prompting" method) moves next-token distributions on neutral text, per token, as a mean and a
95th percentile; :func:`calibrate_to_kl` finds the strength at which a method spends a given KL
budget; :func:`bootstrap_ci` and :func:`paired_difference_ci` put percentile-bootstrap intervals
on per-generation scores.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeGuard

import numpy as np
import torch
from transformer_lens import HookedTransformer

from tlsteer._types import check_batch_size, is_int
from tlsteer.data import chat_prompt
from tlsteer.eval.bootstrap import bootstrap_ci, paired_difference_ci
from tlsteer.eval.prefix_generation import prompt_cache
from tlsteer.hooks import edit_hooks
from tlsteer.positions import Positions
from tlsteer.steering import Steering, as_steering
from tlsteer.tokens import right_pad, tokenize_prompts

__all__ = [
    "Calibration",
    "KLStats",
    "bootstrap_ci",
    "calibrate_to_kl",
    "kl_stats",
    "paired_difference_ci",
    "reply_kl_stats",
]


@dataclass(frozen=True)
class KLStats:
    """Per-token KL(unsteered || steered) pooled over the measured positions of neutral prompts.

    Example:
        >>> KLStats(mean=0.02, p95=0.07, n_tokens=120).to_dict()
        {'mean': 0.02, 'p95': 0.07, 'n_tokens': 120}
    """

    mean: float
    p95: float
    """95th percentile (NumPy's linear interpolation) of the per-token KL."""
    n_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _own_start(model: HookedTransformer, prompt: str, ids: list[int]) -> int:
    """Where the prompt's own tokens start in ``ids``: after any token the tokenizer adds (BOS)."""
    raw = list(model.tokenizer(prompt, add_special_tokens=False)["input_ids"])  # type: ignore[misc]
    for start in range(len(ids) - len(raw) + 1):
        if ids[start : start + len(raw)] == raw:
            return start
    return 0


def _align_prefixed(
    model: HookedTransformer, prefix: str, prompts: Sequence[str], token_ids: list[list[int]]
) -> tuple[list[list[int]], list[int], list[int]]:
    """Token ids of ``prefix + prompt``, each prompt's own start and how far the prefix shifts it."""
    prefixed = tokenize_prompts(model, [prefix + p for p in prompts])
    starts, shifts = [], []
    for i, (prompt, ids, full) in enumerate(zip(prompts, token_ids, prefixed, strict=True)):
        lead = _own_start(model, prompt, ids)
        own, shift = ids[lead:], len(full) - len(ids)
        if shift <= 0:
            raise ValueError(f"prompt {i}: the prefix {prefix!r} adds no tokens ({full[:8]}...)")
        if full[:lead] != ids[:lead]:
            raise ValueError(
                f"prompt {i}: with the prefix {prefix!r} the tokenizer's leading tokens change "
                f"({ids[:lead]} alone vs {full[:lead]} with the prefix); positions cannot be matched"
            )
        if full[len(full) - len(own) :] != own:
            raise ValueError(
                f"prompt {i} ({prompt[:40]!r}): after the prefix {prefix!r} the prompt no longer "
                f"tokenizes to its own tokens (alone: {own[:8]}..., after the prefix: "
                f"{full[len(full) - len(own) :][:8]}...): the tokenizer merges across the boundary, so "
                "positions cannot be matched; end the prefix with a separator such as a newline"
            )
        starts.append(lead)
        shifts.append(shift)
    return prefixed, starts, shifts


def kl_stats(
    model: HookedTransformer,
    steering: Steering,
    *,
    prompts: Sequence[str],
    measure_from: int = 1,
    batch_size: int = 8,
    cache: dict | None = None,
    check_model: bool = True,
) -> KLStats:
    """Per-token KL(unsteered || steered) of next-token distributions on neutral prompts.

    The unsteered run is the plain prompt; the steered run applies ``steering``: its edits at its
    positions (every position or from an index on, counted in each prompt's own tokens), and its
    prefix before the prompt. The KL is taken at every position ``>= measure_from`` of every
    prompt and pooled (a longer prompt weighs more); the default 1 leaves out the first position,
    an attention sink whose distribution is far from the rest.

    With a prefix (an instruction, the "prompting" method) the steered run reads
    ``steering.instruct(prompt)`` (the prefix, a blank line, the prompt: as in generation and A/B
    scoring) and the distributions are compared at the same prompt tokens: the steered text must
    tokenize to the tokenizer's leading special tokens (BOS), the prefix's tokens, then exactly the
    prompt's own tokens; a tokenizer that merges across the boundary is refused. Edits given with a
    prefix steer the prompt's own tokens at the steering's positions (every position, the
    prefix's included, with ``Positions.all()``).

    Everything (edits, positions, prompts, alignment) is checked before any forward pass.

    Args:
        model: A ``HookedTransformer`` with a tokenizer.
        steering: A :class:`~tlsteer.Steering` with edits, a prefix, or both.
        prompts: Neutral text, a non-empty list of non-empty strings.
        measure_from: First measured absolute position of each prompt.
        batch_size: Prompts per forward pass (right-padded).
        cache: A dict kept between calls on the same prompts (as in a calibration): the
            unsteered log-probabilities are stored there on the first call and reused after.
        check_model: Refuse a steering made for another model (``False`` measures anyway).

    Returns:
        :class:`KLStats` with the mean, the 95th percentile and the number of measured tokens.

    Example:
        >>> stats = kl_stats(model, vec.steering(4.0), prompts=["Water boils."])  # doctest: +SKIP
        >>> stats.mean, stats.p95, stats.n_tokens  # doctest: +SKIP
        (0.0123, 0.0410, 26)
        >>> kl_stats(model, Steering.from_prompt("Answer angrily.\\n"), prompts=neutral)  # doctest: +SKIP
    """
    steering = as_steering(steering)
    min_token_index = measure_from
    batch_size = check_batch_size(batch_size)
    if cache is not None and not isinstance(cache, dict):
        raise TypeError(f"cache must be a dict or None, got {type(cache).__name__}")
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or not prompts:
        raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    if not is_int(measure_from) or measure_from < 0:
        raise ValueError(f"measure_from must be an int >= 0 (an absolute position), got {measure_from!r}")
    min_token_index = int(measure_from)
    prefix = steering.instruct("") if steering.prefix else None  # "{prefix}\n\n", as everywhere
    base = steering.positions
    if steering.is_unsteered:
        raise ValueError("nothing to measure: the steering has no edits and no prefix")
    if base.mode not in ("all", "from"):
        raise ValueError(
            f"kl_stats steers every position or from an index on (Positions.all(), .start_at(i)); "
            f"got {base.describe()}, which right-padded prompts of different lengths cannot share"
        )
    steering.check(model, check_model=check_model)  # hook names and callables, nothing registered
    all_edits = list(steering.edits)
    token_ids = tokenize_prompts(model, prompts)
    longest = max(len(ids) for ids in token_ids)
    if min_token_index >= longest:
        raise ValueError(
            f"measure_from={min_token_index} leaves no position to measure: the longest prompt has "
            f"{longest} tokens (valid: 0..{longest - 1})"
        )
    if all_edits:  # a start no prompt reaches steers nothing; a batch of short prompts is fine
        base.check_length(longest, "the longest prompt")
    if prefix is None:
        steered_ids, starts, shifts = token_ids, [0] * len(token_ids), [0] * len(token_ids)
    else:
        steered_ids, starts, shifts = _align_prefixed(model, prefix, prompts, token_ids)

    per_token: list[torch.Tensor] = []
    for first in range(0, len(token_ids), batch_size):
        rows = range(first, min(first + batch_size, len(token_ids)))
        index_row, clean_col, steered_col = [], [], []
        for r, i in enumerate(rows):
            for p in range(min_token_index, len(token_ids[i])):
                index_row.append(r)
                clean_col.append(p)
                steered_col.append(p if p < starts[i] else p + shifts[i])
        if not index_row:
            continue
        at = torch.tensor(index_row, device=model.cfg.device)
        tokens, mask = right_pad(model, token_ids[first : first + batch_size])
        s_tokens, s_mask = right_pad(model, steered_ids[first : first + batch_size])
        positions = base
        if prefix is not None and base.mode != "all":
            positions = base.shifted([shifts[i] for i in rows])
        key = (first, min_token_index, tuple(tuple(t) for t in token_ids[first : first + batch_size]))
        with torch.no_grad():
            if cache is not None and key in cache:
                clean_lp = cache[key]
            else:
                clean = model(tokens, attention_mask=mask)[at, torch.tensor(clean_col, device=at.device)]
                clean_lp = clean.float().log_softmax(-1)
                if cache is not None:
                    cache[key] = clean_lp
        per_token.append(
            _steered_kl(model, clean_lp, s_tokens, s_mask, all_edits, positions, at, steered_col)
        )
    return _pooled(per_token)


def _steered_kl(
    model: HookedTransformer,
    clean_lp: torch.Tensor,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    edits: list,
    positions: Positions,
    at: torch.Tensor,
    cols: list[int],
    past_kv_cache: Any = None,
) -> torch.Tensor:
    """Per-token KL(clean || steered) at rows ``at`` and columns ``cols`` of one steered batch."""
    with torch.no_grad():
        if edits:
            hooks = edit_hooks(model, edits, positions)
            # TransformerLens types fwd_hooks as an invariant list[tuple[str | Callable, Callable]]
            with model.hooks(fwd_hooks=hooks):  # pyright: ignore[reportArgumentType]
                steered = model(tokens, attention_mask=mask, past_kv_cache=past_kv_cache)
        else:
            steered = model(tokens, attention_mask=mask, past_kv_cache=past_kv_cache)
        steered_lp = steered[at, torch.tensor(cols, device=at.device)].float().log_softmax(-1)
    return (clean_lp.exp() * (clean_lp - steered_lp)).sum(-1).clamp_min(0.0).double().cpu()


def _pooled(per_token: list[torch.Tensor]) -> KLStats:
    values = torch.cat(per_token).numpy()
    return KLStats(mean=float(values.mean()), p95=float(np.percentile(values, 95)), n_tokens=int(values.size))


def reply_kl_stats(
    model: HookedTransformer,
    steering: Steering,
    *,
    prompts: Sequence[str],
    replies: Sequence[Sequence[int]],
    batch_size: int = 16,
    cache: dict | None = None,
    check_model: bool = True,
) -> KLStats:
    """Per-token KL(unsteered || steered) over fixed replies in the chat turn: where generation steers.

    Each prompt is a user message put in the model's chat template (:func:`~tlsteer.chat_prompt`)
    and followed by its reply's tokens (fixed: typically the unsteered model's own sampled
    replies, made once). The steering's edits act from the prompt's last token on, as
    ``steering.at(Positions.last())`` acts in generation, and its prefix (an instruction, the
    prompting method) goes inside the user turn, ``steering.instruct(prompt)``, as in generation.
    Without a prefix, the positions before each prompt's last token (the same steered or not)
    run once into a KV cache, kept in ``cache``, and each forward runs only the last prompt token
    and the reply.
    The KL is taken at every position that predicts a reply token (the prompt's last token and
    each reply token but the last) and pooled over prompts.

    Args:
        model: A ``HookedTransformer`` with a tokenizer.
        steering: A :class:`~tlsteer.Steering` with edits, a prefix, or both; its own positions
            are replaced by "from the prompt's last token on".
        prompts: User messages (non-empty strings).
        replies: Token ids of each prompt's reply (at least one token each).
        batch_size: Sequences per forward pass (right-padded).
        cache: A dict kept between calls on the same prompts and replies (as in a calibration).
        check_model: Refuse a steering made for another model.

    Example:
        >>> steering = vec.steering(4.0)  # doctest: +SKIP
        >>> reply_kl_stats(model, steering, prompts=["Tell me a story."], replies=[[12, 7]])  # doctest: +SKIP
        KLStats(mean=0.21, p95=0.62, n_tokens=2)
    """
    steering = as_steering(steering)
    batch_size = check_batch_size(batch_size)
    if cache is not None and not isinstance(cache, dict):
        raise TypeError(f"cache must be a dict or None, got {type(cache).__name__}")
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or not prompts:
        raise ValueError(f"prompts must be a non-empty list of user messages, got {prompts!r:.80}")
    if isinstance(replies, (str, bytes)) or not isinstance(replies, Sequence) or len(replies) != len(prompts):
        n = len(replies) if isinstance(replies, Sequence) else replies
        raise ValueError(f"replies must be one list of token ids per prompt ({len(prompts)}), got {n!r:.80}")
    vocab = model.cfg.d_vocab
    reply_ids = []
    for i, reply in enumerate(replies):
        ids = list(reply) if isinstance(reply, Sequence) and not isinstance(reply, str) else None
        if not ids or not all(is_int(t) and 0 <= t < vocab for t in ids):
            raise ValueError(
                f"reply {i} must be a non-empty list of token ids in [0, {vocab}), got {reply!r:.80}"
            )
        reply_ids.append([int(t) for t in ids])
    if steering.is_unsteered:
        raise ValueError("nothing to measure: the steering has no edits and no prefix")
    steering.check(model, check_model=check_model)
    clean_prompt = tokenize_prompts(model, [chat_prompt(model, p) for p in prompts])
    steered_prompt = (
        tokenize_prompts(model, [chat_prompt(model, steering.instruct(p)) for p in prompts])
        if steering.prefix
        else clean_prompt
    )
    edits = list(steering.edits)
    if not steering.prefix:
        return _reply_kl_from_cache(model, edits, clean_prompt, reply_ids, batch_size, cache)
    per_token: list[torch.Tensor] = []
    for first in range(0, len(prompts), batch_size):
        rows = range(first, min(first + batch_size, len(prompts)))
        clean_ids = [clean_prompt[i] + reply_ids[i] for i in rows]
        steered_ids = [steered_prompt[i] + reply_ids[i] for i in rows]
        index_row, clean_col, steered_col = [], [], []
        for r, i in enumerate(rows):
            for j in range(len(reply_ids[i])):
                index_row.append(r)
                clean_col.append(len(clean_prompt[i]) - 1 + j)
                steered_col.append(len(steered_prompt[i]) - 1 + j)
        at = torch.tensor(index_row, device=model.cfg.device)
        key = ("reply", first, tuple(tuple(t) for t in clean_ids))
        with torch.no_grad():
            if cache is not None and key in cache:
                clean_lp = cache[key]
            else:
                tokens, mask = right_pad(model, clean_ids)
                clean = model(tokens, attention_mask=mask)[at, torch.tensor(clean_col, device=at.device)]
                clean_lp = clean.float().log_softmax(-1)
                if cache is not None:
                    cache[key] = clean_lp
        tokens, mask = right_pad(model, steered_ids)
        # the edits act from each row's last prompt token on
        positions = Positions("from", 0, (), tuple(len(steered_prompt[i]) - 1 for i in rows))
        per_token.append(_steered_kl(model, clean_lp, tokens, mask, edits, positions, at, steered_col))
    return _pooled(per_token)


def _reply_kl_from_cache(
    model: HookedTransformer,
    edits: list,
    prompt_ids: list[list[int]],
    reply_ids: list[list[int]],
    batch_size: int,
    cache: dict | None,
) -> KLStats:
    """:func:`reply_kl_stats` without a prefix: every position before the last prompt token is the
    same steered or not, so it runs once, unsteered, into a KV cache
    (:func:`~tlsteer.eval.prefix_generation.prompt_cache`, kept in ``cache``); each forward runs only
    the last prompt token and the reply (all steered), on a copy of that cache."""
    key = ("reply-prompts", tuple(tuple(p) for p in prompt_ids))
    pc = cache.get(key) if cache is not None else None
    if pc is None:
        pc = prompt_cache(model, prompt_ids)
        if cache is not None:
            cache[key] = pc
    per_token: list[torch.Tensor] = []
    for first in range(0, len(prompt_ids), batch_size):
        rows = list(range(first, min(first + batch_size, len(prompt_ids))))
        seqs = [[pc.last_tokens[i], *reply_ids[i][:-1]] for i in rows]
        index_row = [r for r, i in enumerate(rows) for _ in reply_ids[i]]
        cols = [j for i in rows for j in range(len(reply_ids[i]))]
        at = torch.tensor(index_row, device=model.cfg.device)
        tokens, mask = right_pad(model, seqs)
        clean_key = ("reply-suffix", first, tuple(tuple(s) for s in seqs), key)
        with torch.no_grad():
            if cache is not None and clean_key in cache:
                clean_lp = cache[clean_key]
            else:
                clean = model(tokens, attention_mask=mask, past_kv_cache=pc.rows(rows))
                clean_lp = clean[at, torch.tensor(cols, device=at.device)].float().log_softmax(-1)
                if cache is not None:
                    cache[clean_key] = clean_lp
        per_token.append(
            _steered_kl(
                model, clean_lp, tokens, mask, edits, Positions.all(), at, cols, past_kv_cache=pc.rows(rows)
            )
        )
    return _pooled(per_token)


# -- calibration to a KL budget -----------------------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    """The strength at which a method spends a KL budget (see :func:`calibrate_to_kl`).

    ``reached`` is true when the KL measured at ``strength`` is within the tolerance of the
    budget; ``evaluations`` lists every ``(strength, kl)`` tried, in order.

    Example:
        >>> Calibration(2.0, 0.5, 0.5, True, [(4.0, 2.0), (2.0, 0.5)]).to_dict()["evaluations"]
        [[4.0, 2.0], [2.0, 0.5]]
    """

    strength: float
    kl: float
    budget: float
    reached: bool
    evaluations: list[tuple[float, float]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "strength": self.strength,
            "kl": self.kl,
            "budget": self.budget,
            "reached": self.reached,
            "evaluations": [[s, k] for s, k in self.evaluations],
        }


def _finite(value: object) -> TypeGuard[numbers.Real]:
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(float(value))


def _positive_finite(value: Any, name: str) -> float:
    if not _finite(value):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    if float(value) <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return float(value)


def calibrate_to_kl(
    measure: Any,
    budget: Any,
    *,
    low: Any = 1e-3,
    high: Any = 4.0,
    steps: Any = 12,
    tolerance: Any = 0.1,
    start: Any = None,
    exponent: Any = 2.0,
) -> Calibration:
    """The strength at which ``measure(strength)`` (a mean KL) equals ``budget``, by log bisection.

    ``measure(high)`` is tried first: below the budget (and outside the tolerance) the method
    cannot spend it, and ``high`` is returned with ``reached=False``. Then ``measure(low)``: above
    the budget, ``low`` is returned with ``reached=False``. Otherwise up to ``steps`` false-position
    steps (Illinois) on log KL against log strength follow, inside the bracket (a bisection step
    where a step would leave it), stopping as soon as ``|kl / budget - 1| <= tolerance``; if none gets
    there, the strength whose KL is closest to the budget is returned with ``reached=False``.
    ``measure`` is assumed to increase with the strength; if it does not, the answer is still one
    of the strengths tried, with its measured KL.

    With a ``start`` guess, a few secant steps on log KL against log strength come first (the first
    one assumes ``KL ~ strength ** exponent``; small steering costs KL as its square), each
    clipped to the bracket and to a factor of 10; they usually land within the tolerance in two or
    three measurements. If they do not, the bisection above takes over from the tightest bracket
    they found.

    Args:
        measure: ``strength -> mean KL``, e.g.
            ``lambda s: kl_stats(model, vec.steering(s), prompts=neutral).mean``.
        budget: The KL to spend, finite and > 0.
        low, high: The bracket of strengths, ``0 < low < high``.
        steps: Most steps (the two ends are measured on top of them).
        tolerance: Relative tolerance on the KL, >= 0.
        start: A first guess of the strength inside ``[low, high]``, or ``None``.
        exponent: The assumed power of the first secant step, > 0.

    Example:
        >>> cal = calibrate_to_kl(lambda s: 0.3 * s**2, budget=1.2, tolerance=0.01)
        >>> round(cal.strength, 1), cal.reached, abs(cal.kl / 1.2 - 1) <= 0.01
        (2.0, True, True)
    """
    if not callable(measure):
        raise TypeError(f"measure must be a callable strength -> KL, got {measure!r}")
    budget = _positive_finite(budget, "budget")
    low, high = _positive_finite(low, "low"), _positive_finite(high, "high")
    if low >= high:
        raise ValueError(f"low must be below high, got low={low} and high={high}")
    if not is_int(steps) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if not _finite(tolerance) or tolerance < 0:
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    if start is not None:
        start = min(max(_positive_finite(start, "start"), low), high)
    exponent = _positive_finite(exponent, "exponent")
    evaluations: list[tuple[float, float]] = []

    def run(strength: float) -> float:
        value = measure(strength)
        if not _finite(value):
            raise ValueError(f"measure({strength}) returned {value!r}; it must return a finite KL")
        evaluations.append((strength, float(value)))
        return float(value)

    def close(kl: float) -> bool:
        return abs(kl / budget - 1) <= tolerance

    def result(strength: float, kl: float) -> Calibration:
        return Calibration(strength, kl, budget, close(kl), list(evaluations))

    if start is not None:
        found = _secant(run, close, budget, start, low, high, exponent)
        if found is not None:
            return result(*found)
    below = [e for e in evaluations if e[1] < budget]
    above = [e for e in evaluations if e[1] > budget]
    if below and above and max(below)[0] >= min(above)[0]:  # not increasing: measure the ends
        below, above = [], []
    if above:
        high, kl_high = min(above)
    else:
        kl_high = run(high)
        if kl_high < budget or close(kl_high):
            return result(high, kl_high)
    if below:
        low, kl_low = max(below)
    else:
        kl_low = run(low)
        if kl_low > budget or close(kl_low):
            return result(low, kl_low)
    # false position (Illinois) on log KL against log strength, kept inside the bracket: KL grows
    # about as a power of the strength, so a step lands close; a bisection step when it cannot
    target = math.log(budget)
    lo, hi = math.log(low), math.log(high)
    f_lo, f_hi = math.log(max(kl_low, 1e-30)) - target, math.log(kl_high) - target
    side = 0
    for _ in range(int(steps)):
        guess = (lo * f_hi - hi * f_lo) / (f_hi - f_lo) if f_hi != f_lo else (lo + hi) / 2
        if not lo < guess < hi:
            guess = (lo + hi) / 2
        mid = math.exp(guess)
        kl = run(mid)
        if close(kl):
            return result(mid, kl)
        f_mid = math.log(max(kl, 1e-30)) - target
        if f_mid < 0:
            lo, f_lo = guess, f_mid
            if side == -1:
                f_hi /= 2
            side = -1
        else:
            hi, f_hi = guess, f_mid
            if side == 1:
                f_lo /= 2
            side = 1
    best = min(evaluations, key=lambda e: abs(e[1] - budget))
    return result(*best)


def _secant(
    run: Any,
    close: Any,
    budget: float,
    start: float,
    low: float,
    high: float,
    exponent: float,
    steps: int = 4,
) -> tuple[float, float] | None:
    """Secant steps on log KL against log strength from ``start``; the first hit, or ``None``."""
    s, kl = start, run(start)
    if close(kl):
        return s, kl
    slope, previous = exponent, None
    for _ in range(steps):
        if previous is not None and kl > 0 and previous[1] > 0 and s != previous[0]:
            measured = (math.log(kl) - math.log(previous[1])) / (math.log(s) - math.log(previous[0]))
            slope = measured if 0.25 <= measured <= 8 else exponent
        nxt = s * 10 if kl <= 0 else s * math.exp((math.log(budget) - math.log(kl)) / slope)
        nxt = min(max(nxt, s / 10, low), s * 10, high)
        if nxt == s:  # pinned at an end of the bracket
            return None
        previous, s = (s, kl), nxt
        kl = run(s)
        if close(kl):
            return s, kl
    return None
