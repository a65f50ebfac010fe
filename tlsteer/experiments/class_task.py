"""A class set's cells in the feature-vs-CAA comparison: steered generations, the judge, side effects.

For each target class, every method at its calibrated strength steers generations from the test
prompts (sampled; every target on every prompt, so methods are compared on the same units)
toward it; the K-class judge labels each, and a text it calls degenerate counts as a failure.
Success is the share judged as the target (each unit's outcome kept for the paired verdict), the
transfer matrix holds where generations land, selectivity is the target's gain over unsteered
minus the largest gain of another class (mean over targets); fluency is the perplexity of each
generation under the unsteered model; MMLU accuracy (items split across the targets) is a side
effect. Every rate comes with a 95% bootstrap interval. The cells are independent items of an
executor (:mod:`tlsteer.experiments.executor`): in process by default, or spread over Ray workers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
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
from tlsteer.experiments.executor import Executor, InProcess
from tlsteer.experiments.methods import Method, method_family
from tlsteer.positions import Positions
from tlsteer.steering import Steering
from tlsteer.tokens import decode_tokens, tokenize_prompts

__all__ = ["ClassCells", "ClassCellsSetup", "run_class_task"]


def _generate_rows(
    model: HookedTransformer,
    steering: Steering,
    prompts: Sequence[str],
    rows: Sequence[tuple[int, int]],
    max_new_tokens: int,
    temperature: float,
    batch_size: int,
) -> list[list[int]]:
    """Rows ``(prompt index, seed)`` generated under ``steering``: its edits from the last prompt token
    on, its instruction (if any) before the prompt inside the user turn."""
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


def _one_hot(labels: Sequence[str], classes: list[str]) -> np.ndarray:
    """One-hot class labels ``[n, K]``; a label that is not a class (the judge's degenerate-text
    outcome, ``"other"``) gets an all-zero row."""
    eye, zero = np.eye(len(classes)), np.zeros(len(classes))
    return np.array([eye[classes.index(c)] if c in classes else zero for c in labels]).reshape(
        len(labels), len(classes)
    )


def _family_plans(
    methods: Mapping[str, Method], calibrations: Mapping[str, Mapping[float, Mapping[str, Any]]]
) -> dict[CellKey, list[tuple[Steering, Mapping[str, Any]]]]:
    """``{(family, budget): [(steering, calibration) per draw]}``: the draws of a family
    (``random.0``, ``random.1``, ...) share one cell; any other method is its own family."""
    out: dict[CellKey, list[tuple[Steering, Mapping[str, Any]]]] = {}
    for (name, budget), value in cell_steerings(methods, calibrations).items():
        out.setdefault((method_family(name)[0], budget), []).append(value)
    return out


@dataclass
class ClassCells:
    """What scoring a class set's cells needs, built once per worker: the model, the judge, the test
    prompts' KV cache and the rows (:meth:`generate` scores one cell's steerings)."""

    model: HookedTransformer
    judge: Any
    pool: list[str]
    own: dict[str, list[int]]
    seeds: list[int]
    max_new_tokens: int
    temperature: float
    batch_size: int
    max_rows: int
    targets: list[str] = field(init=False)
    classes: list[str] = field(init=False)
    rows: dict[str, list[tuple[int, int]]] = field(init=False)
    cache: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.targets = list(self.own)
        self.classes = list(self.judge.classes)
        self.rows = {t: [(p, s) for p in self.own[t] for s in self.seeds] for t in self.targets}
        ids = tokenize_prompts(self.model, [chat_prompt(self.model, p) for p in self.pool])
        self.cache = prompt_cache(self.model, ids)

    def generate(self, steerings: Mapping[str, Sequence[Steering]]) -> dict[str, Any]:
        """Each target's rows; row ``(p, s)`` steered by draw ``p % len(steerings[t])``.

        Steerings without an instruction start from the test prompts' unsteered KV cache (every
        position before the last prompt token is the same steered or not) and run together, one
        block of rows per (target, draw) (:func:`~tlsteer.eval.prefix_generation.generate_from_cache`,
        on the fast decoding path where the model has one); an instruction changes the prompt, so
        those rows are generated whole by :func:`~tlsteer.generate_tokens`. Each row is seeded by
        its seed, so it is the same in any batch. The unsteered rows are the same for every
        target that shares the prompts and are generated once.
        """
        shared = all(self.own[t] == self.own[self.targets[0]] for t in self.targets)
        if shared and all(st.is_unsteered for sts in steerings.values() for st in sts):
            first = self.targets[0]
            (once,) = self._from_cache([RowGroup(*self._columns(self.rows[first]), Steering())])
            scored = self._score(first, once)
            return {t: scored for t in self.targets}  # the same rows, texts and labels for every target
        new = {t: [[] for _ in self.rows[t]] for t in self.targets}
        groups, where = [], []
        for t in self.targets:
            draws = steerings[t]
            for j, st in enumerate(draws):
                mine = [k for k, (p, _) in enumerate(self.rows[t]) if p % len(draws) == j]
                if not mine:
                    continue
                rows = [self.rows[t][k] for k in mine]
                if st.prefix:
                    out = _generate_rows(
                        self.model,
                        st,
                        self.pool,
                        rows,
                        self.max_new_tokens,
                        self.temperature,
                        self.batch_size,
                    )
                    for k, tokens in zip(mine, out, strict=True):
                        new[t][k] = tokens
                else:
                    groups.append(RowGroup(*self._columns(rows), st.at(Positions.last())))
                    where.append((t, mine))
        if groups:
            for (t, mine), out in zip(where, self._from_cache(groups), strict=True):
                for k, tokens in zip(mine, out, strict=True):
                    new[t][k] = tokens
        return {t: self._score(t, new[t]) for t in self.targets}

    @staticmethod
    def _columns(rows: Sequence[tuple[int, int]]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return tuple(p for p, _ in rows), tuple(s for _, s in rows)

    def _from_cache(self, groups: list[RowGroup]) -> list[list[list[int]]]:
        return generate_from_cache(
            self.model,
            self.cache,
            groups,
            max_new_tokens=self.max_new_tokens,
            do_sample=True,
            temperature=self.temperature,
            max_rows=self.batch_size,
        )

    def _score(self, target: str, new: list[list[int]]) -> dict[str, Any]:
        """A target's generations: texts, one-hot labels (judged once), fluency, perplexity."""
        where = [int(p) for p, _ in self.rows[target]]
        texts = [decode_tokens(self.model, n, skip_special_tokens=True) for n in new]
        labels = list(self.judge.predict(texts)) if texts else []
        return {
            "labels": _one_hot(labels, self.classes),
            "ppl": perplexities_from_cache(self.model, self.cache, where, new, max_rows=self.max_rows),
            "texts": texts,
            "fluent": np.array([label in self.classes for label in labels], dtype=bool),
        }


