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
from tlsteer.decode import generate_tokens
from tlsteer.eval.ab import ab_eval
from tlsteer.eval.budget import bootstrap_ci, calibrate_to_kl, kl_stats
from tlsteer.reading import plan_reads, read_all
from tlsteer.sae.adapter import SAELike, sae_dims
from tlsteer.sae.methods import ContrastReps, Method, Steering
from tlsteer.tokens import right_pad, tokenize

__all__ = [
    "calibrate_method",
    "contrast_from_pairs",
    "contrast_from_profile",
    "perplexities",
    "run_ab_task",
    "run_class_task",
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

    Evaluations are shared between budgets. Prompting has no strength: its KL is measured once
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
    out = {}
    for b in budgets:
        cal = calibrate_to_kl(lambda s: stats_at(s).mean, b, high=high)
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


def _ci(values: Any, n_resamples: int, statistic: Any = np.mean) -> dict[str, float]:
    est, low, high = bootstrap_ci(
        np.asarray(values, dtype=float), n_resamples=n_resamples, statistic=statistic
    )
    return {"value": float(est), "low": float(low), "high": float(high)}


def _instructed(instruction: str | None, prompt: str) -> str:
    return prompt if instruction is None else f"{instruction}\n\n{prompt}"


def _generate(
    model: HookedTransformer,
    steering: Steering,
    prompts: Sequence[str],
    seeds: Sequence[int],
    max_new_tokens: int,
    batch_size: int,
    temperature: float,
) -> tuple[list[str], list[list[int]], list[list[int]]]:
    rows = [(p, s) for s in seeds for p in prompts]
    texts = [_instructed(steering.prefix, p) for p, _ in rows]
    out = generate_tokens(
        model,
        texts,
        list(steering.vectors),
        edits=list(steering.edits),
        max_new_tokens=max_new_tokens,
        do_sample=True,
        temperature=temperature,
        seed=[s for _, s in rows],
        chat=True,
        last_token_only=True,
        batch_size=batch_size,
    )
    plain = [
        tokenize(
            model,
            model.tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
            ),
        )
        for p, _ in rows
    ]
    return list(out.texts), plain, [list(n) for n in out.new_tokens]


def run_class_task(
    model: HookedTransformer,
    judge: Any,
    methods: Mapping[str, Mapping[str, Method]],
    calibrations: Mapping[str, Mapping[str, Mapping[float, Mapping[str, Any]]]],
    prompts: Mapping[str, Sequence[str]],
    seeds: Sequence[int] = (0, 1, 2),
    max_new_tokens: int = 24,
    batch_size: int = 32,
    temperature: float = 0.7,
    n_resamples: int = 1000,
    mmlu: Sequence[ABItem] | None = None,
) -> dict[str, Any]:
    """Score every method at every calibrated budget on a class set (see the module docstring).

    Args:
        model: The steered model.
        judge: A K-class judge (:class:`~tlsteer.eval.ClassJudge`) over the targets.
        methods: ``{target: {method name: Method}}``.
        calibrations: ``{target: {method name: calibrate_method(...)}}``.
        prompts: ``{target: test prompts}`` (user messages; each generated once per seed).
        mmlu: A/B items scored under each target's steering (split evenly across targets).
    """
    classes = list(judge.classes)
    targets = list(methods)
    unknown = [t for t in targets if t not in classes]
    if unknown:
        raise ValueError(f"target {unknown[0]!r} is not a class of the judge {classes}")
    eye = np.eye(len(classes))

    def judged(texts: list[str]) -> np.ndarray:
        return eye[[classes.index(c) for c in judge.predict(texts)]]

    base = {}
    for t in targets:
        texts, plain, new = _generate(
            model, Steering(), prompts[t], seeds, max_new_tokens, batch_size, temperature
        )
        base[t] = {"labels": judged(texts), "ppl": perplexities(model, plain, new)}
    mmlu_parts = {t: list(mmlu[i :: len(targets)]) for i, t in enumerate(targets)} if mmlu else {}
    base_mmlu = _mmlu_correct(model, Steering(), mmlu_parts)
    names = list(next(iter(methods.values())))
    budgets = list(next(iter(next(iter(calibrations.values())).values())))
    cells: dict[str, Any] = {
        "unsteered": _summary(
            base,
            {t: {"labels": base[t]["labels"]} for t in targets},
            classes,
            base_mmlu,
            base_mmlu,
            n_resamples,
        )
    }
    examples: dict[str, Any] = {}
    for name in names:
        for b in budgets if methods[targets[0]][name].has_strength else budgets[:1]:
            steered, kls = {}, []
            for t in targets:
                cal = calibrations[t][name][b]
                steering = (
                    methods[t][name].at(cal["strength"])
                    if cal["strength"] is not None
                    else methods[t][name].at(None)
                )
                texts, plain, new = _generate(
                    model, steering, prompts[t], seeds, max_new_tokens, batch_size, temperature
                )
                steered[t] = {"labels": judged(texts), "ppl": perplexities(model, plain, new)}
                kls.append(cal)
                examples.setdefault(f"{name}@{b}", {})[t] = texts[:2]
            mmlu_steered = _mmlu_correct(
                model, None, mmlu_parts, {t: (methods[t][name], calibrations[t][name][b]) for t in targets}
            )
            key = name if not methods[targets[0]][name].has_strength else f"{name}@{b}"
            summary = _summary(steered, base, classes, mmlu_steered, base_mmlu, n_resamples)
            summary["kl_mean"] = float(np.mean([c["kl_mean"] for c in kls]))
            summary["kl_p95"] = float(np.mean([c["kl_p95"] for c in kls]))
            summary["strength"] = [c["strength"] for c in kls]
            summary["reached"] = all(c["reached"] for c in kls)
            cells[key] = summary
    return {"classes": classes, "targets": targets, "cells": cells, "examples": examples}


