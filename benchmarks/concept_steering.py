"""Concept steering on the built-in data, scored by an independent judge.

For each built-in concept (sentiment, formality): a vector from the first 60 pairs at one layer;
A/B p(matching) on the 20 held-out items (CAA's measure, steered from the end of each question)
and open-ended greedy generations on test prompts at relative multipliers on both sides of zero.
Each generation is scored by a judge that is not the steered model: a logistic regression on
all-MiniLM-L6-v2 embeddings trained on tlsteer's labelled judge texts (its held-out accuracy is
reported), VADER for sentiment, and the perplexity of the generation under the unsteered model
(fluency): ``tlsteer.eval.judge.score_report``.

    python benchmarks/concept_steering.py [--layer 12] [--multipliers -0.2 0 0.2] [--prompts 8] [--name N]
    python benchmarks/concept_steering.py --tiny   # seconds, a tiny random model: checks the script
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import _common as common

import tlsteer
from tlsteer.data import BUILTIN_DATASETS, builtin_dataset_path, load_ab_items, load_neutral_text
from tlsteer.eval.ab import ab_eval, question_end
from tlsteer.eval.generation import GenerationSettings, compare_generations
from tlsteer.eval.judge import builtin_judge, score_report, vader_compound
from tlsteer.eval.sweeps import residual_norms

PROMPTS = [
    "Tell me about your weekend.",
    "Describe your commute to work.",
    "What do you think of the new library?",
    "Write a short note to your neighbour.",
    "How was the meeting this morning?",
    "Describe the weather today.",
    "What did you have for lunch?",
    "Tell me about your favourite book.",
]
"""Open prompts for the generations (also ``sae_layer_choice.py``'s)."""
TINY = {"layer": 2, "max_new_tokens": 4, "prompts": 2, "pairs": 8, "ab_items": 4}


def body(args) -> Path:
    start = time.perf_counter()
    model = common.load_model(args)
    neutral = load_neutral_text()
    hook = f"blocks.{args.layer}.hook_resid_post"
    norms = residual_norms(model, neutral, [hook])
    embedder = common.load_embedder(args)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    prompts = PROMPTS[: args.prompts]
    out = {"layer": args.layer, "prompts": prompts, "settings": vars(settings), "concepts": {}}
    reports = []
    for concept in BUILTIN_DATASETS:
        judge = builtin_judge(concept, embedder)
        pairs = tlsteer.load_builtin_dataset(concept, model)
        vec = tlsteer.train_steering_vector(model, pairs[: args.pairs], layers=[args.layer], batch_size=16)
        scale = norms[hook] / float(vec[hook].norm())
        applied = [m * scale for m in args.multipliers]
        held_out = load_ab_items(builtin_dataset_path(concept))[args.pairs :][: args.ab_items]
        report = compare_generations(model, prompts, vec, applied, settings)
        reports.append(f"== {concept} (layer {args.layer}) ==\n{report.to_text()}")
        scored = score_report(model, judge, report)
        rows = []
        for m, a in zip(args.multipliers, applied, strict=True):
            steering = vec.steering(a, positions=question_end(model)) if a else None
            row = {
                "relative_multiplier": m,
                "applied_multiplier": a,
                "judge_p_concept": scored[a].judge,
                "perplexity": scored[a].perplexity,
                "ab_p_matching": ab_eval(model, held_out, steering).p_matching,
            }
            if concept == "sentiment":
                texts = [g.text for g in report.generations if g.multiplier == a]
                row["vader_compound"] = sum(vader_compound(texts)) / len(texts)
            rows.append(row)
            common.log.info("%s %s", concept, json.dumps(row))
        out["concepts"][concept] = {
            "judge_held_out_accuracy": judge.held_out_accuracy,
            "judge_n_test": judge.n_test,
            "vector_norm": float(vec[hook].norm()),
            "rows": rows,
        }
    out["seconds"] = time.perf_counter() - start
    path = common.write_json(args.out / f"{args.name}.json", out)
    (args.out / f"{args.name}.txt").write_text("\n\n".join(reports) + "\n")
    plot(out, args.out / f"{args.name}.png")
    common.log.info("done in %.0f s", out["seconds"])
    return path


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for concept, data in out["concepts"].items():
        xs = [r["relative_multiplier"] for r in data["rows"]]
        axes[0].plot(xs, [r["judge_p_concept"] for r in data["rows"]], marker="o", label=f"{concept}: judge")
        axes[0].plot(
            xs, [r["ab_p_matching"] for r in data["rows"]], marker="x", ls="--", label=f"{concept}: A/B"
        )
        axes[1].plot(xs, [r["perplexity"] for r in data["rows"]], marker="o", label=concept)
    axes[0].set_xlabel("relative multiplier")
    axes[0].set_ylabel("P(concept) / p(matching)")
    axes[0].legend(fontsize=7)
    axes[1].set_xlabel("relative multiplier")
    axes[1].set_ylabel("perplexity under unsteered model")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> Path:
    p = common.parser(__doc__)
    p.add_argument("--layer", type=int, default=12)
    p.add_argument("--multipliers", type=float, nargs="+", default=[-0.2, 0.0, 0.2])
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--prompts", type=int, default=6, help="how many of the test prompts")
    p.add_argument(
        "--pairs", type=int, default=60, help="the first N pairs build the vector; A/B on the rest"
    )
    p.add_argument("--ab-items", type=int, default=None, help="at most N held-out A/B items (default all)")
    p.add_argument(
        "--name", default="concept_steering", help="stem of the output files: NAME.json, NAME.png, NAME.txt"
    )
    return common.run(body, p, argv, TINY)


if __name__ == "__main__":
    main()
