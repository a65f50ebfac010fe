"""Feature steering against raw CAA at matched side effects: contrasts, calibration and one task's cells.

A *cell* is one method at one side-effect budget on one task. Every method of
:mod:`tlsteer.sae.methods` is built from the same contrast at the same hook; its strength is set
by calibration, not by hand: the strength at which its mean per-token KL divergence from the
unsteered model on neutral text reaches the budget (:func:`calibrate_method`, bisection in log
strength; prompting has no strength and is measured as it is). The neutral text is never a test
prompt. At that strength a task is scored on its test data:

- a class set (:func:`run_class_task`): for each target class, generations from open prompts
  (sampled, several seeds) steered toward it; the K-class judge labels each; success is the share
  judged as the target, the transfer matrix holds where they land, selectivity is the target's
  gain over unsteered minus the largest gain of another class (mean over targets); fluency is the
  perplexity of each generation under the unsteered model;
- CAA A/B data (:func:`run_ab_task`): p(matching) on held-out A/B items.

Every rate comes with a 95% bootstrap interval; KL (mean, p95) and MMLU accuracy at the chosen
strength are side effects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from transformer_lens import HookedTransformer

from tlsteer.data import ABItem, ContrastPair
from tlsteer.eval.ab import ABScore, ab_scores
from tlsteer.eval.budget import bootstrap_ci, calibrate_to_kl, kl_stats
from tlsteer.eval.cached import Setting, cached_ab_scores
from tlsteer.hooks import vector_edits
from tlsteer.reading import plan_reads, read_all
from tlsteer.sae.adapter import SAELike, sae_dims
from tlsteer.sae.methods import ContrastReps, Method, Steering
from tlsteer.tokens import right_pad

__all__ = [
    "calibrate_method",
    "cell_steerings",
    "contrast_from_pairs",
    "contrast_from_profile",
    "perplexities",
    "run_ab_task",
    "instructed",
    "interval",
    "steered_ab_scores",
]


def contrast_from_profile(profile: Any, target: str) -> ContrastReps:
    """Class ``target`` against all other classes of an :class:`~tlsteer.sae.SAEClassProfile`."""
    target = profile.check_class(target)
    raw, feat = profile.reps["raw"], profile.reps["feature"]
    others = [c for c in profile.classes if c != target]
    return ContrastReps(
        raw[target],
        torch.cat([raw[c] for c in others]),
        feat[target],
        torch.cat([feat[c] for c in others]),
        paired=False,
        class_means=profile.means("raw"),
    )


def contrast_from_pairs(
    model: HookedTransformer, sae: SAELike, pairs: Sequence[ContrastPair], hook_name: str, batch_size: int = 8
) -> ContrastReps:
    """Paired reps of contrast pairs at each pair's read index, raw and encoded, in one pass."""
    d_in, d_sae = sae_dims(sae)

    def both(rows: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            encoded = sae.encode(rows.to(sae.W_dec.device)).float().to(rows.device)
        return torch.cat([rows.float(), encoded], dim=-1)

    plan = plan_reads(model, list(pairs), "last")
    rows = read_all(model, hook_name, plan, both, d_in + d_sae, batch_size)
    n = plan.n_positive
    return ContrastReps(rows[:n, :d_in], rows[n:, :d_in], rows[:n, d_in:], rows[n:, d_in:], paired=True)


def _kl(
    model: HookedTransformer, steering: Steering, neutral: Sequence[str], batch_size: int, cache: Any = None
) -> Any:
    return kl_stats(
        model,
        vectors=list(steering.vectors),
        edits=list(steering.edits),
        prompts=list(neutral),
        prefix=None if steering.prefix is None else f"{steering.prefix}\n\n",
        batch_size=batch_size,
        cache=cache,
    )


def calibrate_method(
    model: HookedTransformer,
    method: Method,
    neutral: Sequence[str],
    budgets: Sequence[float],
    high: float = 4.0,
    batch_size: int = 32,
) -> dict[float, dict[str, Any]]:
    """Per budget: the strength whose mean KL on ``neutral`` meets it, and the KL stats there.

    Evaluations are shared between budgets, and each search starts from a guess (secant steps of
    :func:`~tlsteer.eval.budget.calibrate_to_kl`). Prompting has no strength: its KL is measured once
    and reported for every budget (``reached`` says whether it is within 10% of the budget).
    """
    if not method.has_strength:
        stats = _kl(model, method.at(None), neutral, batch_size)
        return {
            b: {
                "strength": None,
                "kl_mean": stats.mean,
                "kl_p95": stats.p95,
                "reached": abs(stats.mean / b - 1) <= 0.1,
            }
            for b in budgets
        }
    memo: dict[float, Any] = {}
    clean: dict = {}

    def stats_at(strength: float) -> Any:
        if strength not in memo:
            memo[strength] = _kl(model, method.at(strength), neutral, batch_size, clean)
        return memo[strength]

    high = high * 10 if method.kind == "clamp" else high
    # a first guess near where methods land (a quarter of the residual norm, or 2.5 typical
    # activations), then the previous budget's strength scaled as if KL grew as its square
    start, previous = (2.5 if method.kind == "clamp" else 0.25), None
    out = {}
    for b in sorted(budgets):
        if previous is not None and previous[1] > 0:
            start = previous[1] * (b / previous[0]) ** 0.5
        cal = calibrate_to_kl(lambda s: stats_at(s).mean, b, high=high, start=start)
        previous = (b, cal.strength)
        stats = stats_at(cal.strength)
        out[b] = {
            "strength": cal.strength,
            "kl_mean": stats.mean,
            "kl_p95": stats.p95,
            "reached": cal.reached,
        }
    return out


def perplexities(
    model: HookedTransformer,
    prompt_ids: Sequence[Sequence[int]],
    new_ids: Sequence[Sequence[int]],
    batch_size: int = 16,
) -> np.ndarray:
    """Perplexity of each continuation after its prompt under ``model`` as it is (right-padded batches)."""
    out = []
    for start in range(0, len(prompt_ids), batch_size):
        rows = [
            list(p) + list(n)
            for p, n in zip(
                prompt_ids[start : start + batch_size], new_ids[start : start + batch_size], strict=True
            )
        ]
        tokens, mask = right_pad(model, rows)
        with torch.no_grad():
            logprobs = model(tokens, attention_mask=mask).float().log_softmax(-1)
        for i, (p, n) in enumerate(
            zip(prompt_ids[start : start + batch_size], new_ids[start : start + batch_size], strict=True)
        ):
            if not n:
                out.append(float("nan"))
                continue
            targets = tokens[i, len(p) : len(p) + len(n)]
            picked = logprobs[i, len(p) - 1 : len(p) + len(n) - 1].gather(-1, targets[:, None])[:, 0]
            out.append(float(torch.exp(-picked.mean())))
    return np.asarray(out)


def interval(values: Any, n_resamples: int, statistic: Any = np.mean) -> dict[str, float]:
    est, low, high = bootstrap_ci(
        np.asarray(values, dtype=float), n_resamples=n_resamples, statistic=statistic
    )
    return {"value": float(est), "low": float(low), "high": float(high)}


def instructed(instruction: str | None, prompt: str) -> str:
    return prompt if instruction is None else f"{instruction}\n\n{prompt}"


def steered_ab_scores(
    model: HookedTransformer,
    items: Sequence[ABItem],
    steerings: Mapping[str, Steering],
    outside_ab: str = "error",
) -> dict[str, list[ABScore]]:
    """A/B scores of ``items`` under each named :class:`Steering` (CAA semantics: steered from the
    end of the question).

    Steerings that act at one hook (one vector or one edit, no prefix) and the unsteered one share
    a single run of the cached engine (:func:`tlsteer.eval.cached.cached_ab_scores`: each batch's
    prompt prefix runs once for all of them); the others (an instruction prefix, several hooks)
    run on their own with :func:`tlsteer.eval.ab.ab_scores`.
    """
    settings, keys, alone = [], [], {}
    for key, steering in steerings.items():
        pairs = (vector_edits(model, list(steering.vectors)) if steering.vectors else []) + list(
            steering.edits
        )
        if steering.prefix is None and len(pairs) == 1:
            settings.append(Setting(pairs[0][0], edit=pairs[0][1]))
            keys.append(key)
        elif steering.prefix is None and not pairs:
            keys.append(key)
            settings.append(None)
        else:
            alone[key] = steering
    out: dict[str, list[ABScore]] = {}
    if any(s is not None for s in settings):
        hook = next(s.hook for s in settings if s is not None)
        zero = Setting(hook, torch.zeros(model.cfg.d_model), 0.0)  # the unsteered rows
        scores = cached_ab_scores(
            model, list(items), [zero if s is None else s for s in settings], outside_ab=outside_ab
        )
        out.update(zip(keys, scores, strict=True))
    elif keys:
        alone.update({k: Steering() for k in keys})
    for key, steering in alone.items():
        steered = list(items)
        if steering.prefix is not None:
            steered = [
                ABItem(instructed(steering.prefix, i.question), i.matching, i.not_matching) for i in items
            ]
        out[key] = ab_scores(
            model, steered, list(steering.vectors), edits=list(steering.edits), outside_ab=outside_ab
        )
    return {key: out[key] for key in steerings}


def cell_steerings(
    methods: Mapping[str, Method], calibrations: Mapping[str, Mapping[float, Mapping[str, Any]]]
) -> dict[str, tuple[Steering, Mapping[str, Any]]]:
    """``{cell key: (steering, calibration)}``: ``"<method>@<budget>"``, or the method's name alone
    for one without a strength (measured once)."""
    cells = {}
    for name, method in methods.items():
        for b, cal in calibrations[name].items():
            key = f"{name}@{b}" if method.has_strength else name
            if key not in cells:
                cells[key] = (method.at(cal["strength"]) if method.has_strength else method.at(None), cal)
    return cells


def run_ab_task(
    model: HookedTransformer,
    methods: Mapping[str, Method],
    calibrations: Mapping[str, Mapping[float, Mapping[str, Any]]],
    test_items: Sequence[ABItem],
    n_resamples: int = 1000,
    mmlu: Sequence[ABItem] | None = None,
) -> dict[str, Any]:
    """p(matching) on held-out A/B items (steered from the answer position, CAA's protocol) per cell.

    All cells are scored together (:func:`steered_ab_scores`); MMLU accuracy, if given, likewise.
    """
    plan = cell_steerings(methods, calibrations)
    steerings = {"unsteered": Steering(), **{k: v[0] for k, v in plan.items()}}
    scores = steered_ab_scores(model, test_items, steerings, outside_ab="zero")
    correct = steered_ab_scores(model, mmlu, steerings) if mmlu else {}
    cells = {}
    for key in steerings:
        cell = {"p_matching": interval([x.p_matching for x in scores[key]], n_resamples)}
        if mmlu:
            cell["mmlu"] = interval([float(x.p_matching > 0.5) for x in correct[key]], n_resamples)
        if key in plan:
            cal = plan[key][1]
            cell.update(
                strength=cal["strength"], kl_mean=cal["kl_mean"], kl_p95=cal["kl_p95"], reached=cal["reached"]
            )
            if mmlu:
                cell["mmlu_change"] = cell["mmlu"]["value"] - cells["unsteered"]["mmlu"]["value"]
        cells[key] = cell
    return {"cells": cells}
