"""Analogy sets: do relation vectors carry a relation to held-out x's, within and across domains?

For each built-in domain (``tlsteer.analogy.load_analogies``) the pairs are split 50 / 25 / 25
(seed 0). The relation vector of a domain is the mean activation difference, at the last token,
between each training x's 5-shot prompt (demonstrations from the other training pairs) and its
neutral prompt ``"{x} →"`` (``tlsteer.analogy``). Layer and multiplier are chosen per domain on the
validation pairs (top-1, then top-5), over ``--layers`` and ``--multipliers``; the test pairs are
scored once:

- none: the neutral prompt, unsteered;
- relation: the domain's vector at its chosen layer and multiplier, at the last token;
- random: a random direction of the same norm (mean over 5 seeds), same layer and multiplier;
- few-shot: the 5-shot prompt itself (the reference the vector stands in for).

Across domains: every domain's vector (its own layer and multiplier) on every domain's test
prompts. Raw vs feature space, at the shipped SAEs' layers: the raw vector against the SAE
feature-space difference of the same contrast decoded through ``W_dec`` (multiplier chosen on
validation for each). Shared features: each domain's 20 largest feature-space differences; the
features in the lists of at least 3 of the 4 domains, with their logit lens.
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, nargs="+", default=[3, 6, 9, 12, 15, 18, 21])
    parser.add_argument("--multipliers", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    start = time.perf_counter()
    model = tlsteer.load_model()
    domains = load_analogies()
    sae_layers = embedded_sae_layers()
    layers = sorted(set(args.layers) | set(sae_layers))
    splits = {name: d.split(seed=0) for name, d in domains.items()}
    contrasts = {name: relation_contrast(train, args.shots, seed=0) for name, (train, _, _) in splits.items()}
    vectors = {name: tlsteer.train_steering_vector(model, c, layers=layers) for name, c in contrasts.items()}
    out = {"layers": layers, "multipliers": args.multipliers, "shots": args.shots, "domains": {}}

    chosen = {}
    for name, (train, val, test) in splits.items():
        layer, m = choose(model, val, vectors[name], args.layers, args.multipliers)
        chosen[name] = (layer, m)
        vec = vectors[name].select(layer)
        few = relation_contrast(test, args.shots, seed=1, pool=train)
        reference = next_token_accuracy(model, [p for p, _ in few], [y for _, y in test])
        randoms = [score(model, test, random_like(vec, seed), m) for seed in range(5)]
        row = {
            "pairs": {"train": len(train), "validation": len(val), "test": len(test)},
            "layer": layer,
            "multiplier": m,
            "norm": float(vec.norms()[vec.hooks[0]]),
            "none": score(model, test).to_dict(),
            "relation": score(model, test, vec, m).to_dict(),
            "random": {
                "top1": float(np.mean([r.top1 for r in randoms])),
                "top5": float(np.mean([r.topk for r in randoms])),
            },
            "few_shot": reference.to_dict(),
        }
        out["domains"][name] = row
        print(
            f"{name}: layer {layer} x{m}: none {row['none']} relation {row['relation']} "
            f"random {row['random']} few-shot {row['few_shot']}",
            flush=True,
        )

    names = list(domains)
    cross = {"top1": np.zeros((len(names),) * 2), "top5": np.zeros((len(names),) * 2)}
    for i, source in enumerate(names):
        layer, m = chosen[source]
        for j, target in enumerate(names):
            s = score(model, splits[target][2], vectors[source].select(layer), m)
            cross["top1"][i, j], cross["top5"][i, j] = s.top1, s.topk
    out["cross_domain"] = {
        "rows_vector_columns_prompts": names,
        **{k: v.round(3).tolist() for k, v in cross.items()},
    }
    print("cross-domain top-5 (rows: vector, columns: prompts)\n", cross["top5"].round(2), flush=True)

    out["feature_space"] = {}
    for layer in sae_layers:
        sae = load_embedded_sae(layer)
        per_layer, top_features = {}, {}
        for name, (_, val, test) in splits.items():
            fv = feature_vector(model, sae, contrasts[name], formula="paired", read="last")
            top_features[name] = fv.top_k(20).features
            row = {}
            for space, vec in (("raw", vectors[name].select(layer)), ("feature", fv.to_steering_vector(sae))):
                _, m = choose(model, val, vec, [layer], args.multipliers)
                row[space] = {"multiplier": m, **score(model, test, vec, m).to_dict()}
            per_layer[name] = row
            print(f"layer {layer} {name}: raw {row['raw']} feature {row['feature']}", flush=True)
        counts = Counter(f for feats in top_features.values() for f in feats)
        shared = sorted(f for f, c in counts.items() if c >= 3)
        lens = {}
        for f in shared:
            promoted, _ = logit_lens(model, sae.W_dec[f], 5)
            lens[f] = {
                "domains": [n for n in names if f in top_features[n]],
                "promotes": [t for t, _ in promoted],
            }
        overlap = [[len(set(top_features[a]) & set(top_features[b])) for b in names] for a in names]
        out["feature_space"][f"layer_{layer}"] = {
            "methods": per_layer,
            "top20_overlap": overlap,
            "shared_features": lens,
        }
        print(f"layer {layer}: top-20 overlaps {overlap}; shared by >= 3 domains: {lens}", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    plot_analogies(out, path=args.out / "analogies.png")
    out["seconds"] = round(time.perf_counter() - start, 1)
    (args.out / "analogies.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"done in {out['seconds']:.0f} s")


if __name__ == "__main__":
    main()
