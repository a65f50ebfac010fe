"""Analogy sets: a relation vector from (x, y) pairs, applied to held-out x's, scored by next-token accuracy.

Each :class:`AnalogyDomain` holds (x, y) pairs of one relation (country to capital, number to
successor, month to next month, adjective to comparative: :func:`load_analogies`). The *neutral
prompt* of an x is ``"{x} →"`` (:data:`NEUTRAL`): nothing in it says which relation is meant. A
*few-shot prompt* puts ``n_shots`` demonstration pairs of the relation, one per line, before the
neutral prompt, and tells the model which relation to apply.

:func:`relation_contrast` pairs each training x's few-shot prompt (positive) with its neutral
prompt (negative); their mean activation difference at the last token
(:func:`tlsteer.train_steering_vector`) is the relation vector, a task vector in the sense of
Hendel et al. (2023) and Todd et al. (2024) built as a CAA contrast. Applied at the last token of
a held-out x's neutral prompt, it is scored by :func:`next_token_accuracy`: the share of prompts
whose next-token top 1 (top k) holds the first token of ``" " + y``. The baselines are no
steering, a random direction of the same norm (:func:`random_like`), and the few-shot prompt
itself (the reference the vector tries to stand in for). :func:`relation_accuracy` scores a
vector on pairs' neutral prompts; :func:`choose_layer_and_multiplier` picks its layer and strength
on validation pairs.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import torch
from transformer_lens import HookedTransformer

from tlsteer._types import is_int
from tlsteer.decode import generate_tokens
from tlsteer.positions import Positions
from tlsteer.steering import Steering
from tlsteer.tokens import model_tokenizer
from tlsteer.vector import SteeringVector

__all__ = [
    "NEUTRAL",
    "AnalogyDomain",
    "AnalogyScore",
    "answer_token",
    "choose_layer_and_multiplier",
    "few_shot_prompt",
    "load_analogies",
    "neutral_prompt",
    "next_token_accuracy",
    "random_like",
    "relation_accuracy",
    "relation_contrast",
]

NEUTRAL = "{x} →"
"""The neutral prompt of an x: the relation is left unsaid."""


@dataclass(frozen=True)
class AnalogyDomain:
    """The (x, y) pairs of one relation; ``template`` is a natural-language prompt for reference."""

    name: str
    pairs: tuple[tuple[str, str], ...]
    template: str = ""

    def __post_init__(self) -> None:
        pairs = tuple(tuple(p) for p in self.pairs)
        bad = [p for p in pairs if len(p) != 2 or not all(isinstance(w, str) and w.strip() for w in p)]
        if bad:
            raise ValueError(f"{self.name}: every pair must be two non-empty strings (x, y), got {bad[0]!r}")
        xs = [x for x, _ in pairs]
        repeated = sorted({x for x in xs if xs.count(x) > 1})
        if repeated:
            raise ValueError(f"{self.name}: x {repeated[0]!r} appears in more than one pair")
        if len(pairs) < 4:
            raise ValueError(f"{self.name}: needs at least 4 pairs, got {len(pairs)}")
        object.__setattr__(self, "pairs", pairs)

    def split(self, seed: int = 0, validation: float = 0.25, test: float = 0.25) -> tuple[list, list, list]:
        """``(train, validation, test)`` lists of pairs: a seeded shuffle cut by share (each part >= 1)."""
        if not is_int(seed):
            raise TypeError(f"seed must be an int, got {seed!r}")
        if not (0 < validation < 1 and 0 < test < 1 and validation + test < 1):
            raise ValueError(
                f"validation and test must be in (0, 1) with a sum < 1, got {validation}, {test}"
            )
        rows = list(self.pairs)
        random.Random(f"{seed}:{self.name}").shuffle(rows)
        n_val, n_test = max(1, round(validation * len(rows))), max(1, round(test * len(rows)))
        n_train = len(rows) - n_val - n_test
        if n_train < 2:
            raise ValueError(f"{self.name}: {len(rows)} pairs are too few for this split")
        return rows[:n_train], rows[n_train : n_train + n_val], rows[n_train + n_val :]

    def folds(self, k: int = 4, seed: int = 0) -> list[tuple[list, list, list]]:
        """``k`` rotations of ``(train, validation, test)`` over a seeded shuffle cut into ``k`` parts.

        Fold ``f`` tests on part ``f``, validates on part ``f + 1`` (mod k) and trains on the rest,
        so every pair is tested exactly once across the folds.
        """
        if not is_int(k) or not 3 <= k <= len(self.pairs) // 2:
            raise ValueError(
                f"k must be an int in [3, {len(self.pairs) // 2}] for {len(self.pairs)} pairs, got {k!r}"
            )
        if not is_int(seed):
            raise TypeError(f"seed must be an int, got {seed!r}")
        rows = list(self.pairs)
        random.Random(f"{seed}:{self.name}").shuffle(rows)
        parts = [rows[i::k] for i in range(k)]
        out = []
        for f in range(k):
            rest = [p for i, part in enumerate(parts) if i not in (f, (f + 1) % k) for p in part]
            out.append((rest, parts[(f + 1) % k], parts[f]))
        return out


def load_analogies() -> dict[str, AnalogyDomain]:
    """The built-in analogy domains, by name.

    Example:
        >>> sorted(load_analogies())
        ['comparative', 'country_capital', 'month_next', 'number_successor']
    """
    path = resources.files("tlsteer") / "datasets" / "classes" / "analogies.json"
    data = json.loads(path.read_text())
    return {
        name: AnalogyDomain(name, tuple(map(tuple, d["pairs"])), d.get("template", ""))
        for name, d in data["domains"].items()
    }


def neutral_prompt(x: str) -> str:
    return NEUTRAL.format(x=x)


def few_shot_prompt(x: str, demos: Sequence[tuple[str, str]]) -> str:
    """Demonstration pairs, one ``"x → y"`` per line, then the neutral prompt of ``x``."""
    return "".join(f"{neutral_prompt(a)} {b}\n" for a, b in demos) + neutral_prompt(x)


def _demos(x: str, pool: Sequence[tuple[str, str]], n_shots: int, rng: random.Random) -> list:
    others = [p for p in pool if p[0] != x]
    if len(others) < n_shots:
        raise ValueError(
            f"{n_shots} demonstrations need at least {n_shots + 1} training pairs, got {len(pool)}"
        )
    return rng.sample(others, n_shots)


def relation_contrast(
    pairs: Sequence[tuple[str, str]],
    n_shots: int = 5,
    seed: int = 0,
    pool: Sequence[tuple[str, str]] | None = None,
) -> list[tuple[str, str]]:
    """``(few-shot prompt, neutral prompt)`` of each pair's x; demonstrations drawn from ``pool``.

    ``pool`` defaults to ``pairs``; a prompt never demonstrates its own x. Use the same call with
    held-out ``pairs`` and the training ``pool`` for the few-shot reference prompts.
    """
    if not is_int(n_shots) or n_shots < 1:
        raise ValueError(f"n_shots must be an int >= 1, got {n_shots!r}")
    rng = random.Random(seed)
    pool = list(pairs if pool is None else pool)
    return [(few_shot_prompt(x, _demos(x, pool, n_shots, rng)), neutral_prompt(x)) for x, _ in pairs]


def answer_token(model: HookedTransformer, y: str) -> int:
    """The first token of ``" " + y`` (what the model must put next)."""
    ids = model_tokenizer(model).encode(" " + y, add_special_tokens=False)
    if not ids:
        raise ValueError(f"{y!r} has no tokens")
    return int(ids[0])


def random_like(vector: SteeringVector, seed: int = 0) -> SteeringVector:
    """A seeded random direction of the same norm at each of ``vector``'s hooks."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, d in vector.directions.items():
        r = torch.randn(d.shape[0], generator=gen)
        out[name] = r * (float(d.norm()) / float(r.norm()))
    return SteeringVector(out)


