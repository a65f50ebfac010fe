"""Class switching, judged: a K x K transfer matrix of where steered generations land.

For each source class ``i`` the prompts put the model in class ``i`` (by default, a chat whose
first exchange is an example of class ``i``, then a new user turn: :func:`source_prompts`), and
for each target class ``j`` the model is steered from ``i`` toward ``j`` by a method (a callable
``(i, j) -> Steering``; :func:`class_switch_methods` gives the standard ones). Every
cell generates all of the source's prompts in one batched call; the judge labels every
generation. ``matrix[i][j]`` is the share of the generations steered ``i -> j`` that the judge
calls ``j``; ``landing[(i, j)]`` has the share for every judged class.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from transformer_lens import HookedTransformer

from tlsteer.classes import ClassDataset
from tlsteer.decode import generate
from tlsteer.operators import check_multiplier
from tlsteer.positions import Positions
from tlsteer.steering import Steering

__all__ = ["TransferResult", "class_switch_methods", "source_prompts", "transfer_matrix"]

SteerFor = Callable[[str, str], Steering]
"""``(source, target) -> Steering`` (the unsteered ``Steering()`` for no steering)."""


def source_prompts(
    model: HookedTransformer, dataset: ClassDataset, n: int = 8, seed: int = 0, primed: bool = True
) -> dict[str, list[str]]:
    """Per class, ``n`` chat prompts that put the model in that class.

    Each prompt is one of the class's examples as a first exchange (user prompt and the class's
    reply), then the user prompt of another example of the class as a new turn, ready for the
    assistant (raw text: generate with ``chat=False``). With ``primed=False`` it is only the
    new user turn. Examples are drawn with a seeded RNG; a class needs at least ``n + 1``
    examples with prompts.
    """
    tokenizer = model.tokenizer
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "source_prompts needs a model whose tokenizer has a chat template; for a base model, "
            "choose a plain format first: tlsteer.use_plain_format(model)"
        )
    out = {}
    for c in dataset.classes:
        rows = [e for e in dataset.examples[c] if e.prompt is not None]
        if len(rows) < n + 1:
            raise ValueError(f"class {c!r} has {len(rows)} examples with prompts; need at least {n + 1}")
        rng = random.Random(f"{seed}:{c}")
        picked = rng.sample(rows, n + 1)
        prompts = []
        for k in range(n):
            first, ask = picked[k], picked[(k + 1) % (n + 1)]
            messages = [{"role": "user", "content": ask.prompt}]
            if primed:
                messages = [
                    {"role": "user", "content": first.prompt},
                    {"role": "assistant", "content": first.response},
                    *messages,
                ]
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            prompts.append(str(text))
        out[c] = prompts
    return out


@dataclass(frozen=True)
class TransferResult:
    """The transfer matrix and everything it was computed from."""

    classes: tuple[str, ...]
    matrix: pd.DataFrame
    landing: dict[tuple[str, str], dict[str, float]] = field(repr=False)
    generations: dict[tuple[str, str], list[str]] = field(repr=False)
    judge_accuracy: float = float("nan")

    @property
    def success(self) -> float:
        """Mean share judged as the target over the off-diagonal cells (actual switches)."""
        values = self.matrix.to_numpy()
        off = ~np.eye(len(self.classes), dtype=bool)
        return float(values[off].mean())

    def to_dict(self) -> dict[str, Any]:
        return {
            "classes": list(self.classes),
            "matrix": self.matrix.round(4).to_dict(),
            "success_off_diagonal": round(self.success, 4),
            "judge_held_out_accuracy": self.judge_accuracy,
            "landing": {f"{i}->{j}": v for (i, j), v in self.landing.items()},
            "generations": {f"{i}->{j}": v for (i, j), v in self.generations.items()},
        }


def transfer_matrix(
    model: HookedTransformer,
    judge: Any,
    prompts: Mapping[str, Sequence[str]],
    steer: SteerFor,
    *,
    max_new_tokens: int = 32,
    batch_size: int = 16,
    **generate_kwargs: Any,
) -> TransferResult:
    """Generate every source's prompts steered toward every target; judge where they land.

    Args:
        model: The steered model.
        judge: A :class:`~tlsteer.eval.ClassJudge` over the same classes.
        prompts: ``{source class: raw prompts}`` (e.g. :func:`source_prompts`).
        steer: ``(source, target) -> Steering``; its positions count in each prompt's own tokens
            (the standard methods steer from each prompt's last token on: ``Positions.last()``).
        max_new_tokens, batch_size, generate_kwargs: For :func:`tlsteer.generate` (greedy by
            default; ``chat=False`` since the prompts are formatted).
    """
    classes = tuple(judge.classes)
    unknown = [c for c in prompts if c not in classes]
    if unknown:
        raise ValueError(f"source class {unknown[0]!r} is not a class of the judge {list(classes)}")
    kwargs = {"chat": False, **generate_kwargs}
    landing, generations = {}, {}
    matrix = pd.DataFrame(0.0, index=list(prompts), columns=list(classes))
    for i, rows in prompts.items():
        for j in classes:
            texts = generate(
                model, list(rows), steer(i, j), max_new_tokens=max_new_tokens, batch_size=batch_size, **kwargs
            )
            found = judge.predict(texts)
            landing[(i, j)] = {c: found.count(c) / len(found) for c in classes}
            generations[(i, j)] = texts
            matrix.loc[i, j] = landing[(i, j)][j]
    return TransferResult(classes, matrix, landing, generations, float(judge.held_out_accuracy))


def class_switch_methods(profile: Any, strength: Any, norm: float) -> dict[str, SteerFor]:
    """Standard ways to steer from class ``i`` to ``j``, each scaled to ``strength * norm``.

    - ``"centroid"``: ``profile.direction(i, j)`` (raw mean difference);
    - ``"mean_centred"``: ``profile.mean_centred(j)`` (independent of ``i``);
    - ``"feature"``: ``profile.direction(i, j, space="feature")`` (decoded feature difference;
      only for a profile from :func:`tlsteer.sae.class_profile`).

    ``norm`` is the mean residual norm at the hook (e.g. from ``residual_norms``): every vector
    is rescaled to ``strength`` times it, acting from each prompt's last token on
    (``Positions.last()``). ``i == j`` gives no steering.
    """
    strength = check_multiplier(strength)
    hook = profile.hook_name

    def scaled(make: Callable[[str, str], Any]) -> SteerFor:
        def steer(i: str, j: str) -> Steering:
            if i == j:
                return Steering()
            vec = make(i, j)
            size = float(vec[hook].norm())
            if size == 0:
                return Steering()
            return Steering.from_vector(vec, strength * norm / size, positions=Positions.last())

        return steer

    methods = {
        "centroid": scaled(lambda i, j: profile.direction(i, j)),
        "mean_centred": scaled(lambda _i, j: profile.mean_centred(j)),
    }
    if "feature" in profile.reps and hasattr(profile, "sae"):
        methods["feature"] = scaled(lambda i, j: profile.direction(i, j, space="feature"))
    return methods