@dataclass(frozen=True)
class ClassCellsSetup:
    """A picklable recipe for :class:`ClassCells`, run once in each worker of an executor.

    ``model_loader`` and ``judge_loader`` are zero-argument callables (module-level functions or
    ``functools.partial`` of them: ``partial(tlsteer.load_model)``, ``partial(class_judge,
    dataset)``), so a worker builds its own model and judge instead of receiving them.
    """

    model_loader: Callable[[], HookedTransformer]
    judge_loader: Callable[[], Any]
    pool: tuple[str, ...]
    own: tuple[tuple[str, tuple[int, ...]], ...]
    seeds: tuple[int, ...]
    max_new_tokens: int
    temperature: float
    batch_size: int
    max_rows: int

    def __call__(self) -> ClassCells:
        with torch.no_grad():
            return ClassCells(
                self.model_loader(),
                self.judge_loader(),
                list(self.pool),
                {t: list(ps) for t, ps in self.own},
                list(self.seeds),
                self.max_new_tokens,
                self.temperature,
                self.batch_size,
                self.max_rows,
            )


@dataclass(frozen=True)
class _Built:
    """The in-process setup: the context is already built (nothing is pickled)."""

    context: ClassCells

    def __call__(self) -> ClassCells:
        return self.context


def _score_cell(
    context: ClassCells, item: tuple[CellKey, Mapping[str, Sequence[Steering]]]
) -> dict[str, Any]:
    with torch.no_grad():
        return context.generate(item[1])


