"""An analogy domain as a dataset of the feature-vs-CAA comparison.

The contrast of a relation (:mod:`tlsteer.analogy`): for each training pair's x, the residual at
the last token of a few-shot prompt (``"a → b"`` demonstrations from the other training pairs, then
``"x →"``) against the same x's neutral prompt ``"x →"``. Every method of
:mod:`tlsteer.sae.methods` is built from it; success is whether the first token of the answer is
among the top ``k`` next tokens of a held-out x's neutral prompt, steered at its last token only
(top 1 beside it). Prompting puts an instruction (``tlsteer/datasets/instructions.json``, key
``"analogies"``) before the neutral prompt. The training split builds the methods; the validation
and test splits together are the test pairs (no strength is chosen on them: strengths come from
KL calibration on neutral text).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformer_lens import HookedTransformer

from tlsteer._types import is_int
from tlsteer.analogy import AnalogyDomain, answer_token, neutral_prompt, relation_contrast
from tlsteer.data import ContrastPair
from tlsteer.decode import generate_tokens
from tlsteer.sae.adapter import SAELike
from tlsteer.sae.compare import cell_steerings, contrast_from_pairs, instructed, interval
from tlsteer.sae.methods import ContrastReps, Method, Steering

__all__ = ["AnalogyTask", "analogy_ranks", "contrast_from_analogy", "run_analogy_task"]


@dataclass(frozen=True)
class AnalogyTask:
    """One relation: its pairs, the few-shot contrast's settings, ``k`` of top-k, an instruction."""

    domain: Any
    n_shots: Any = 5
    seed: Any = 0
    k: Any = 5
    instruction: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.domain, AnalogyDomain):
            raise TypeError(f"domain must be an AnalogyDomain (see load_analogies), got {self.domain!r}")
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
        if self.instruction is not None and (not isinstance(self.instruction, str) or not self.instruction):
            raise ValueError(f"instruction must be a non-empty string or None, got {self.instruction!r}")

    @property
    def name(self) -> str:
        return f"analogy_{self.domain.name}"

    def parts(self) -> tuple[list, list]:
        """``(training pairs, test pairs)``: the domain's seeded split, validation and test together."""
        train, val, test = self.domain.split(self.seed)
        return train, val + test


def contrast_from_analogy(
    model: HookedTransformer, sae: SAELike, task: AnalogyTask, hook_name: str
) -> ContrastReps:
    """Paired reps: few-shot prompt vs neutral prompt of each training x, at the last token."""
    train, _ = task.parts()
    prompts = relation_contrast(train, task.n_shots, seed=task.seed)
    pairs = [ContrastPair(few, plain, read_index=-1) for few, plain in prompts]
    return contrast_from_pairs(model, sae, pairs, hook_name)


def analogy_ranks(
    model: HookedTransformer, steering: Steering, pairs: Sequence[tuple[str, str]], batch_size: int = 32
) -> list[int]:
    """The rank (0 best) of each answer's first token after its x's neutral prompt, steered at the
    prompt's last token (an instruction prefix for prompting)."""
    prompts = [instructed(steering.prefix, neutral_prompt(x)) for x, _ in pairs]
    out = generate_tokens(
        model,
        prompts,
        list(steering.vectors),
        edits=list(steering.edits),
        max_new_tokens=1,
        keep_logits=True,
        last_token_only=True,
        batch_size=batch_size,
    )
    logits = torch.stack([row[0] for row in out.step_logits])
    targets = torch.tensor([answer_token(model, y) for _, y in pairs])
    return [int(r) for r in (logits > logits.gather(1, targets[:, None])).sum(1)]


def run_analogy_task(
    model: HookedTransformer,
    methods: Mapping[str, Method],
    calibrations: Mapping[str, Mapping[float, Mapping[str, Any]]],
    task: AnalogyTask,
    n_resamples: int = 1000,
) -> dict[str, Any]:
    """Top-k (``success``) and top-1 accuracy on the test pairs per cell, with bootstrap intervals."""
    _, test = task.parts()
    plan = cell_steerings(methods, calibrations)
    cells = {}
    for key, steering in {"unsteered": Steering(), **{k: v[0] for k, v in plan.items()}}.items():
        ranks = analogy_ranks(model, steering, test)
        cell = {
            "success": interval([float(r < task.k) for r in ranks], n_resamples),
            "top1": interval([float(r == 0) for r in ranks], n_resamples),
            "n_test_pairs": len(test),
        }
        if key in plan:
            cal = plan[key][1]
            cell.update(
                strength=cal["strength"], kl_mean=cal["kl_mean"], kl_p95=cal["kl_p95"], reached=cal["reached"]
            )
        cells[key] = cell
    return {"cells": cells, "k": task.k, "n_train_pairs": len(task.parts()[0]), "n_test_pairs": len(test)}
