"""The main job on the embedded model: build a vector from built-in data, steer, score.

Run it with ``tlsteer demo``. It trains a CAA vector from the first pairs of a built-in dataset,
prints unsteered and steered greedy generations side by side, and an A/B table of p(matching) on
the held-out items at several multipliers.
"""

from __future__ import annotations

import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

from tlsteer.caa import train_steering_vector
from tlsteer.data import builtin_dataset_path, load_ab_items, load_builtin_dataset
from tlsteer.decode import generate
from tlsteer.eval.ab import ab_scores, question_end
from tlsteer.models import load_model
from tlsteer.positions import Positions

__all__ = ["DemoConfig", "run_demo"]

PROMPTS = {
    "sentiment": ["Tell me about your weekend.", "How was the new restaurant?", "Describe your commute."],
    "formality": ["Tell me about your weekend.", "Can you move our meeting?", "Describe your commute."],
}


@dataclass(frozen=True)
class DemoConfig:
    dataset: str = "sentiment"
    layer: int = 12
    multiplier: float = 16.0
    n_train: int = 60
    max_new_tokens: int = 40
    batch_size: int = 16
    out: Path | None = None


def _columns(texts: list[str], titles: list[str], width: int = 38) -> str:
    wrapped = [textwrap.wrap(t.replace("\n", " "), width) or [""] for t in texts]
    height = max(len(w) for w in wrapped)
    lines = ["  ".join(f"{t:<{width}}" for t in titles), "  ".join("-" * width for _ in titles)]
    for i in range(height):
        lines.append("  ".join(f"{(w[i] if i < len(w) else ''):<{width}}" for w in wrapped))
    return "\n".join(lines)


def run_demo(cfg: DemoConfig) -> dict:
    """Run the demo and print its report; returns the numbers it printed."""
    start = time.perf_counter()
    model = load_model()
    print(
        f"loaded {model.cfg.model_name} ({model.cfg.n_layers} layers, d_model "
        f"{model.cfg.d_model}) in {time.perf_counter() - start:.1f} s"
    )
    pairs = load_builtin_dataset(cfg.dataset, model)
    items = load_ab_items(builtin_dataset_path(cfg.dataset))
    train, held_out = pairs[: cfg.n_train], items[cfg.n_train :]
    t0 = time.perf_counter()
    vec = train_steering_vector(
        model, train, layers=[cfg.layer], batch_size=cfg.batch_size, show_progress=True
    )
    print(
        f"trained a {cfg.dataset} vector on {len(train)} pairs at layer {cfg.layer} in "
        f"{time.perf_counter() - t0:.1f} s; norm {vec.norms()[vec.hooks[0]]:.2f}"
    )
    if cfg.out is not None:
        vec.save(cfg.out)
        print(f"saved {cfg.out}")

    m = cfg.multiplier
    print(f"\ngreedy generations, steered from the last prompt token onward (x{-m:g}, 0, x{m:g}):")
    questions = PROMPTS.get(cfg.dataset, PROMPTS["sentiment"])
    columns = []
    for mult in (-m, 0.0, m):  # one batched call per multiplier, every prompt at once
        columns.append(
            generate(
                model,
                questions,
                vec.steering(mult, positions=Positions.last()) if mult else None,
                max_new_tokens=cfg.max_new_tokens,
                chat=True,
                stop_at_eos=True,
            )
        )
    generations = []
    for i, question in enumerate(questions):
        texts = [column[i] for column in columns]
        generations.append({"prompt": question, "texts": texts})
        print(f"\nUSER: {question}")
        print(_columns(texts, [f"x{-m:g}", "unsteered", f"x{m:g}"]))

    print(
        f"\nA/B p(matching) on {len(held_out)} held-out {cfg.dataset} items "
        "(steered from the last user token, CAA-style):"
    )
    print(f"{'multiplier':>10}  {'p(matching)':>11}  {'matching > 0.5':>14}  {'letter mass':>11}")
    table = []
    for mult in (-m, -m / 2, 0.0, m / 2, m):
        steering = vec.steering(mult, positions=question_end(model)) if mult else None
        scores = ab_scores(model, held_out, steering, batch_size=cfg.batch_size)
        p = sum(s.p_matching for s in scores) / len(scores)
        wins = sum(s.p_matching > 0.5 for s in scores)
        mass = sum(s.letter_mass for s in scores) / len(scores)
        table.append({"multiplier": mult, "p_matching": p, "n_matching": wins, "letter_mass": mass})
        print(f"{mult:>10g}  {p:>11.3f}  {wins:>8d}/{len(scores):<5d}  {mass:>11.3f}")
    print(f"\ntotal {time.perf_counter() - start:.1f} s")
    return {"generations": generations, "ab": table}
