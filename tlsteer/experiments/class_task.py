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

from tlsteer.data import ABItem, chat_prompt
from tlsteer.decode import generate_tokens
from tlsteer.eval.prefix_generation import (
    RowGroup,
    generate_from_cache,
    perplexities_from_cache,
    prompt_cache,
)
from tlsteer.experiments.ab_task import steered_ab_scores
from tlsteer.experiments.cells import UNSTEERED, Cell, CellKey, Interval, cell_steerings, interval
from tlsteer.experiments.methods import Method
from tlsteer.positions import Positions
from tlsteer.steering import Steering
from tlsteer.tokens import decode_tokens, tokenize_prompts

__all__ = ["run_class_task"]


def _generate_prefixed(
    model: HookedTransformer,
    steering: Steering,
    prompts: Sequence[str],
    rows: Sequence[tuple[int, int]],
    max_new_tokens: int,
    temperature: float,
    batch_size: int,
) -> list[list[int]]:
    """Rows ``(prompt index, seed)`` generated with the steering's instruction before each prompt."""
    out = generate_tokens(
        model,
        [prompts[p] for p, _ in rows],
        steering.at(Positions.last()),
        max_new_tokens=max_new_tokens,
        do_sample=True,
        temperature=temperature,
        seed=[s for _, s in rows],
        chat=True,
        batch_size=batch_size,
    )
    return [list(n) for n in out.new_tokens]