@dataclass(frozen=True)
class AnalogyScore:
    """Next-token accuracy: ``top1`` and ``topk`` shares, and each prompt's rank of its answer (0 best)."""

    top1: float
    topk: float
    k: int
    ranks: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"top1": self.top1, f"top{self.k}": self.topk, "n": len(self.ranks)}

    @classmethod
    def from_ranks(cls, ranks: Sequence[int], k: int = 5) -> AnalogyScore:
        """The score of answers at these ranks (e.g. pooled over folds)."""
        if not ranks:
            raise ValueError("no ranks to score")
        r = torch.tensor(list(ranks))
        return cls(float((r == 0).float().mean()), float((r < k).float().mean()), k, tuple(r.tolist()))


def next_token_accuracy(
    model: HookedTransformer,
    prompts: Sequence[str],
    answers: Sequence[str],
    steering: Steering | None = None,
    *,
    k: int = 5,
    batch_size: int = 16,
    check_model: bool = True,
) -> AnalogyScore:
    """Share of ``prompts`` whose next token's top 1 and top ``k`` hold the first token of their answer.

    The steering acts at its positions (for analogies: each prompt's last token,
    ``Positions.last()``); prompts are raw text, batched and left-padded (each row as if alone:
    :func:`tlsteer.generate_tokens`).
    """
    if isinstance(prompts, str) or not prompts or len(prompts) != len(answers):
        raise ValueError(
            f"need a non-empty list of prompts and one answer each, got {len(prompts)} and {len(answers)}"
        )
    if not is_int(k) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    targets = torch.tensor([answer_token(model, y) for y in answers])
    out = generate_tokens(
        model,
        list(prompts),
        steering,
        max_new_tokens=1,
        keep_logits=True,
        batch_size=batch_size,
        check_model=check_model,
    )
    assert out.step_logits is not None  # keep_logits=True keeps them
    logits = torch.stack([row[0] for row in out.step_logits])
    ranks = (logits > logits.gather(1, targets[:, None])).sum(1)
    return AnalogyScore(
        float((ranks == 0).float().mean()), float((ranks < k).float().mean()), k, tuple(ranks.tolist())
    )


