"""An analogy domain as a dataset of the feature-vs-CAA comparison.

The contrast of a relation (:mod:`tlsteer.analogy`): for each training pair's x, the residual at
the last token of a few-shot prompt (``n_shots`` ``"a → b"`` demonstrations drawn from the other
training pairs, then ``"x →"``) against the same x's neutral prompt ``"x →"``, raw text with no
chat template (:func:`contrast_from_analogy`). Every method of :mod:`tlsteer.experiments.methods` is built
from it. Prompting puts an instruction (``tlsteer/datasets/instructions.json``, key
``"analogies"``) before the neutral prompt, as ``f"{instruction}\\n\\n{prompt}"``.

Scoring is on the whole answer, never its first token alone (a first-token score counts
``"twenty-one →"`` as solved whenever ``" twenty"`` comes next, whatever follows it). For each
held-out x, every candidate answer (:meth:`AnalogyTask.candidates`: every distinct y of the
domain, training pairs' included) is scored by its summed log-probability after x's neutral
prompt, all its tokens teacher-forced (:func:`answer_logprobs`), and the true answer is ranked
among them (:func:`analogy_ranks`; ties count in its favour). The steering acts as it would in
generation: at the prompt's last token and at every answer token after it. A cell
(:func:`run_analogy_task`) reports

- ``success``: top-``k`` accuracy among the candidates (the true answer within the ``k`` best);
  this is the rate the cells are compared on, and the one each ``outcomes`` entry records;
- ``top1``: rank-1 accuracy among the candidates (the true answer scored best of all);
  ``AnalogyTask(k=1)`` makes it the compared rate;

each with an exact binomial (Clopper-Pearson) 95% interval over the test pairs, so a cell with no
success has a real upper bound (about 0.21 for 16 pairs), not ``[0, 0]``.

Splits: the training split of :meth:`AnalogyDomain.split <tlsteer.analogy.AnalogyDomain.split>`
builds the methods (and supplies every demonstration); its validation and test splits together
are the test pairs (``n_test_pairs``: 16 of ``number_successor``'s 30, 20 of
``country_capital``'s 42). Nothing is chosen on them: strengths come from KL calibration on
neutral text (:func:`~tlsteer.experiments.cells.calibrate_method`), so there is nothing to
validate here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from tlsteer._types import check_batch_size, is_int
from tlsteer.analogy import AnalogyDomain, neutral_prompt, relation_contrast
from tlsteer.data import ContrastPair
from tlsteer.eval.bootstrap import clopper_pearson
from tlsteer.experiments.cells import UNSTEERED, Cell, CellKey, Interval, calibration_fields, cell_steerings
from tlsteer.experiments.contrasts import ContrastReps, contrast_from_pairs
from tlsteer.experiments.methods import Method
from tlsteer.positions import Positions
from tlsteer.steering import Steering
from tlsteer.tokens import model_tokenizer, pad_token_id, tokenize_prompts

__all__ = ["AnalogyTask", "analogy_ranks", "answer_logprobs", "contrast_from_analogy", "run_analogy_task"]


@dataclass(frozen=True)
class AnalogyTask:
    """One relation as a dataset: its domain, the few-shot contrast's settings, ``k`` of top-k.

    Args:
        domain: An :class:`~tlsteer.analogy.AnalogyDomain` (see :func:`~tlsteer.load_analogies`).
        n_shots: Demonstrations per few-shot prompt, drawn from the other training pairs (the
            training split must hold more than ``n_shots`` pairs).
        seed: Seeds the split (:meth:`AnalogyDomain.split`) and the choice of demonstrations.
        k: Success is the whole answer among the ``k`` best-scored candidates
            (:meth:`candidates`, by summed log-probability); ``k=1`` is rank-1 accuracy.
        instruction: The prompting baseline's instruction (``None``: no prompting cell).

    Example:
        >>> task = AnalogyTask(load_analogies()["number_successor"])  # doctest: +SKIP
        >>> task.name  # doctest: +SKIP
        'analogy_number_successor'
    """

    domain: Any
    n_shots: Any = 5
    seed: Any = 0
    k: Any = 5
    instruction: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.domain, AnalogyDomain):
            raise TypeError(
                f"domain must be an AnalogyDomain (see load_analogies), got {type(self.domain).__name__} "
                f"{self.domain!r}"
            )
        for name in ("n_shots", "k"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not is_int(self.seed):
            raise TypeError(f"seed must be an int, got {self.seed!r}")
        n_candidates = len(self.candidates())
        if self.k >= n_candidates:
            raise ValueError(
                f"{self.domain.name}: k={self.k} must be below the number of candidate answers "
                f"({n_candidates}), or every answer would count as a success"
            )
        train, _ = self.parts()
        if len(train) <= self.n_shots:
            raise ValueError(
                f"{self.domain.name}: n_shots={self.n_shots} needs more than {self.n_shots} training "
                f"pairs, the split has {len(train)}"
            )
        if self.instruction is not None and not (
            isinstance(self.instruction, str) and self.instruction.strip()
        ):
            raise ValueError(f"instruction must be a non-empty string or None, got {self.instruction!r}")

    @property
    def name(self) -> str:
        return f"analogy_{self.domain.name}"

    def parts(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """``(training pairs, test pairs)``: the domain's seeded split, validation and test together.

        The training pairs build the contrast (and are its only demonstrations); the test pairs
        are scored. No strength or setting is chosen on either: strengths come from calibration on
        neutral text.
        """
        train, val, test = self.domain.split(self.seed)
        return train, val + test

    def candidates(self) -> list[str]:
        """Every distinct answer of the domain, in the domain's order: what a test pair's answer
        is ranked among (training pairs' answers included, so a method cannot win by steering
        toward the test answers alone)."""
        return list(dict.fromkeys(y for _, y in self.domain.pairs))

    def contrast_prompts(self) -> list[tuple[str, str]]:
        """``(few-shot prompt, neutral prompt)`` of each training x; demonstrations are other
        training pairs (:func:`~tlsteer.analogy.relation_contrast`, seeded by ``seed``)."""
        train, _ = self.parts()
        return relation_contrast(train, self.n_shots, seed=self.seed, pool=train)


def _check_task(task: Any) -> AnalogyTask:
    if not isinstance(task, AnalogyTask):
        raise TypeError(f"task must be an AnalogyTask, got {type(task).__name__}")
    return task


def contrast_from_analogy(
    model: HookedTransformer, sae: object, task: Any, hook_name: str, batch_size: int = 8
) -> ContrastReps:
    """Paired reps at ``hook_name``: each training x's few-shot prompt (positive) against its
    neutral prompt (negative), read at the last token, raw and encoded by ``sae`` (an SAE or any
    :class:`~tlsteer.dictionary.FeatureDictionary`; ``paired=True``).

    Prompts are raw text (no chat template), read in left-padded batches
    (:func:`~tlsteer.experiments.contrasts.contrast_from_pairs`); row i of both sides is training pair i.
    """
    task = _check_task(task)
    pairs = [ContrastPair(few, plain, read_index=-1) for few, plain in task.contrast_prompts()]
    return contrast_from_pairs(model, sae, pairs, hook_name, batch_size=check_batch_size(batch_size))


def _answer_ids(model: HookedTransformer, y: str) -> list[int]:
    ids = list(model_tokenizer(model).encode(" " + y, add_special_tokens=False))
    if not ids:
        raise ValueError(f"answer {y!r} has no tokens")
    return ids


def _check_pairs(pairs: Any) -> list[tuple[str, str]]:
    if isinstance(pairs, str) or not isinstance(pairs, Sequence) or not pairs:
        raise ValueError(f"need a non-empty list of (x, y) pairs, got {pairs!r:.80}")
    bad = [
        p
        for p in pairs
        if not (isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(w, str) for w in p))
    ]
    if bad:
        raise ValueError(f"every pair must be a tuple (x, y) of two strings, got {bad[0]!r}")
    return [(x, y) for x, y in pairs]


def _check_candidates(candidates: Any) -> list[str]:
    if isinstance(candidates, str) or not isinstance(candidates, Sequence) or not candidates:
        raise ValueError(f"candidates must be a non-empty list of answers, got {candidates!r:.80}")
    bad = [c for c in candidates if not isinstance(c, str) or not c.strip()]
    if bad:
        raise ValueError(f"every candidate must be a non-empty string, got {bad[0]!r}")
    repeated = sorted({c for c in candidates if list(candidates).count(c) > 1})
    if repeated:
        raise ValueError(f"candidate {repeated[0]!r} appears more than once; candidates are distinct answers")
    return list(candidates)


def answer_logprobs(
    model: HookedTransformer,
    steering: Any,
    pairs: Any,
    candidates: Any,
    *,
    batch_size: Any = 64,
) -> Float[Tensor, "pair candidate"]:
    """The summed log-probability of each candidate answer after each pair's neutral prompt.

    Entry ``[i, j]`` is ``log p(" " + candidates[j] | neutral_prompt(x_i))`` under ``steering``:
    the answer's tokens (``" " + y`` tokenized alone, without special tokens) are put after the
    prompt's tokens and teacher-forced, and the log-probability of every one is summed. The
    steering's edits act where generation would steer: at the prompt's last token and every
    answer token after it (``Positions.last()`` of generation; the steering's own positions are
    replaced); a prefix is put before the prompt as ``f"{prefix}\\n\\n{prompt}"``. Each
    (pair, candidate) row is scored as if alone: rows are batched with the prompts left-padded and
    the answers right-padded (padding masked), so the prompts' last tokens share a column.

    Args:
        model: A ``HookedTransformer`` with a tokenizer.
        steering: A :class:`~tlsteer.Steering` (edits, a prefix, both or neither).
        pairs: ``(x, y)`` pairs; only the x's are read.
        candidates: The answers to score, distinct non-empty strings.
        batch_size: (pair, candidate) rows per forward pass.

    Example:
        >>> pairs = [("France", "Paris")]
        >>> logp = answer_logprobs(model, Steering(), pairs, ["Paris", "Rome"])  # doctest: +SKIP
        >>> logp.shape  # doctest: +SKIP
        torch.Size([1, 2])
    """
    if not isinstance(steering, Steering):
        raise TypeError(f"steering must be a Steering, got {type(steering).__name__}")
    pairs, candidates = _check_pairs(pairs), _check_candidates(candidates)
    batch_size = check_batch_size(batch_size)
    steering.check(model)
    answers = [_answer_ids(model, c) for c in candidates]
    prompts = [steering.instruct(neutral_prompt(x)) for x, _ in pairs]
    prompt_ids = tokenize_prompts(model, prompts, room=max(len(a) for a in answers))
    rows = [(i, j) for i in range(len(pairs)) for j in range(len(candidates))]
    rows.sort(key=lambda r: (len(prompt_ids[r[0]]), len(answers[r[1]])))  # similar lengths: less padding
    out = torch.zeros(len(pairs), len(candidates), dtype=torch.float64)
    pad = pad_token_id(model)
    for first in range(0, len(rows), batch_size):
        batch = rows[first : first + batch_size]
        n_prompt = max(len(prompt_ids[i]) for i, _ in batch)
        n_answer = max(len(answers[j]) for _, j in batch)
        tokens = torch.full((len(batch), n_prompt + n_answer), pad, dtype=torch.long)
        mask = torch.zeros_like(tokens)
        for r, (i, j) in enumerate(batch):
            ids = prompt_ids[i] + answers[j]
            tokens[r, n_prompt - len(prompt_ids[i]) : n_prompt - len(prompt_ids[i]) + len(ids)] = (
                torch.tensor(ids)
            )
            mask[r, n_prompt - len(prompt_ids[i]) : n_prompt + len(answers[j])] = 1
        tokens, mask = tokens.to(model.cfg.device), mask.to(model.cfg.device)
        # every prompt ends in column n_prompt - 1: steer from there to the end of the forward
        hooks = steering.at(Positions.from_end(n_answer + 1)).hooks(model, check_model=False)
        # TransformerLens types fwd_hooks as an invariant list[tuple[str | Callable, Callable]]
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):  # pyright: ignore[reportArgumentType]
            logits = model(tokens, attention_mask=mask)[:, n_prompt - 1 : -1]
        logp = logits.float().log_softmax(-1).gather(-1, tokens[:, n_prompt:, None])[..., 0]
        sums = (logp.double() * mask[:, n_prompt:]).sum(1).cpu()
        for r, (i, j) in enumerate(batch):
            out[i, j] = sums[r]
    return out


def analogy_ranks(
    model: HookedTransformer,
    steering: Any,
    pairs: Any,
    candidates: Any,
    *,
    batch_size: Any = 64,
) -> list[int]:
    """The rank (0 best) of each pair's answer among ``candidates``, by summed log-probability.

    Every candidate's whole answer is scored after the pair's neutral prompt under ``steering``
    (:func:`answer_logprobs`: steered from the prompt's last token on, a prefix before the
    prompt); the rank is the number of candidates scored strictly higher, so ties count in the
    answer's favour. Each pair's answer must be one of the candidates.
    """
    if not isinstance(steering, Steering):
        raise TypeError(f"steering must be a Steering, got {type(steering).__name__}")
    pairs, candidates = _check_pairs(pairs), _check_candidates(candidates)
    index = {c: j for j, c in enumerate(candidates)}
    missing = [y for _, y in pairs if y not in index]
    if missing:
        raise ValueError(
            f"answer {missing[0]!r} is not among the {len(candidates)} candidates "
            f"({', '.join(map(repr, candidates[:5]))}{', ...' if len(candidates) > 5 else ''}); every "
            "pair's answer must be one"
        )
    logp = answer_logprobs(model, steering, pairs, candidates, batch_size=batch_size)
    true = torch.tensor([index[y] for _, y in pairs])
    return [int(r) for r in (logp > logp.gather(1, true[:, None])).sum(1)]


def _exact(hits: Sequence[float]) -> Interval:
    """A share of successes and its exact binomial (Clopper-Pearson) 95% interval."""
    est, low, high = clopper_pearson(int(sum(hits)), len(hits))
    return Interval(est, low, high)


def run_analogy_task(
    model: HookedTransformer,
    methods: Mapping[str, Method],
    calibrations: Mapping[str, Mapping[float, Mapping[str, Any]]],
    task: Any,
    *,
    batch_size: int = 64,
) -> dict[CellKey, Cell]:
    """Top-k (``success``) and top-1 accuracy of the whole answer among the domain's answers, per cell.

    Cells: ``("unsteered", None)``, ``(method, budget)`` for a method with a strength (at the
    calibrated strength) and ``(method, None)`` for prompting. Each test pair's answer is ranked
    among :meth:`AnalogyTask.candidates` by summed log-probability under the cell's steering
    (:func:`analogy_ranks`). Each :class:`~tlsteer.experiments.cells.Cell` holds ``success``
    (rank < ``task.k``) and ``top1`` (rank 0), each with its exact binomial (Clopper-Pearson) 95%
    interval (:func:`~tlsteer.eval.bootstrap.clopper_pearson`: a cell with no success gets a real
    upper bound, not ``[0, 0]``), ``outcomes`` (each test pair's success, 1.0 or 0.0, in the
    order of :meth:`AnalogyTask.parts`'s test pairs), ``n_test_pairs`` (the pairs scored), and for
    a method's cell ``strength``, ``kl_mean``, ``kl_p95`` and ``reached`` from its calibration.

    Args:
        model: The model the methods were built for.
        methods: Named methods (:func:`~tlsteer.experiments.methods.build_methods`).
        calibrations: Per method, ``{budget: calibration}``
            (:func:`~tlsteer.experiments.cells.calibrate_method`).
        task: The :class:`AnalogyTask` whose test pairs are scored.
        batch_size: (pair, candidate) rows per forward pass.
    """
    task = _check_task(task)
    missing = [name for name in methods if name not in calibrations]
    if missing:
        raise ValueError(f"method {missing[0]!r} has no calibration; calibrate every method first")
    _, test = task.parts()
    candidates = task.candidates()
    plan = cell_steerings(methods, calibrations)
    cells: dict[CellKey, Cell] = {}
    for key, steering in {UNSTEERED: Steering(), **{k: v[0] for k, v in plan.items()}}.items():
        ranks = analogy_ranks(model, steering, test, candidates, batch_size=batch_size)
        hits = [float(r < task.k) for r in ranks]
        cells[key] = Cell(
            key[0],
            key[1],
            success=_exact(hits),
            top1=_exact([float(r == 0) for r in ranks]),
            n_test_pairs=len(ranks),
            outcomes=tuple(hits),
            **(calibration_fields(plan[key][1]) if key in plan else {}),
        )
    return cells
