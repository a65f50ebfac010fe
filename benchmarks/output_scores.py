"""The output score as Arad et al. (2025) define it, beside tlsteer's probability-mass variant.

Arad, Mueller and Belinkov ("SAEs Are Good for Steering - If You Select the Right Features")
score a feature by amplifying it at a prompt's last position and reading where its logit-lens
tokens land in the next-token distribution: ``(1 - min rank / vocab) * max probability`` over
its 20 logit-lens tokens (``output_scores(..., definition="rank")``). The feature-vs-CAA
comparison picks its ``feature_output`` and ``single_feature`` features with the
probability-mass variant instead (``definition="mass"``: the gain in probability of the 10
logit-lens tokens when the row is added at every position), measured on 4 prompts at strength
1.0, about 3 times the strength those methods are calibrated to. This script measures both, on
the embedded model at both SAE layers (6 and 12), as they would be used:

- on ``--n-prompts`` (32) built-in open prompts, chat-formatted;
- at ``--strength``: by default the mean calibrated strength of ``feature_output`` and
  ``single_feature`` at KL 0.5 in ``benchmarks/results/feature_vs_caa_speaking_styles.json``
  (units of the mean residual norm at the hook);
- on the candidates the comparison scores: for each speaking style, the ``--n-candidates`` (40)
  largest positive features of its class difference (that class against the others, training
  split, seed 0) after dropping features denser than 0.1, dead and first-token features on neutral
  text (as ``tlsteer.experiments.methods.build_methods`` does), plus ``--n-random`` live features
  drawn at random (a reference for what an ordinary feature scores).

Also recorded: Arad et al.'s own amplification (10 times the largest feature activation at the
last token) in residual-norm units (its median over the prompts), and at the layer the committed
comparison ran at, the 8 features per class it picked by the mass score as it ran (4 prompts,
strength 1.0; read from its JSON). ``--n-mass-prompts`` (4; 0 skips them) prompts score the
candidates by the mass variant at the same strength, for a rank correlation of the two scores.

Reported per layer: the distribution of the rank score (quantiles, the share above 0.01 and 0.1)
for the candidates and the random features, and per class how the rank score's top 8 (the
number ``feature_output`` keeps) overlaps the comparison's picks and the mass score's top 8
(with their Spearman correlation on the 40 candidates, where mass scores were run). Writes
``benchmarks/results/output_scores.{json,png}``. The committed run (2 shared CPU cores, 20 min):

    python benchmarks/output_scores.py --n-prompts 16 --n-random 32 --n-mass-prompts 0
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import _common as common
import torch

from tlsteer.data import chat_prompt, load_neutral_text, load_open_prompts
from tlsteer.experiments.contrasts import contrast_from_profile
from tlsteer.profile import spearman
from tlsteer.sae import FeatureVector, class_profile, feature_stats, output_scores
from tlsteer.sae.adapter import as_feature_dictionary
from tlsteer.tokens import tokenize_prompts

TINY = {"n_mass_prompts": 2, "n_prompts": 3, "n_candidates": 6, "n_random": 6, "k_top": 3, "strength": 0.34}
COMPARISON = common.RESULTS / "feature_vs_caa_speaking_styles.json"
THRESHOLDS = (0.01, 0.1)
"""Shares of features whose rank score is above these (Arad et al. filter low output scores)."""
AUTHORS_AMPLIFICATION = 10.0
"""Arad et al. add 10 times the largest feature activation at the last token."""


def comparison_strength() -> float:
    """Mean calibrated strength of feature_output and single_feature at KL 0.5 (residual-norm units)."""
    cells = json.loads(COMPARISON.read_text())["cells"]
    values = [s for name in ("feature_output@0.5", "single_feature@0.5") for s in cells[name]["strength"]]
    return float(sum(values) / len(values))


def authors_strength(model, found, prompts: list[str]) -> float:
    """Arad et al.'s amplification (10 x the largest activation at the last token, times the decoder
    row norm) in units of the mean residual norm at the hook: the median over ``prompts``."""
    hook = found.hook_name
    norms = found.decoder_rows(torch.arange(found.width)).float().norm(dim=-1)
    ratios = []
    for ids in tokenize_prompts(model, prompts):
        _, cache = model.run_with_cache(torch.tensor([ids], device=model.cfg.device), names_filter=[hook])
        resid = cache[hook][0]
        acts = found.encode(resid[-1:]).float()[0].cpu()
        f = int(acts.argmax())
        added = AUTHORS_AMPLIFICATION * float(acts[f]) * float(norms[f])
        ratios.append(added / float(resid[1:].norm(dim=-1).mean()))
    return float(torch.tensor(ratios).median())


def top(scores: torch.Tensor, ids: list[int], k: int) -> list[int]:
    return sorted(ids, key=lambda f: -float(scores[f]))[:k]


def distribution(values: torch.Tensor) -> dict[str, Any]:
    qs = (0.1, 0.25, 0.5, 0.75, 0.9)
    out: dict[str, Any] = {f"q{int(q * 100)}": float(values.quantile(q)) for q in qs}
    out["mean"] = float(values.mean())
    out["max"] = float(values.max())
    for t in THRESHOLDS:
        out[f"share_above_{t}"] = float((values > t).double().mean())
    return out


def layer_result(model, args, layer: int, prompts: list[str], strength: float) -> dict[str, Any]:
    sae = common.load_sae(args, model, layer)
    hook = f"blocks.{layer}.hook_resid_post"
    found = as_feature_dictionary(sae, hook, model)
    neutral = load_neutral_text()[: 8 if args.tiny else None]
    stats = feature_stats(model, found, neutral, hook_name=hook)
    dataset = common.load_class_dataset(args, "speaking_styles")
    train, _, _ = dataset.split(seed=0)
    profile = class_profile(model, found, train, n_bootstrap=0, hook_name=hook)
    candidates: dict[str, list[int]] = {}
    for target in dataset.classes:
        diff = contrast_from_profile(profile, target).feature_difference()
        filtered = (
            FeatureVector.from_dictionary(found, diff)
            .max_density(0.1, stats.density)
            .drop(stats.dead())
            .drop_first_token_features(stats.first_token_features())
        )
        candidates[target] = filtered.sign("positive").top_k(args.n_candidates).features
    pooled = sorted({f for ids in candidates.values() for f in ids})
    live = [f for f in (stats.density > 0).nonzero().flatten().tolist() if f not in set(pooled)]
    gen = torch.Generator().manual_seed(args.seed + layer)
    random_ids = sorted(live[i] for i in torch.randperm(len(live), generator=gen)[: args.n_random].tolist())
    every = pooled + random_ids
    common.log.info("layer %d: %d candidates, %d random features", layer, len(pooled), len(random_ids))

    t0 = time.perf_counter()
    kw: dict[str, Any] = {"hook_name": hook, "batch_size": args.batch_size}
    rank = output_scores(
        model, found, every, prompts, strength=strength, n_tokens=20, definition="rank", **kw
    )
    common.log.info("layer %d: rank scores in %.0f s", layer, time.perf_counter() - t0)
    mass = None
    if args.n_mass_prompts > 0:
        t0 = time.perf_counter()
        few = prompts[: args.n_mass_prompts]
        mass = output_scores(model, found, pooled, few, strength=strength, n_tokens=10, **kw)
        common.log.info("layer %d: mass scores in %.0f s", layer, time.perf_counter() - t0)
    amp = authors_strength(model, found, prompts)
    common.log.info("layer %d: authors' amplification = %.2f x the residual norm", layer, amp)
    chosen = comparison_choice(hook)

    k = args.k_top
    per_class: dict[str, Any] = {}
    for target, ids in candidates.items():
        by_rank = top(rank, ids, k)
        row: dict[str, Any] = {"n_candidates": len(ids), "candidates": ids, "top_rank": by_rank}
        if mass is not None:
            by_mass = top(mass, ids, k)
            row |= {
                "spearman_rank_mass": spearman(rank[ids], mass[ids]),
                "top_mass": by_mass,
                f"top{k}_overlap_rank_mass": len(set(by_rank) & set(by_mass)),
            }
        if chosen is not None and target in chosen:
            row |= {
                "top_mass_as_run": chosen[target],
                f"top{k}_overlap_rank_mass_as_run": len(set(by_rank) & set(chosen[target])),
                "mass_as_run_best_rank_position": sorted(ids, key=lambda f: -float(rank[f])).index(
                    chosen[target][0]
                )
                if chosen[target][0] in ids
                else None,
                "rank_of_mass_as_run_choice": distribution(rank[chosen[target]]),
            }
        per_class[target] = row
    return {
        "layer": layer,
        "hook": hook,
        "n_candidates": len(pooled),
        "n_random": len(random_ids),
        "authors_amplification_strength": amp,
        "rank_candidates": distribution(rank[pooled]),
        "rank_random": distribution(rank[random_ids]),
        "mass_candidates": distribution(mass[pooled]) if mass is not None else None,
        "spearman_rank_mass_candidates": spearman(rank[pooled], mass[pooled]) if mass is not None else None,
        "per_class": per_class,
        "scores": {
            "features": every,
            "is_candidate": [f in set(pooled) for f in every],
            "rank": [float(rank[f]) for f in every],
            "mass": [float(mass[f]) if mass is not None and f in set(pooled) else None for f in every],
        },
    }


def comparison_choice(hook: str) -> dict[str, list[int]] | None:
    """The 8 features per class that the committed comparison picked by the mass score as it ran
    (4 prompts, strength 1.0; its ``clamp`` features, best first), if it ran at ``hook``."""
    if not COMPARISON.is_file():
        return None
    data = json.loads(COMPARISON.read_text())
    if data["settings"]["hook"] != hook:
        return None
    return {c: v["clamp"] for c, v in data["features"].items() if "clamp" in v}


def body(args: Any) -> Path:
    start = time.perf_counter()
    model = common.load_model(args)
    strength = args.strength if args.strength is not None else comparison_strength()
    prompts = [chat_prompt(model, p) for p in load_open_prompts()[: args.n_prompts]]
    common.log.info("strength %.3f x the residual norm, %d prompts", strength, len(prompts))
    layers = [layer_result(model, args, layer, prompts, strength) for layer in common.sae_layers(args)]
    out = {
        "settings": {
            "strength": strength,
            "strength_source": "--strength" if args.strength is not None else COMPARISON.name,
            "n_prompts": len(prompts),
            "n_candidates": args.n_candidates,
            "n_random": args.n_random,
            "n_mass_prompts": min(args.n_mass_prompts, len(prompts)),
            "k_top": args.k_top,
            "n_tokens_rank": 20,
            "n_tokens_mass": 10,
            "thresholds": list(THRESHOLDS),
            "dataset": "speaking_styles",
        },
        "layers": layers,
        "seconds": round(time.perf_counter() - start, 1),
    }
    path = common.write_json(args.out / "output_scores.json", out)
    plot(out, args.out / "output_scores.png")
    common.log.info("done in %.0f s", out["seconds"])
    return path


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = out["layers"]
    fig, axes = plt.subplots(2, len(layers), figsize=(4.8 * len(layers), 7.5), squeeze=False)
    for col, row in enumerate(layers):
        s = row["scores"]
        cand = torch.tensor(s["is_candidate"])
        rank = torch.tensor(s["rank"])
        bins = torch.linspace(0, max(float(rank.max()), 1e-3), 30).tolist()
        ax = axes[0, col]
        ax.hist(rank[cand].tolist(), bins=bins, alpha=0.6, label="candidates")
        ax.hist(rank[~cand].tolist(), bins=bins, alpha=0.6, label="random live")
        for t in out["settings"]["thresholds"]:
            ax.axvline(t, color="grey", ls="--", lw=0.8)
        ax.set_yscale("log")
        ax.set_title(f"layer {row['layer']}: Arad et al. output score")
        ax.set_xlabel("(1 - rank/V) x max p")
        ax.legend(fontsize=7)
        ax = axes[1, col]
        picked = {f for c in row["per_class"].values() for f in c.get("top_mass_as_run", [])}
        pairs = [
            (m, r)
            for m, r, c in zip(s["mass"], s["rank"], s["is_candidate"], strict=True)
            if c and m is not None
        ]
        if pairs:
            ax.scatter([m for m, _ in pairs], [r for _, r in pairs], s=8)
            ax.set_title(
                f"layer {row['layer']}: candidates, Spearman {row['spearman_rank_mass_candidates']:+.2f}"
            )
            ax.set_xlabel(f"probability-mass gain, {out['settings']['n_mass_prompts']} prompts (tlsteer)")
            ax.set_ylabel("Arad et al. score")
        else:  # where the mass scores were skipped: the score of what the comparison picked
            groups = {
                "picked by the\ncomparison": [
                    r for f, r in zip(s["features"], s["rank"], strict=True) if f in picked
                ],
                "other\ncandidates": [
                    r
                    for f, r, c in zip(s["features"], s["rank"], s["is_candidate"], strict=True)
                    if c and f not in picked
                ],
                "random\nlive": [r for r, c in zip(s["rank"], s["is_candidate"], strict=True) if not c],
            }
            groups = {k: v for k, v in groups.items() if v}
            gen = torch.Generator().manual_seed(0)
            for x, values in enumerate(groups.values()):
                jitter = (torch.rand(len(values), generator=gen) - 0.5) * 0.3
                ax.scatter((x + jitter).tolist(), [max(v, 1e-7) for v in values], s=8)
            ax.set_xticks(range(len(groups)), list(groups))
            ax.set_yscale("log")
            for t in out["settings"]["thresholds"]:
                ax.axhline(t, color="grey", ls="--", lw=0.8)
            ax.set_ylabel("Arad et al. score (floor 1e-7)")
            ax.set_title(f"layer {row['layer']}: who scores what")
    fig.suptitle(
        f"output scores at strength {out['settings']['strength']:.2f}, {out['settings']['n_prompts']} prompts"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> Path:
    p = common.parser(__doc__)
    p.add_argument("--n-prompts", type=int, default=32, help="built-in open prompts, chat-formatted")
    p.add_argument("--strength", type=float, default=None, help="default: the comparison's calibrated one")
    p.add_argument("--n-candidates", type=int, default=40)
    p.add_argument("--n-random", type=int, default=64)
    p.add_argument("--k-top", type=int, default=8)
    p.add_argument(
        "--n-mass-prompts",
        type=int,
        default=4,
        help="prompts for the mass scores of the candidates (0: skip)",
    )
    p.add_argument("--batch-size", type=int, default=64)
    return common.run(body, p, argv, TINY)


if __name__ == "__main__":
    main()