def relation_accuracy(
    model: HookedTransformer,
    pairs: Sequence[tuple[str, str]],
    vector: SteeringVector | None = None,
    multiplier: float = 1.0,
    *,
    k: int = 5,
    batch_size: int = 16,
) -> AnalogyScore:
    """:func:`next_token_accuracy` on the neutral prompts of ``pairs`` (x's), answers their y's.

    With a ``vector``, ``multiplier * vector`` is added at each prompt's last token
    (``Positions.last()``); without one the prompts run unsteered.

    Example:
        >>> relation_accuracy(model, test_pairs, vec.select(12), 4.0).top1  # doctest: +SKIP
    """
    steering = None if vector is None else vector.steering(multiplier, positions=Positions.last())
    prompts = [neutral_prompt(x) for x, _ in pairs]
    return next_token_accuracy(model, prompts, [y for _, y in pairs], steering, k=k, batch_size=batch_size)


def choose_layer_and_multiplier(
    model: HookedTransformer,
    pairs: Sequence[tuple[str, str]],
    vector: SteeringVector,
    layers: Sequence[int],
    multipliers: Sequence[float],
) -> tuple[int, float]:
    """The ``(layer, multiplier)`` of ``vector`` with the best :func:`relation_accuracy` on ``pairs``.

    Pass validation pairs, never the test pairs. Ranked by top 1, then top 5; ties go to the
    first layer, then the first multiplier, in the order given.

    Example:
        >>> choose_layer_and_multiplier(model, val_pairs, vec, [6, 12], [1.0, 2.0, 4.0])  # doctest: +SKIP
        (12, 2.0)
    """
    if not layers or not multipliers:
        raise ValueError(
            f"need layers and multipliers to choose from, got {list(layers)} and {list(multipliers)}"
        )
    scored = []
    for layer in layers:
        single = vector.select(layer)
        for m in multipliers:
            score = relation_accuracy(model, pairs, single, m)
            scored.append(((score.top1, score.topk), layer, m))
    _, layer, m = max(scored, key=lambda row: row[0])  # max keeps the first of equals
    return layer, m
