"""Concept steering on the built-in data, scored by an independent judge.

For each built-in concept (sentiment, formality): a vector from the first 60 pairs at one layer;
A/B p(matching) on the 20 held-out items (CAA's measure) and open-ended greedy generations on
test prompts at relative multipliers on both sides of zero. Each generation is scored by a judge
that is not the steered model: a logistic regression on all-MiniLM-L6-v2 embeddings trained on
tlsteer's labelled judge texts (its held-out accuracy is reported), VADER for sentiment, and the
perplexity of the generation under the unsteered model (fluency).

    python benchmarks/concept_steering.py [--layer 12] [--multipliers -0.2 0 0.2] [--prompts 8] [--name N]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import tlsteer
from tlsteer.data import builtin_dataset_path, load_ab_items, load_neutral_text
from tlsteer.eval.ab import ab_eval
from tlsteer.eval.generation import GenerationSettings, compare_generations
from tlsteer.eval.judge import builtin_judge, load_embedder, perplexity, vader_compound
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layer", type=int, default=12)
    parser.add_argument("--multipliers", type=float, nargs="+", default=[-0.2, 0.0, 0.2])
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--prompts", type=int, default=6, help="how many of the test prompts")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument(
        "--name", default="concept_steering", help="stem of the output files: NAME.json, NAME.png, NAME.txt"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)
    start = time.perf_counter()
    model = tlsteer.load_model()
    neutral = load_neutral_text()
    hook = f"blocks.{args.layer}.hook_resid_post"
    norms = residual_norms(model, neutral, [hook])
    embedder = load_embedder()
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    out = {
        "layer": args.layer,
        "prompts": PROMPTS[: args.prompts],
        "settings": vars(settings),
        "concepts": {},
    }
    reports = []
    for concept in tlsteer.BUILTIN_DATASETS:
        judge = builtin_judge(concept, embedder)
        pairs = tlsteer.load_builtin_dataset(concept, model)
        vec = tlsteer.train_steering_vector(model, pairs[:60], layers=[args.layer], batch_size=16)
        scale = norms[hook] / float(vec[hook].norm())
        applied = [m * scale for m in args.multipliers]
        held_out = load_ab_items(builtin_dataset_path(concept))[60:]
        report = compare_generations(model, PROMPTS[: args.prompts], vec, applied, settings)
        reports.append(f"== {concept} (layer {args.layer}) ==\n{report.to_text()}")
        rows = []
        for m, a in zip(args.multipliers, applied, strict=True):
            gens = [g for g in report.generations if g.multiplier == a]
            texts = [g.text for g in gens]
            ab = ab_eval(model, held_out, [(vec, a)] if a else [])
            row = {
                "relative_multiplier": m,
                "applied_multiplier": a,
                "judge_p_concept": float(judge.predict_proba(texts).mean()),
                "perplexity": float(
                    sum(perplexity(model, g.prompt_tokens, g.new_tokens) for g in gens) / len(gens)
                ),
                "ab_p_matching": ab.p_matching,
            }
            if concept == "sentiment":
                row["vader_compound"] = sum(vader_compound(texts)) / len(texts)
            rows.append(row)
            print(concept, json.dumps(row), flush=True)
        out["concepts"][concept] = {
            "judge_held_out_accuracy": judge.held_out_accuracy,
            "judge_n_test": judge.n_test,
            "vector_norm": float(vec[hook].norm()),
            "rows": rows,
        }
    out["seconds"] = time.perf_counter() - start
    (args.out / f"{args.name}.json").write_text(json.dumps(out, indent=1))
    (args.out / f"{args.name}.txt").write_text("\n\n".join(reports) + "\n")

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
    fig.savefig(args.out / f"{args.name}.png", dpi=120)
    print(f"done in {out['seconds']:.0f} s")


if __name__ == "__main__":
    main()
