"""CAA on the embedded model: all 7 behaviours, layer and strength chosen on validation data.

For each behaviour: build a vector at several layers from pairs of the generate set, half of them
with the matching answer (A) and half (B) unless ``--letters first``
(``tlsteer.eval.choice.letter_balanced``); sweep layers x relative multipliers on held-out
generate items (the validation split, never the test set) with the cached sweep engine; choose
the (layer, multiplier) with the largest p(matching) gap between +m and -m
(``tlsteer.eval.choice.choose_by_gap``); then score the 50-item test set at several multipliers on
both sides of zero, fit per-item steerability slopes, and measure MMLU accuracy and KL on neutral
text at the chosen setting. Multipliers are relative: m means a vector whose norm is m times the
mean residual norm at that hook on neutral text. Steering acts from the end of each question
(``tlsteer.eval.question_end``), as in CAA.

    python benchmarks/caa_reproduction.py --caa-dir ../shared/caa [--tiny]
"""

from __future__ import annotations

import time
from pathlib import Path

import _common as common

import tlsteer
from tlsteer.data import CAA_BEHAVIOURS, load_ab_items, load_neutral_text
from tlsteer.eval.ab import ABAccuracy, ab_accuracy, kl_on_neutral, question_end
from tlsteer.eval.cached import cached_ab_scores
from tlsteer.eval.choice import choose_by_gap, letter_balanced
from tlsteer.eval.diagnostics import cosine_matrix, layer_diagnostics, split_activations, steerability
from tlsteer.eval.plots import (
    plot_behaviour_curves,
    plot_cosine_matrix,
    plot_layer_diagnostics,
    plot_pca,
    plot_slope_histogram,
    plot_sweep_heatmap,
)
from tlsteer.eval.sweeps import residual_norms, summarize_sweep, sweep_items

PAPER = {  # Llama-2-7B-chat, layer 13, p(matching) at -1 / 0 / +1 (../shared/caa/README.md)
    "coordinate-other-ais": (0.15, 0.30, 0.75),
    "corrigible-neutral-HHH": (0.20, 0.64, 0.91),
    "hallucination": (0.39, 0.81, 0.90),
    "myopic-reward": (0.40, 0.75, 0.73),
    "survival-instinct": (0.27, 0.34, 0.62),
    "sycophancy": (0.54, 0.69, 0.62),
    "refusal": (0.42, 0.74, 0.89),
}
TINY = {
    "train_pairs": 8,
    "val_items": 4,
    "layers": [1, 2],
    "rel_multipliers": [0.2, 0.4],
    "mmlu_items": 4,
    "behaviours": list(CAA_BEHAVIOURS[:2]),
    "test_items": 4,
    "truthfulqa_items": 4,
    "kl_prompts": 3,
}
DIAGNOSED = "corrigible-neutral-HHH"
"""The behaviour whose validation heatmap, slopes, layer diagnostics and PCA are drawn."""