def run_class_task(
    model: HookedTransformer,
    judge: Any,
    methods: Mapping[str, Mapping[str, Method]],
    calibrations: Mapping[str, Mapping[str, Mapping[float, Mapping[str, Any]]]],
    prompts: Any,
    *,
    seeds: Sequence[int] = (0,),
    max_new_tokens: int = 24,
    batch_size: int = 32,
    temperature: float = 0.7,
    n_resamples: int = 1000,
    mmlu: Sequence[ABItem] | None = None,
    max_rows: int = 128,
    executor: Executor | None = None,
    setup: ClassCellsSetup | None = None,
) -> tuple[dict[CellKey, Cell], dict[CellKey, dict[str, tuple[str, ...]]], tuple[tuple[str, int], ...]]:
    """Score every method at every calibrated budget on a class set (see the module docstring).

    Returns ``(cells, examples, units)``: a :class:`~tlsteer.experiments.cells.Cell` per
    ``(method, budget)`` (``("unsteered", None)`` first; prompting under ``(method, None)``), per
    steered cell the first two generations toward each target, and the scored units
    ``(target, prompt index)``, in the order of every cell's ``outcomes`` (a unit's outcome is
    its success averaged over the seeds).

    The paired design: ``prompts`` a list, every target is steered toward on every prompt, so
    each method is compared with another on the same (target, prompt) units. A mapping
    ``{target: prompts}`` gives each target its own prompts instead (units are then
    ``(target, index in the concatenated prompts)``).

    Random draws (methods ``random.0``, ``random.1``, ... from ``build_methods(n_random=...)``)
    make one cell ``("random", budget)``: prompt ``i`` is steered by draw ``i % n_draws``, each
    draw at its own calibrated strength, so the cell measures a distribution of directions.

    Each cell generates every target's rows with :func:`~tlsteer.generate_tokens` (batched, each
    row seeded by its seed, steered from its last prompt token on; prompting puts its instruction
    inside the user turn); the perplexity of each generation under the unsteered model is read
    from one KV cache of the test prompts (:mod:`tlsteer.eval.prefix_generation`).

    Args:
        model: The steered model.
        judge: A K-class judge (:class:`~tlsteer.eval.ClassJudge`) over the targets; a label that
            is not a class (its degenerate-text outcome) counts as a failure, and
            ``success_fluent`` is the success among the other generations.
        methods: ``{target: {method name: Method}}``.
        calibrations: ``{target: {method name: calibrate_method(...)}}``.
        prompts: Test prompts (user messages), shared by the targets, or ``{target: prompts}``.
        seeds: One sampled generation per prompt, target and seed.
        batch_size: Rows per batch of generation.
        mmlu: A/B items scored under each target's steering (split evenly across targets).
        max_rows: Rows per forward pass of the perplexity.
        executor: Where the cells are generated and judged
            (:mod:`tlsteer.experiments.executor`; default: in this process). Each cell is one
            item; the results do not depend on the executor.
        setup: For an executor whose workers are other processes (Ray), the recipe that builds
            the model, the judge and the prompt cache in each worker (:class:`ClassCellsSetup`,
            made with the same prompts, seeds and settings); default: the objects given here.
    """
    classes = list(judge.classes)
    targets = list(methods)
    unknown = [t for t in targets if t not in classes]
    if unknown:
        raise ValueError(f"target {unknown[0]!r} is not a class of the judge {classes}")
    if isinstance(prompts, Mapping):
        pool = [p for t in targets for p in prompts[t]]
        first = np.cumsum([0] + [len(prompts[t]) for t in targets])
        own = {t: list(range(int(first[i]), int(first[i + 1]))) for i, t in enumerate(targets)}
    else:
        if isinstance(prompts, str) or not prompts:
            raise ValueError(
                "prompts must be a non-empty list of user messages or {target: prompts}, got "
                f"{prompts!r:.80}"
            )
        pool = list(prompts)
        own = {t: list(range(len(pool))) for t in targets}
    seeds = [int(s) for s in seeds]
    plans = {t: _family_plans(methods[t], calibrations[t]) for t in targets}
    keys = list(plans[targets[0]])
    units = tuple((t, p) for t in targets for p in own[t])
    recipe: Callable[[], ClassCells] = setup or _Built(
        ClassCells(model, judge, pool, own, seeds, max_new_tokens, temperature, batch_size, max_rows)
    )
    items = [(UNSTEERED, {t: [Steering()] for t in targets})] + [
        (key, {t: [st for st, _ in plans[t][key]] for t in targets}) for key in keys
    ]
    scored = (executor or InProcess()).map(_score_cell, items, setup=recipe)
    by_key = {key: out for (key, _), out in zip(items, scored, strict=True)}

    mmlu_parts = {t: list(mmlu[i :: len(targets)]) for i, t in enumerate(targets)} if mmlu else {}
    correct: dict[CellKey, Any] = {UNSTEERED: [], **{k: [] for k in keys}}
    for t, part in mmlu_parts.items():
        if not part:
            continue
        scored = steered_ab_scores(
            model, part, {UNSTEERED: Steering(), **{k: plans[t][k][0][0] for k in keys}}
        )
        for k, scores in scored.items():
            correct[k].extend(float(x.p_matching > 0.5) for x in scores)
    correct = {k: np.asarray(v) for k, v in correct.items()}
    n_seeds = len(seeds)
    base = by_key[UNSTEERED]
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
                n_seeds,
            ),
        )
    }
    examples: dict[CellKey, dict[str, tuple[str, ...]]] = {}
    for key in keys:
        steered = by_key[key]
        kls = [cal for t in targets for _, cal in plans[t][key]]
        examples[key] = {t: tuple(steered[t]["texts"][:2]) for t in targets}
        cosines = [
            float(c)
            for t in targets
            for name, m in methods[t].items()
            if method_family(name)[0] == key[0] and (c := m.cosine) is not None
        ]
        strengths = []
        for t in targets:
            values = [cal["strength"] for _, cal in plans[t][key]]
            strengths.append(None if values[0] is None else float(np.mean(values)))
        cells[key] = Cell(
            *key,
            **_summary(steered, base, classes, correct[key], correct[UNSTEERED], n_resamples, n_seeds),
            kl_mean=float(np.mean([c["kl_mean"] for c in kls])),
            kl_p95=float(np.mean([c["kl_p95"] for c in kls])),
            strength=tuple(strengths),
            reached=all(bool(c["reached"]) for c in kls),
            cosine=float(np.mean(cosines)) if cosines else None,
        )
    return cells, examples, units


