"""An analogy domain as a dataset of the feature-vs-CAA comparison.

The contrast of a relation (:mod:`tlsteer.analogy`): for each training pair's x, the residual at
the last token of a few-shot prompt (``n_shots`` ``"a → b"`` demonstrations drawn from the other
training pairs, then ``"x →"``) against the same x's neutral prompt ``"x →"``, raw text with no
chat template (:func:`contrast_from_analogy`). Every method of :mod:`tlsteer.experiments.methods` is built
from it. Success is whether the first token of the answer (:func:`~tlsteer.analogy.answer_token`)
is among the top ``k`` next tokens of a held-out x's neutral prompt, steered at its last token
only, exactly as :func:`~tlsteer.analogy.next_token_accuracy` scores it (top 1 beside it;
:func:`run_analogy_task`). Prompting puts an instruction (``tlsteer/datasets/instructions.json``,
key ``"analogies"``) before the neutral prompt, as ``f"{instruction}\\n\\n{prompt}"``.

Splits: the training split of :meth:`AnalogyDomain.split <tlsteer.analogy.AnalogyDomain.split>`
builds the methods (and supplies every demonstration); its validation and test splits together
are the test pairs. Nothing is chosen on them: strengths come from KL calibration on neutral text
(:func:`~tlsteer.experiments.cells.calibrate_method`), so there is nothing to validate here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformer_lens import HookedTransformer

from tlsteer._types import check_batch_size, is_int
from tlsteer.analogy import AnalogyDomain, answer_token, neutral_prompt, relation_contrast
from tlsteer.data import ContrastPair
from tlsteer.decode import generate_tokens
from tlsteer.experiments.cells import UNSTEERED, Cell, CellKey, calibration_fields, cell_steerings, interval
from tlsteer.experiments.contrasts import ContrastReps, contrast_from_pairs
from tlsteer.experiments.methods import Method
from tlsteer.positions import Positions
from tlsteer.sae.adapter import SAELike
from tlsteer.steering import Steering

__all__ = ["AnalogyTask", "analogy_ranks", "contrast_from_analogy", "run_analogy_task"]


@dataclass(frozen=True)
class AnalogyTask:
    """One relation as a dataset: its domain, the few-shot contrast's settings, ``k`` of top-k.

    Args:
        domain: An :class:`~tlsteer.analogy.AnalogyDomain` (see :func:`~tlsteer.load_analogies`).
        n_shots: Demonstrations per few-shot prompt, drawn from the other training pairs (the
            training split must hold more than ``n_shots`` pairs).
        seed: Seeds the split (:meth:`AnalogyDomain.split`) and the choice of demonstrations.
        k: Success is the answer's first token among the top ``k`` next tokens.
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
    model: HookedTransformer, sae: SAELike, task: Any, hook_name: str, batch_size: int = 8
) -> ContrastReps:
    """Paired reps at ``hook_name``: each training x's few-shot prompt (positive) against its
    neutral prompt (negative), read at the last token, raw and SAE-encoded (``paired=True``).

    Prompts are raw text (no chat template), read in left-padded batches
    (:func:`~tlsteer.experiments.contrasts.contrast_from_pairs`); row i of both sides is training pair i.
    """
    task = _check_task(task)
    pairs = [ContrastPair(few, plain, read_index=-1) for few, plain in task.contrast_prompts()]
    return contrast_from_pairs(model, sae, pairs, hook_name, batch_size=check_batch_size(batch_size))


def analogy_ranks(
    model: HookedTransformer, steering: Steering, pairs: Sequence[tuple[str, str]], batch_size: int = 32
) -> list[int]:
    """The rank (0 best) of each answer's first token after its x's neutral prompt under ``steering``.

    Vectors and edits act at the prompt's last token only (batched, left-padded, each row as if
    alone: :func:`~tlsteer.generate_tokens`); a prefix is put before the prompt as
    ``f"{prefix}\\n\\n{prompt}"``. Ties count in the answer's favour, as in
    :func:`~tlsteer.analogy.next_token_accuracy`.
    """
    if not isinstance(steering, Steering):
        raise TypeError(f"steering must be a Steering, got {type(steering).__name__}")
    if isinstance(pairs, str) or not pairs:
        raise ValueError(f"need a non-empty list of (x, y) pairs, got {pairs!r}")
    prompts = [neutral_prompt(x) for x, _ in pairs]
    out = generate_tokens(
        model,
        prompts,
        steering.at(Positions.last()),
        max_new_tokens=1,
        keep_logits=True,
        batch_size=batch_size,
    )
    assert out.step_logits is not None  # keep_logits=True keeps them
    logits = torch.stack([row[0] for row in out.step_logits]).float()
    targets = torch.tensor([answer_token(model, y) for _, y in pairs], device=logits.device)
    return [int(r) for r in (logits > logits.gather(1, targets[:, None])).sum(1)]


def run_analogy_task(
    model: HookedTransformer,
    methods: Mapping[str, Method],
    calibrations: Mapping[str, Mapping[float, Mapping[str, Any]]],
    task: Any,
    *,
    n_resamples: int = 1000,
    batch_size: int = 32,
) -> dict[CellKey, Cell]:
    """Top-k (``success``) and top-1 accuracy of the answer's first token on the test pairs, per cell.

    Cells: ``("unsteered", None)``, ``(method, budget)`` for a method with a strength (at the
    calibrated strength) and ``(method, None)`` for prompting. Each
    :class:`~tlsteer.experiments.cells.Cell` holds ``success`` and ``top1`` with a seeded 95%
    bootstrap interval over test pairs, ``n_test_pairs``, and for a method's cell ``strength``,
    ``kl_mean``, ``kl_p95`` and ``reached`` from its calibration. Every cell's prompts are scored
    in batches (:func:`analogy_ranks`).

    Args:
        model: The model the methods were built for.
        methods: Named methods (:func:`~tlsteer.experiments.methods.build_methods`).
        calibrations: Per method, ``{budget: calibration}``
            (:func:`~tlsteer.experiments.cells.calibrate_method`).
        task: The :class:`AnalogyTask` whose test pairs are scored.
        n_resamples: Bootstrap resamples (>= 100).
        batch_size: Prompts per forward pass.
    """
    task = _check_task(task)
    missing = [name for name in methods if name not in calibrations]
    if missing:
        raise ValueError(f"method {missing[0]!r} has no calibration; calibrate every method first")
    _, test = task.parts()
    plan = cell_steerings(methods, calibrations)
    cells: dict[CellKey, Cell] = {}
    for key, steering in {UNSTEERED: Steering(), **{k: v[0] for k, v in plan.items()}}.items():
        ranks = analogy_ranks(model, steering, test, batch_size)
        cells[key] = Cell(
            key[0],
            key[1],
            success=interval([float(r < task.k) for r in ranks], n_resamples),
            top1=interval([float(r == 0) for r in ranks], n_resamples),
            n_test_pairs=len(test),
            **(calibration_fields(plan[key][1]) if key in plan else {}),
        )
    return cells