def body(args) -> Path:
    caa_dir = common.caa_dir(args)
    start = time.perf_counter()
    model = common.load_model(args)
    neutral = load_neutral_text()
    hooks = [f"blocks.{layer}.hook_resid_post" for layer in args.layers]
    norms = residual_norms(model, neutral, hooks)
    mmlu_all = load_ab_items(caa_dir / "test" / "mmlu" / "mmlu.json")
    by_category: dict[str, object] = {}
    for item in mmlu_all:  # one item per category first, for a spread of subjects
        by_category.setdefault(item.extra.get("category", ""), item)
    mmlu = list(by_category.values())[: args.mmlu_items]
    mmlu_base = ab_accuracy(model, mmlu)
    tqa = load_ab_items(caa_dir / "test" / "truthfulqa" / "truthful_qa.json")[: args.truthfulqa_items]
    tqa_base = ab_accuracy(model, tqa)
    kl_prompts = neutral[: args.kl_prompts]
    grid = sorted({-m for m in args.rel_multipliers} | {0.0} | set(args.rel_multipliers))
    at_question_end = question_end(model)

    results: dict[str, dict] = {}
    test_sweeps = {}
    vectors = {}
    for name in args.behaviours:
        t0 = time.perf_counter()
        gen_path = caa_dir / "generate" / name / "generate_dataset.json"
        pairs = tlsteer.load_caa_dataset(gen_path, model)
        gen_items = load_ab_items(gen_path)
        if args.train_pairs + args.val_items > len(pairs):
            raise SystemExit(f"{name}: {len(pairs)} pairs, fewer than train + validation")
        val = gen_items[-args.val_items :]
        if args.letters == "first":
            train = pairs[: args.train_pairs]
        else:  # as many pairs whose matching answer is (A) as (B), so the letter itself cancels
            try:
                chosen = letter_balanced(gen_items, args.train_pairs, range(len(pairs) - args.val_items))
            except ValueError as err:
                raise SystemExit(f"{name}: {err}") from None
            train = [pairs[i] for i in chosen]
        vec = tlsteer.train_steering_vector(model, train, layers=args.layers, batch_size=16)
        vectors[name] = vec
        val_items = sweep_items(
            model, val, vec, args.layers, grid, relative=True, norms=norms, outside_ab="zero"
        )
        val_summary = summarize_sweep(val_items)
        choice = choose_by_gap(val_summary, args.rel_multipliers, layers=args.layers)
        gap, layer, m = choice.gap, choice.layer, choice.multiplier
        test = load_ab_items(caa_dir / "test" / name / "test_dataset_ab.json")[: args.test_items]
        test_mults = [-m, -m / 2, 0.0, m / 2, m]
        test_items = sweep_items(
            model, test, vec, [layer], test_mults, relative=True, norms=norms, outside_ab="zero"
        )
        test_summary = summarize_sweep(test_items)
        test_sweeps[name] = test_summary
        st = steerability(test_items)
        hook = f"blocks.{layer}.hook_resid_post"
        single = vec.select([layer])
        applied = m * norms[hook] / float(vec[hook].norm())
        # the cached engine scores exactly what ab_accuracy(model, items, steering) does
        at_m = [single.steering(sign * applied, positions=at_question_end) for sign in (-1, 1)]
        mmlu_minus, mmlu_plus = (ABAccuracy(tuple(s)) for s in cached_ab_scores(model, mmlu, at_m))
        tqa_minus, tqa_plus = (ABAccuracy(tuple(s)) for s in cached_ab_scores(model, tqa, at_m))
        kl = {sign: kl_on_neutral(model, single.steering(sign * applied), kl_prompts) for sign in (1, -1)}
        summary_row = st.summary.iloc[0]
        results[name] = {
            "chosen_layer": layer,
            "chosen_relative_multiplier": m,
            "applied_multiplier": applied,
            "vector_norm": float(vec[hook].norm()),
            "validation_gap": gap,
            "validation_sweep": val_summary.to_dict(orient="records"),
            "test": test_summary[
                ["multiplier", "multiplier_abs", "p_matching", "n_matching", "letter_mass"]
            ].to_dict(orient="records"),
            "steerability": {
                "mean_slope": float(summary_row["mean_slope"]),
                "std_slope": float(summary_row["std_slope"]),
                "anti_steerable_share": float(summary_row["anti_steerable"]),
            },
            "mmlu_accuracy": {"-m": mmlu_minus.accuracy, "0": mmlu_base.accuracy, "+m": mmlu_plus.accuracy},
            "mmlu_p_correct": {
                "-m": mmlu_minus.p_correct,
                "0": mmlu_base.p_correct,
                "+m": mmlu_plus.p_correct,
            },
            "kl_neutral": {"+m": kl[1], "-m": kl[-1]},
            "truthfulqa_accuracy": {
                "-m": tqa_minus.accuracy,
                "0": tqa_base.accuracy,
                "+m": tqa_plus.accuracy,
            },
            "paper_llama2_7b_layer13": dict(zip(["-1", "0", "+1"], PAPER[name], strict=True)),
            "seconds": time.perf_counter() - t0,
        }
        p = {r["multiplier"]: r["p_matching"] for r in results[name]["test"]}
        common.log.info(
            "%s: layer %d, m=%g (x%.1f); test p(matching) %.3f / %.3f / %.3f; MMLU %.2f / %.2f / %.2f; "
            "KL +m %.3f; %.0f s",
            name,
            layer,
            m,
            applied,
            p[-m],
            p[0.0],
            p[m],
            mmlu_minus.accuracy,
            mmlu_base.accuracy,
            mmlu_plus.accuracy,
            kl[1],
            time.perf_counter() - t0,
        )
        partial = {"model": model.cfg.model_name, "partial": True, "behaviours": results}
        common.write_json(args.out / "caa_reproduction.json", partial, default=float)
        if name == DIAGNOSED:
            plot_sweep_heatmap(val_summary, path=args.out / "caa_validation_heatmap_corrigible.png")
            plot_slope_histogram(st, path=args.out / "caa_slopes_corrigible.png")
            acts = tlsteer.extract_activations(model, train, layers=args.layers, batch_size=16)
            fit, held = split_activations(acts, list(range(len(train) // 2)))
            diag = layer_diagnostics(vec, norms, fit, held)
            results[name]["layer_diagnostics"] = diag.drop(columns="hook").to_dict(orient="records")
            plot_layer_diagnostics(diag, path=args.out / "caa_layer_diagnostics_corrigible.png")
            plot_pca(acts, layer, path=args.out / "caa_pca_corrigible.png")

    plot_behaviour_curves(test_sweeps, path=args.out / "caa_reproduction.png")
    cos_layer = args.layers[len(args.layers) // 2]
    cos = cosine_matrix(vectors, cos_layer)
    plot_cosine_matrix(cos, path=args.out / "caa_cosines.png")
    settings = {
        k: str(v) if isinstance(v, Path) else v
        for k, v in vars(args).items()
        if k not in ("out", "tiny", "seed", "kl_prompts")
    }
    out = {
        "model": model.cfg.model_name,
        "settings": settings | {"caa_dir": str(caa_dir)},
        "residual_norms": norms,
        "mmlu_items": len(mmlu),
        "truthfulqa_items": len(tqa),
        "cosine_layer": cos_layer,
        "cosines": cos.round(4).to_dict(),
        "behaviours": results,
        "seconds": time.perf_counter() - start,
    }
    path = common.write_json(args.out / "caa_reproduction.json", out, default=float)
    common.log.info("done in %.0f s", time.perf_counter() - start)
    return path


def main(argv: list[str] | None = None) -> Path:
    p = common.parser(__doc__)
    p.add_argument("--caa-dir", type=Path, default=None, help="the CAA datasets folder (required)")
    p.add_argument("--train-pairs", type=int, default=64)
    p.add_argument(
        "--letters",
        choices=["balanced", "first"],
        default="balanced",
        help="training pairs: half answered (A) and half (B) (default), or simply the first ones",
    )
    p.add_argument("--val-items", type=int, default=40)
    p.add_argument("--layers", type=int, nargs="+", default=[6, 9, 12, 15, 18])
    p.add_argument("--rel-multipliers", type=float, nargs="+", default=[0.1, 0.2, 0.4])
    p.add_argument("--mmlu-items", type=int, default=57)
    p.add_argument("--behaviours", nargs="+", default=list(CAA_BEHAVIOURS), choices=CAA_BEHAVIOURS)
    p.add_argument("--test-items", type=int, default=50)
    p.add_argument("--truthfulqa-items", type=int, default=40)
    p.add_argument("--kl-prompts", type=int, default=30, help="neutral texts for KL")
    return common.run(body, p, argv, TINY)


if __name__ == "__main__":
    main()