def _mmlu_correct(
    model: HookedTransformer, steering: Steering | None, parts: Mapping[str, list], by_target: Any = None
) -> np.ndarray:
    """1/0 per MMLU item (p(correct) > p(incorrect)) under each target's steering at its strength."""
    out = []
    for t, items in parts.items():
        if not items:
            continue
        s = steering
        if by_target is not None:
            method, cal = by_target[t]
            s = method.at(cal["strength"]) if method.has_strength else method.at(None)
        if s.prefix is not None:
            items = [ABItem(_instructed(s.prefix, i.question), i.matching, i.not_matching) for i in items]
        result = ab_eval(model, items, list(s.vectors), edits=list(s.edits))
        out.extend(float(x.p_matching > 0.5) for x in result.scores)
    return np.asarray(out)


def _summary(
    steered: Mapping,
    base: Mapping,
    classes: list[str],
    mmlu: np.ndarray,
    base_mmlu: np.ndarray,
    n_resamples: int,
) -> dict[str, Any]:
    k = len(classes)
    rows, success, ppl = [], [], []
    for t, data in steered.items():
        j = classes.index(t)
        labels, before = data["labels"], base[t]["labels"]
        success.extend(labels[:, j])
        rows.append(np.concatenate([labels, before, np.tile(np.eye(k)[j], (len(labels), 1))], axis=1))
        if "ppl" in data:
            ppl.extend(data["ppl"])

    def selectivity(table: np.ndarray) -> float:
        values = []
        for j in range(k):
            mine = table[table[:, 2 * k + j] == 1]
            if len(mine) == 0:
                continue
            gain = mine[:, :k].mean(0) - mine[:, k : 2 * k].mean(0)
            values.append(gain[j] - np.delete(gain, j).max())
        return float(np.mean(values))

    table = np.concatenate(rows)
    matrix = {
        t: dict(zip(classes, data["labels"].mean(0).round(4).tolist(), strict=True))
        for t, data in steered.items()
    }
    out = {
        "success": _ci(success, n_resamples),
        "selectivity": _ci(table, n_resamples, selectivity),
        "transfer": matrix,
        "n_generations": len(success),
    }
    if ppl:
        out["perplexity"] = _ci(np.log(np.asarray(ppl)), n_resamples)
        out["perplexity"] = {key: float(np.exp(v)) for key, v in out["perplexity"].items()}
    if len(mmlu):
        out["mmlu"] = _ci(mmlu, n_resamples)
        out["mmlu_change"] = float(mmlu.mean() - base_mmlu.mean())
    return out


def run_ab_task(
    model: HookedTransformer,
    methods: Mapping[str, Method],
    calibrations: Mapping[str, Mapping[float, Mapping[str, Any]]],
    test_items: Sequence[ABItem],
    n_resamples: int = 1000,
    mmlu: Sequence[ABItem] | None = None,
) -> dict[str, Any]:
    """p(matching) on held-out A/B items (steered from the answer position, CAA's protocol) per cell."""

    def score(steering: Steering) -> dict[str, Any]:
        items = list(test_items)
        if steering.prefix is not None:
            items = [
                ABItem(_instructed(steering.prefix, i.question), i.matching, i.not_matching) for i in items
            ]
        result = ab_eval(model, items, list(steering.vectors), edits=list(steering.edits), outside_ab="zero")
        out = {"p_matching": _ci([x.p_matching for x in result.scores], n_resamples)}
        if mmlu:
            correct = _mmlu_correct(model, steering, {"all": list(mmlu)})
            out["mmlu"] = _ci(correct, n_resamples)
        return out

    cells = {"unsteered": score(Steering())}
    for name, method in methods.items():
        for b, cal in calibrations[name].items():
            key = f"{name}@{b}" if method.has_strength else name
            if key in cells:
                continue
            steering = method.at(cal["strength"]) if method.has_strength else method.at(None)
            cells[key] = {
                **score(steering),
                "strength": cal["strength"],
                "kl_mean": cal["kl_mean"],
                "kl_p95": cal["kl_p95"],
                "reached": cal["reached"],
            }
            if "mmlu" in cells[key] and "mmlu" in cells["unsteered"]:
                cells[key]["mmlu_change"] = cells[key]["mmlu"]["value"] - cells["unsteered"]["mmlu"]["value"]
    return {"cells": cells}
