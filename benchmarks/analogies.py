"""Analogy sets: do relation vectors carry a relation to held-out x's, within and across domains?

Each built-in domain (``tlsteer.analogy.load_analogies``) is cut into ``--folds`` parts (seed 0);
fold f tests on part f, validates on part f + 1 and trains on the rest, so every pair is tested
once and the scores are pooled over the folds. The relation vector of a domain is the mean
activation difference, at the last token, between each training x's 5-shot prompt
(demonstrations from the other training pairs) and its neutral prompt ``"{x} →"``
(``tlsteer.analogy``). Layer and multiplier are chosen per domain and fold on the validation
pairs (top-1, then top-5), over ``--layers`` and ``--multipliers``; the test pairs are scored:

- none: the neutral prompt, unsteered;
- relation: the domain's vector at its chosen layer and multiplier, at the last token;
- random: a random direction of the same norm (pooled over 5 seeds), same layer and multiplier;
- few-shot: the 5-shot prompt itself (the reference the vector stands in for).

Across domains: every domain's vector (its own layer and multiplier) on every domain's test
prompts. Raw vs feature space, at the shipped SAEs' layers: the raw vector against the SAE
feature-space difference of the same contrast decoded through ``W_dec`` (multiplier chosen on
validation for each). Shared features: each domain's 20 largest feature-space differences (the
contrast over all its pairs); the features in the lists of at least 3 of the 4 domains, with
their logit lens.
Writes ``benchmarks/results/analogies.{json,png}``.

    python benchmarks/analogies.py [--layers 3 6 9 12 15 18 21] [--multipliers 1 2 4]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

import tlsteer
from tlsteer.analogy import (
    AnalogyScore,
    load_analogies,
    neutral_prompt,
    next_token_accuracy,
    random_like,
    relation_contrast,
)
from tlsteer.eval.class_plots import plot_analogies
from tlsteer.sae import embedded_sae_layers, feature_vector, load_embedded_sae
from tlsteer.sae.adapter import logit_lens

ROOT = Path(__file__).resolve().parents[1]


def score(model, pairs, vec=None, mult=1.0):
    prompts = [neutral_prompt(x) for x, _ in pairs]
    steer = [(vec, mult)] if vec is not None else []
    return next_token_accuracy(model, prompts, [y for _, y in pairs], steer)


def choose(model, val, vec, layers, multipliers):
    """The (layer, multiplier) with the best validation (top-1, top-5), ties to the lower values."""
    best = None
    for layer in layers:
        for m in multipliers:
            s = score(model, val, vec.select(layer), m)
            key = (s.top1, s.topk)
            if best is None or key > best[0]:
                best = (key, layer, m)
    return best[1], best[2]


def pooled(ranks):
    return AnalogyScore.from_ranks(ranks).to_dict()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, nargs="+", default=[3, 6, 9, 12, 15, 18, 21])
    parser.add_argument("--multipliers", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    start = time.perf_counter()
    model = tlsteer.load_model()
    domains = load_analogies()
    names = list(domains)
    sae_layers = embedded_sae_layers()
    layers = sorted(set(args.layers) | set(sae_layers))
    folds = {name: d.folds(args.folds, seed=0) for name, d in domains.items()}
    out = {"layers": layers, "multipliers": args.multipliers, "shots": args.shots, "folds": args.folds}

    # per fold: each domain's vector (all layers), its chosen layer and multiplier, test ranks
    ranks = {name: {m: [] for m in ("none", "relation", "random", "few_shot")} for name in names}
    cross = {(a, b): [] for a in names for b in names}
    saes = {layer: load_embedded_sae(layer) for layer in sae_layers}
    space_ranks = {
        (layer, name, sp): [] for layer in sae_layers for name in names for sp in ("raw", "feature")
    }
    chosen = {name: [] for name in names}
    for f in range(args.folds):
        vectors, picks = {}, {}
        for name in names:
            train, val, test = folds[name][f]
            contrast = relation_contrast(train, args.shots, seed=f)
            vectors[name] = tlsteer.train_steering_vector(model, contrast, layers=layers)
            picks[name] = choose(model, val, vectors[name], args.layers, args.multipliers)
            chosen[name].append(picks[name])
            layer, m = picks[name]
            vec = vectors[name].select(layer)
            few = relation_contrast(test, args.shots, seed=100 + f, pool=train)
            ranks[name]["none"] += score(model, test).ranks
            ranks[name]["relation"] += score(model, test, vec, m).ranks
            ranks[name]["few_shot"] += next_token_accuracy(
                model, [p for p, _ in few], [y for _, y in test]
            ).ranks
            for seed in range(5):  # pooled over 5 random directions of the same norm
                ranks[name]["random"] += score(model, test, random_like(vec, 10 * f + seed), m).ranks
            for layer_s, sae in saes.items():
                fv = feature_vector(model, sae, contrast, formula="paired", read="last")
                for space, v in (
                    ("raw", vectors[name].select(layer_s)),
                    ("feature", fv.to_steering_vector(sae)),
                ):
                    _, m_s = choose(model, val, v, [layer_s], args.multipliers)
                    space_ranks[(layer_s, name, space)] += score(model, test, v, m_s).ranks
        for a in names:
            layer, m = picks[a]
            for b in names:
                cross[(a, b)] += score(model, folds[b][f][2], vectors[a].select(layer), m).ranks
        print(f"fold {f} done ({time.perf_counter() - start:.0f} s)", flush=True)

    out["domains"] = {}
    for name in names:
        row = {"pairs": len(domains[name].pairs), "chosen_layer_multiplier": chosen[name]}
        row.update({method: pooled(r) for method, r in ranks[name].items()})
        out["domains"][name] = row
        print(
            f"{name}: " + "; ".join(f"{k} {row[k]}" for k in ("none", "relation", "random", "few_shot")),
            flush=True,
        )
    cross_top = {
        k: np.array([[pooled(cross[(a, b)])[k] for b in names] for a in names]) for k in ("top1", "top5")
    }
    out["cross_domain"] = {
        "rows_vector_columns_prompts": names,
        **{k: v.round(3).tolist() for k, v in cross_top.items()},
    }
    print("cross-domain top-5 (rows: vector, columns: prompts)\n", cross_top["top5"].round(2), flush=True)

    out["feature_space"] = {}
    for layer, sae in saes.items():
        per_layer = {
            name: {sp: pooled(space_ranks[(layer, name, sp)]) for sp in ("raw", "feature")} for name in names
        }
        # which features the relation vectors share: each domain's 20 largest differences, all pairs
        top_features = {
            name: feature_vector(
                model,
                sae,
                relation_contrast(list(domains[name].pairs), args.shots),
                formula="paired",
                read="last",
            )
            .top_k(20)
            .features
            for name in names
        }
        counts = Counter(f for feats in top_features.values() for f in feats)
        lens = {}
        for feat in sorted(f for f, c in counts.items() if c >= 3):
            promoted, _ = logit_lens(model, sae.W_dec[feat], 5)
            lens[feat] = {
                "domains": [n for n in names if feat in top_features[n]],
                "promotes": [t for t, _ in promoted],
            }
        overlap = [[len(set(top_features[a]) & set(top_features[b])) for b in names] for a in names]
        out["feature_space"][f"layer_{layer}"] = {
            "methods": per_layer,
            "top20": top_features,
            "top20_overlap": overlap,
            "shared_features": lens,
        }
        for name in names:
            print(f"layer {layer} {name}: raw {per_layer[name]['raw']} feature {per_layer[name]['feature']}")
        print(f"layer {layer}: top-20 overlaps {overlap}; in >= 3 domains' top 20: {len(lens)}", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    plot_analogies(out, path=args.out / "analogies.png")
    out["seconds"] = round(time.perf_counter() - start, 1)
    (args.out / "analogies.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"done in {out['seconds']:.0f} s")


if __name__ == "__main__":
    main()
