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
their logit lens. The study is ``tlsteer.experiments.analogy_folds``.
Writes ``benchmarks/results/analogies.{json,png}``.

    python benchmarks/analogies.py [--layers 3 6 9 12 15 18 21] [--multipliers 1 2 4] [--tiny]
"""

from __future__ import annotations

import time
from pathlib import Path

import _common as common

from tlsteer.analogy import AnalogyDomain, load_analogies
from tlsteer.eval.class_plots import plot_analogies
from tlsteer.experiments.analogy_folds import analogy_folds, shared_features

TINY = {"layers": [1, 3], "multipliers": [2.0], "shots": 2, "folds": 3, "pairs": 9, "random": 1}


def body(args) -> Path:
    start = time.perf_counter()
    model = common.load_model(args)
    domains = load_analogies()
    if args.pairs is not None:  # the first pairs of each domain (--tiny)
        domains = {n: AnalogyDomain(n, d.pairs[: args.pairs], d.template) for n, d in domains.items()}
    sae_layers = common.sae_layers(args)
    layers = sorted(set(args.layers) | set(sae_layers))
    saes = {layer: common.load_sae(args, model, layer) for layer in sae_layers}
    out = {"layers": layers, "multipliers": args.multipliers, "shots": args.shots, "folds": args.folds}
    result = analogy_folds(
        model,
        domains,
        layers=layers,
        choose_from=args.layers,
        multipliers=args.multipliers,
        shots=args.shots,
        folds=args.folds,
        n_random=args.random,
        saes=saes,
        split_seed=args.seed,
    )
    out |= result.to_dict()
    for name, row in out["domains"].items():
        common.log.info(
            "%s: %s", name, "; ".join(f"{k} {row[k]}" for k in ("none", "relation", "random", "few_shot"))
        )
    common.log.info("cross-domain top-5 (rows: vector, columns: prompts)\n%s", result.cross_matrix().round(2))

    out["feature_space"] = {}
    for layer, sae in saes.items():
        per_layer = result.feature_space(layer)
        shared = shared_features(model, sae, domains, shots=args.shots)
        out["feature_space"][f"layer_{layer}"] = {"methods": per_layer, **shared}
        for name, row in per_layer.items():
            common.log.info("layer %d %s: raw %s feature %s", layer, name, row["raw"], row["feature"])
        common.log.info(
            "layer %d: top-20 overlaps %s; in >= 3 domains' top 20: %d",
            layer,
            shared["top20_overlap"],
            len(shared["shared_features"]),
        )

    plot_analogies(out, path=args.out / "analogies.png")
    out["seconds"] = round(time.perf_counter() - start, 1)
    path = common.write_json(args.out / "analogies.json", out)
    common.log.info("done in %.0f s", out["seconds"])
    return path


def main(argv: list[str] | None = None) -> Path:
    p = common.parser(__doc__)
    p.add_argument("--layers", type=int, nargs="+", default=[3, 6, 9, 12, 15, 18, 21])
    p.add_argument("--multipliers", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--random", type=int, default=5, help="random directions per test, pooled")
    p.add_argument("--pairs", type=int, default=None, help="the first N pairs of each domain (default all)")
    return common.run(body, p, argv, TINY)


if __name__ == "__main__":
    main()
