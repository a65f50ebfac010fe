"""Which layers to train the embedded model's SAEs at: a small concept-steering check per layer.

For each built-in concept (sentiment, formality) and each layer, a raw mean-difference vector
(``tlsteer.train_steering_vector``, read as the mean over each reply's tokens:
``Read.mean(reply_span(model))``) from the built-in items written as conversations
(``tlsteer.data.load_builtin_replies``: the question as user turn, the matching or the other
answer as the assistant's reply). Greedy generations on 8 open prompts (24 new tokens, steering
from each prompt's last token on) at relative strengths ``-r, 0, +r``: a multiplier ``r`` adds a
vector whose norm is ``r`` times the mean residual norm at that hook on neutral text. Scored by
the built-in MiniLM judge (trained on ``concept_judge.json``, texts apart from the vectors' items)
and by perplexity under the unsteered model (``tlsteer.eval.judge.score_report``).

The score of a layer is the judge's shift ``P(concept | +r) - P(concept | -r)`` at each strength,
read beside the perplexity it costs. Writes ``benchmarks/results/sae_layer_choice.{json,png}``.

    python benchmarks/sae_layer_choice.py            # layers 3 6 9 12 15 18 21, r = 0.25 0.5 1.0
"""

from __future__ import annotations

import time
from pathlib import Path

import _common as common
from concept_steering import PROMPTS  # the same 8 open prompts (benchmarks/ is on sys.path)

import tlsteer
from tlsteer import Read
from tlsteer.data import BUILTIN_DATASETS, load_builtin_replies, load_neutral_text, reply_span
from tlsteer.eval.generation import GenerationSettings, compare_generations
from tlsteer.eval.judge import builtin_judge, score_report
from tlsteer.eval.sweeps import residual_norms

TINY = {"layers": [1, 2], "strengths": [0.5], "max_new_tokens": 4, "prompts": 2, "pairs": 16}


def scores_dict(scores) -> dict:
    return {"judge": scores.judge, "perplexity": scores.perplexity, "example": scores.example}


def layer_row(model, judge, pairs, layer: int, norm: float, prompts, settings, args, with_baseline: bool):
    """One layer's judge shift and perplexity per strength (and the unsteered scores, if asked)."""
    hook = f"blocks.{layer}.hook_resid_post"
    vec = tlsteer.train_steering_vector(model, pairs, layers=[layer], read=Read.mean(reply_span(model)))
    scale = norm / float(vec[hook].norm())
    mults = [0.0] if with_baseline else []
    mults += [s * sign * scale for s in args.strengths for sign in (-1, 1)]
    scored = score_report(model, judge, compare_generations(model, prompts, vec, mults, settings))
    baseline = scores_dict(scored.pop(0.0)) if with_baseline else None
    row = {"layer": layer, "vector_norm": float(vec[hook].norm()), "residual_norm": norm, "by_strength": []}
    for s in args.strengths:
        lo, hi = scored[-s * scale], scored[s * scale]
        row["by_strength"].append(
            {
                "relative": s,
                "judge_minus": lo.judge,
                "judge_plus": hi.judge,
                "shift": hi.judge - lo.judge,
                "perplexity_minus": lo.perplexity,
                "perplexity_plus": hi.perplexity,
                "example_minus": lo.example,
                "example_plus": hi.example,
            }
        )
    return row, baseline


def body(args) -> Path:
    start = time.perf_counter()
    model = common.load_model(args)
    hooks = [f"blocks.{layer}.hook_resid_post" for layer in args.layers]
    norms = residual_norms(model, load_neutral_text(), hooks)
    embedder = common.load_embedder(args)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    prompts = PROMPTS[: args.prompts]
    out = {"layers": args.layers, "strengths": args.strengths, "prompts": prompts, "settings": vars(settings)}
    out["concepts"] = {}
    for concept in BUILTIN_DATASETS:
        judge = builtin_judge(concept, embedder)
        pairs = load_builtin_replies(concept, model)[: args.pairs]
        rows, baseline = [], None
        for layer, hook in zip(args.layers, hooks, strict=True):
            row, base = layer_row(
                model, judge, pairs, layer, norms[hook], prompts, settings, args, baseline is None
            )
            baseline = baseline or base
            rows.append(row)
            shifts = [
                (b["relative"], round(b["shift"], 3), round(b["perplexity_plus"], 2))
                for b in row["by_strength"]
            ]
            common.log.info("%s %d %s", concept, layer, shifts)
        out["concepts"][concept] = {
            "judge_held_out_accuracy": judge.held_out_accuracy,
            "baseline": baseline,
            "rows": rows,
        }
    out["seconds"] = round(time.perf_counter() - start, 1)
    path = common.write_json(args.out / "sae_layer_choice.json", out)
    plot(out, args.layers, args.strengths, args.out / "sae_layer_choice.png")
    common.log.info("done in %.0f s", out["seconds"])
    return path


def plot(out: dict, layers: list[int], strengths: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(out["concepts"]), figsize=(4.5 * len(out["concepts"]), 6), squeeze=False)
    for col, (concept, data) in enumerate(out["concepts"].items()):
        for i, s in enumerate(strengths):
            axes[0, col].plot(
                layers, [r["by_strength"][i]["shift"] for r in data["rows"]], marker="o", label=f"r={s}"
            )
            ppl = [
                max(r["by_strength"][i]["perplexity_minus"], r["by_strength"][i]["perplexity_plus"])
                for r in data["rows"]
            ]
            axes[1, col].plot(layers, ppl, marker="o", label=f"r={s}")
        axes[1, col].axhline(data["baseline"]["perplexity"], color="grey", ls="--", label="unsteered")
        axes[0, col].set_title(f"{concept}: judge P(+r) - P(-r)")
        axes[1, col].set_title(f"{concept}: perplexity (worse side)")
        axes[1, col].set_xlabel("layer")
        axes[1, col].set_yscale("log")
        for ax in axes[:, col]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> Path:
    p = common.parser(__doc__)
    p.add_argument("--layers", type=int, nargs="+", default=[3, 6, 9, 12, 15, 18, 21])
    p.add_argument("--strengths", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--prompts", type=int, default=len(PROMPTS), help="the first N of the 8 open prompts")
    p.add_argument("--pairs", type=int, default=None, help="the first N conversations of each concept")
    return common.run(body, p, argv, TINY)


if __name__ == "__main__":
    main()
