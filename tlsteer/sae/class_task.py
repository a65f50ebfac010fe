"""A class set's cells in the feature-vs-CAA comparison: steered generations, the judge, side effects.

For each target class, every method at its calibrated strength steers generations from open prompts
(sampled, several seeds) toward it; the K-class judge labels each. Success is the share judged as
the target, the transfer matrix holds where generations land, selectivity is the target's gain over
unsteered minus the largest gain of another class (mean over targets); fluency is the perplexity of
each generation under the unsteered model; MMLU accuracy (items split across the targets) is a side
effect. Every rate comes with a 95% bootstrap interval.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from transformer_lens import HookedTransformer

from tlsteer.data import ABItem
from tlsteer.decode import generate_tokens
from tlsteer.eval.ab import ab_eval
from tlsteer.sae.compare import instructed, interval, perplexities
from tlsteer.sae.methods import Method, Steering
from tlsteer.tokens import tokenize

__all__ = ["run_class_task"]


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
    texts = [instructed(steering.prefix, p) for p, _ in rows]
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
            items = [ABItem(instructed(s.prefix, i.question), i.matching, i.not_matching) for i in items]
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
        "success": interval(success, n_resamples),
        "selectivity": interval(table, n_resamples, selectivity),
        "transfer": matrix,
        "n_generations": len(success),
    }
    if ppl:
        out["perplexity"] = interval(np.log(np.asarray(ppl)), n_resamples)
        out["perplexity"] = {key: float(np.exp(v)) for key, v in out["perplexity"].items()}
    if len(mmlu):
        out["mmlu"] = interval(mmlu, n_resamples)
        out["mmlu_change"] = float(mmlu.mean() - base_mmlu.mean())
    return out
