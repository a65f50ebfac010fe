"""Which layers to train the embedded model's SAEs at: a small concept-steering check per layer.

For each built-in concept (sentiment, formality) and each layer, a raw mean-difference vector
(``tlsteer.sae.raw_vector``, formula ``"paired"``) from the built-in items written as
conversations (``tlsteer.data.load_builtin_replies``: the question as user turn, the matching or
the other answer as the assistant's reply), each read as the mean over the reply's tokens
(``reply_span``). Greedy generations on 8 open prompts (24 new tokens, steering from each
prompt's last token on) at relative strengths ``-r, 0, +r``: a multiplier ``r`` adds a vector
whose norm is ``r`` times the mean residual norm at that hook on neutral text. Scored by the
built-in MiniLM judge (trained on ``concept_judge.json``, texts apart from the vectors' items)
and by perplexity under the unsteered model.

The score of a layer is the judge's shift ``P(concept | +r) - P(concept | -r)`` at each strength,
read beside the perplexity it costs. Writes ``benchmarks/results/sae_layer_choice.{json,png}``.

    python benchmarks/sae_layer_choice.py            # layers 3 6 9 12 15 18 21, r = 0.25 0.5 1.0
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from concept_steering import PROMPTS  # the same 8 open prompts (benchmarks/ is on sys.path)

import tlsteer
from tlsteer.data import load_builtin_replies, load_neutral_text, reply_span
from tlsteer.eval.generation import GenerationSettings, compare_generations
from tlsteer.eval.judge import builtin_judge, load_embedder, perplexity
from tlsteer.eval.sweeps import residual_norms
from tlsteer.sae import raw_vector

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, nargs="+", default=[3, 6, 9, 12, 15, 18, 21])
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    start = time.perf_counter()
    model = tlsteer.load_model()
    hooks = [f"blocks.{layer}.hook_resid_post" for layer in args.layers]
    norms = residual_norms(model, load_neutral_text(), hooks)
    embedder = load_embedder()
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    out = {"layers": args.layers, "strengths": args.strengths, "prompts": PROMPTS, "settings": vars(settings)}
    out["concepts"] = {}
    for concept in tlsteer.BUILTIN_DATASETS:
        judge = builtin_judge(concept, embedder)
        pairs = load_builtin_replies(concept, model)
        rows = []
        baseline = None
        for layer, hook in zip(args.layers, hooks, strict=True):
            vec = raw_vector(model, pairs, hook, read="mean", span=reply_span(model))
            scale = norms[hook] / float(vec[hook].norm())
            mults = [0.0] if baseline is None else []
            mults += [s * sign * scale for s in args.strengths for sign in (-1, 1)]
            report = compare_generations(model, PROMPTS, vec, mults, settings)
            scored = {}
            for m in sorted({g.multiplier for g in report.generations}):
                gens = [g for g in report.generations if g.multiplier == m]
                scored[m] = {
                    "judge": float(judge.predict_proba([g.text for g in gens]).mean()),
                    "perplexity": sum(perplexity(model, g.prompt_tokens, g.new_tokens) for g in gens)
                    / len(gens),
                    "example": gens[0].text,
                }
            if baseline is None:
                baseline = scored.pop(0.0)
            row = {
                "layer": layer,
                "vector_norm": float(vec[hook].norm()),
                "residual_norm": norms[hook],
                "by_strength": [],
            }
            for s in args.strengths:
                lo, hi = scored[-s * scale], scored[s * scale]
                row["by_strength"].append(
                    {
                        "relative": s,
                        "judge_minus": lo["judge"],
                        "judge_plus": hi["judge"],
                        "shift": hi["judge"] - lo["judge"],
                        "perplexity_minus": lo["perplexity"],
                        "perplexity_plus": hi["perplexity"],
                        "example_minus": lo["example"],
                        "example_plus": hi["example"],
                    }
                )
            rows.append(row)
            print(
                concept,
                layer,
                [
                    (b["relative"], round(b["shift"], 3), round(b["perplexity_plus"], 2))
                    for b in row["by_strength"]
                ],
                flush=True,
            )
        out["concepts"][concept] = {
            "judge_held_out_accuracy": judge.held_out_accuracy,
            "baseline": baseline,
            "rows": rows,
        }
    out["seconds"] = round(time.perf_counter() - start, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sae_layer_choice.json").write_text(json.dumps(out, indent=1) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(out["concepts"]), figsize=(4.5 * len(out["concepts"]), 6), squeeze=False)
    for col, (concept, data) in enumerate(out["concepts"].items()):
        for i, s in enumerate(args.strengths):
            axes[0, col].plot(
                args.layers, [r["by_strength"][i]["shift"] for r in data["rows"]], marker="o", label=f"r={s}"
            )
            ppl = [
                max(r["by_strength"][i]["perplexity_minus"], r["by_strength"][i]["perplexity_plus"])
                for r in data["rows"]
            ]
            axes[1, col].plot(args.layers, ppl, marker="o", label=f"r={s}")
        axes[1, col].axhline(data["baseline"]["perplexity"], color="grey", ls="--", label="unsteered")
        axes[0, col].set_title(f"{concept}: judge P(+r) - P(-r)")
        axes[1, col].set_title(f"{concept}: perplexity (worse side)")
        axes[1, col].set_xlabel("layer")
        axes[1, col].set_yscale("log")
        for ax in axes[:, col]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out / "sae_layer_choice.png", dpi=110)
    print(f"done in {out['seconds']:.0f} s")


if __name__ == "__main__":
    main()