def run_class_task(
    model: HookedTransformer,
    judge: Any,
    methods: Mapping[str, Mapping[str, Method]],
    calibrations: Mapping[str, Mapping[str, Mapping[float, Mapping[str, Any]]]],
    prompts: Mapping[str, Sequence[str]],
    *,
    seeds: Sequence[int] = (0, 1, 2),
    max_new_tokens: int = 24,
    batch_size: int = 32,
    temperature: float = 0.7,
    n_resamples: int = 1000,
    mmlu: Sequence[ABItem] | None = None,
    max_rows: int = 128,
) -> tuple[dict[CellKey, Cell], dict[CellKey, dict[str, tuple[str, ...]]]]:
    """Score every method at every calibrated budget on a class set (see the module docstring).

    Returns ``(cells, examples)``: a :class:`~tlsteer.experiments.cells.Cell` per
    ``(method, budget)`` (``("unsteered", None)`` first; prompting under ``(method, None)``), and
    per steered cell the first two generations toward each target.

    The test prompts' unsteered prefix (all but the last token) runs once into a KV cache; each
    cell then generates every target's rows together from it, each target's block steered by its
    own method (:mod:`tlsteer.eval.prefix_generation`), and perplexity is read from the same
    cache. Prompting (an instruction before the prompt) generates from scratch.

    Args:
        model: The steered model.
        judge: A K-class judge (:class:`~tlsteer.eval.ClassJudge`) over the targets.
        methods: ``{target: {method name: Method}}``.
        calibrations: ``{target: {method name: calibrate_method(...)}}``.
        prompts: ``{target: test prompts}`` (user messages; each generated once per seed).
        batch_size: Rows per batch of the prompting cells.
        mmlu: A/B items scored under each target's steering (split evenly across targets).
        max_rows: Rows per forward pass of the cached generation.
    """
    classes = list(judge.classes)
    targets = list(methods)
    unknown = [t for t in targets if t not in classes]
    if unknown:
        raise ValueError(f"target {unknown[0]!r} is not a class of the judge {classes}")
    eye = np.eye(len(classes))

    def judged(texts: list[str]) -> np.ndarray:
        return eye[[classes.index(c) for c in judge.predict(texts)]]

    plans = {t: cell_steerings(methods[t], calibrations[t]) for t in targets}
    keys = list(plans[targets[0]])
    pool = [p for t in targets for p in prompts[t]]
    ids = tokenize_prompts(model, [chat_prompt(model, p) for p in pool])
    cache = prompt_cache(model, ids)
    first = np.cumsum([0] + [len(prompts[t]) for t in targets])
    rows = {
        t: [(int(first[i]) + j, s) for s in seeds for j in range(len(prompts[t]))]
        for i, t in enumerate(targets)
    }

    def generations(steerings: Mapping[str, Steering]) -> dict[str, Any]:
        by_target = {}
        if not any(st.prefix for st in steerings.values()):
            groups = [
                RowGroup(
                    tuple(int(p) for p, _ in rows[t]),
                    tuple(s for _, s in rows[t]),
                    steerings[t].at(Positions.last()),
                )
                for t in targets
            ]
            new = dict(
                zip(
                    targets,
                    generate_from_cache(
                        model,
                        cache,
                        groups,
                        max_new_tokens=max_new_tokens,
                        temperature=temperature,
                        max_rows=max_rows,
                    ),
                    strict=True,
                )
            )
        else:
            new = {
                t: _generate_prefixed(
                    model, steerings[t], pool, rows[t], max_new_tokens, temperature, batch_size
                )
                for t in targets
            }
        for t in targets:
            where = [int(p) for p, _ in rows[t]]
            texts = [decode_tokens(model, n, skip_special_tokens=True) for n in new[t]]
            ppl = perplexities_from_cache(model, cache, where, new[t], max_rows=max_rows)
            by_target[t] = {"labels": judged(texts), "ppl": ppl, "texts": texts}
        return by_target

    mmlu_parts = {t: list(mmlu[i :: len(targets)]) for i, t in enumerate(targets)} if mmlu else {}
    correct: dict[CellKey, Any] = {UNSTEERED: [], **{k: [] for k in keys}}
    for t, part in mmlu_parts.items():
        if not part:
            continue
        scored = steered_ab_scores(model, part, {UNSTEERED: Steering(), **{k: plans[t][k][0] for k in keys}})
        for k, scores in scored.items():
            correct[k].extend(float(x.p_matching > 0.5) for x in scores)
    correct = {k: np.asarray(v) for k, v in correct.items()}
    base = generations({t: Steering() for t in targets})
    cells = {
        UNSTEERED: Cell(
            *UNSTEERED,
            **_summary(
                base,
                {t: {"labels": base[t]["labels"]} for t in targets},
                classes,
                correct[UNSTEERED],
                correct[UNSTEERED],
                n_resamples,
            ),
        )
    }
    examples: dict[CellKey, dict[str, tuple[str, ...]]] = {}
    for key in keys:
        steered = generations({t: plans[t][key][0] for t in targets})
        kls = [plans[t][key][1] for t in targets]
        examples[key] = {t: tuple(steered[t]["texts"][:2]) for t in targets}
        cells[key] = Cell(
            *key,
            **_summary(steered, base, classes, correct[key], correct[UNSTEERED], n_resamples),
            kl_mean=float(np.mean([c["kl_mean"] for c in kls])),
            kl_p95=float(np.mean([c["kl_p95"] for c in kls])),
            strength=tuple(None if c["strength"] is None else float(c["strength"]) for c in kls),
            reached=all(bool(c["reached"]) for c in kls),
        )
    return cells, examples


def _summary(
    steered: Mapping,
    base: Mapping,
    classes: list[str],
    mmlu: np.ndarray,
    base_mmlu: np.ndarray,
    n_resamples: int,
) -> dict[str, Any]:
    """A cell's measures (the :class:`~tlsteer.experiments.cells.Cell` fields but its calibration)."""
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
    out: dict[str, Any] = {
        "success": interval(success, n_resamples),
        "selectivity": interval(table, n_resamples, selectivity),
        "transfer": matrix,
        "n_generations": len(success),
    }
    if ppl:  # the geometric mean and its interval: the interval of the mean log, exponentiated
        log_ppl = interval(np.log(np.asarray(ppl)), n_resamples)
        out["perplexity"] = Interval(
            float(np.exp(log_ppl.value)), float(np.exp(log_ppl.low)), float(np.exp(log_ppl.high))
        )
    if len(mmlu):
        out["mmlu"] = interval(mmlu, n_resamples)
        out["mmlu_change"] = float(mmlu.mean() - base_mmlu.mean())
    return out