def _summary(
    steered: Mapping,
    base: Mapping,
    classes: list[str],
    mmlu: np.ndarray,
    base_mmlu: np.ndarray,
    n_resamples: int,
    n_seeds: int = 1,
) -> dict[str, Any]:
    """A cell's measures (the :class:`~tlsteer.experiments.cells.Cell` fields but its calibration).

    Each target's rows are ``n_seeds`` consecutive generations per unit; a unit's outcome is
    their mean success.
    """
    k = len(classes)
    rows, success, ppl, fluent_success, outcomes = [], [], [], [], []
    for t, data in steered.items():
        j = classes.index(t)
        labels, before = data["labels"], base[t]["labels"]
        success.extend(labels[:, j])
        outcomes.extend(labels[:, j].reshape(-1, n_seeds).mean(1))
        if "fluent" in data:
            fluent_success.extend(labels[data["fluent"].astype(bool), j])
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
    matrix = {}
    for t, data in steered.items():
        shares = data["labels"].mean(0)
        matrix[t] = dict(zip(classes, shares.round(4).tolist(), strict=True))
        if "fluent" in data and not data["fluent"].all():
            matrix[t]["other"] = round(float(1 - shares.sum()), 4)
    out: dict[str, Any] = {
        "success": interval(success, n_resamples),
        "selectivity": interval(table, n_resamples, selectivity),
        "transfer": matrix,
        "n_generations": len(success),
        "outcomes": tuple(float(v) for v in outcomes),
    }
    if fluent_success:
        out["success_fluent"] = interval(fluent_success, n_resamples)
    if ppl:  # the geometric mean and its interval: the interval of the mean log, exponentiated
        log_ppl = interval(np.log(np.asarray(ppl)), n_resamples)
        out["perplexity"] = Interval(
            float(np.exp(log_ppl.value)), float(np.exp(log_ppl.low)), float(np.exp(log_ppl.high))
        )
    if len(mmlu):
        out["mmlu"] = interval(mmlu, n_resamples)
        out["mmlu_change"] = float(mmlu.mean() - base_mmlu.mean())
    return out
