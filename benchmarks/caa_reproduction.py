"""CAA on the embedded model: all 7 behaviours, layer and strength chosen on validation data.

For each behaviour: build a vector at several layers from pairs of the generate set, half of them
with the matching answer (A) and half (B) unless ``--letters first``;
sweep layers x relative multipliers on held-out generate items (the validation split, never the
test set) with the cached sweep engine; choose the (layer, multiplier) with the largest
p(matching) gap between +m and -m; then score the 50-item test set at several multipliers on both
sides of zero, fit per-item steerability slopes, and measure MMLU accuracy and KL on neutral text
at the chosen setting. Multipliers are relative: m means a vector whose norm is m times the mean
residual norm at that hook on neutral text.

    python benchmarks/caa_reproduction.py --caa-dir ../shared/caa
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import tlsteer
from tlsteer.data import CAA_BEHAVIOURS, load_ab_items, load_neutral_text
from tlsteer.eval.ab import ABAccuracy, ab_accuracy, kl_on_neutral
from tlsteer.eval.cached import Setting, cached_ab_scores
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--caa-dir", type=Path, required=True)
    parser.add_argument("--train-pairs", type=int, default=64)
    parser.add_argument(
        "--letters",
        choices=["balanced", "first"],
        default="balanced",
        help="training pairs: half answered (A) and half (B) (default), or simply the first ones",
    )
    parser.add_argument("--val-items", type=int, default=40)
    parser.add_argument("--layers", type=int, nargs="+", default=[6, 9, 12, 15, 18])
    parser.add_argument("--rel-multipliers", type=float, nargs="+", default=[0.1, 0.2, 0.4])
    parser.add_argument("--mmlu-items", type=int, default=57)
    parser.add_argument("--behaviours", nargs="+", default=list(CAA_BEHAVIOURS), choices=CAA_BEHAVIOURS)
    parser.add_argument("--test-items", type=int, default=50)
    parser.add_argument("--truthfulqa-items", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)
    start = time.perf_counter()

    model = tlsteer.load_model()
    neutral = load_neutral_text()
    hooks = [f"blocks.{layer}.hook_resid_post" for layer in args.layers]
    norms = residual_norms(model, neutral, hooks)
    mmlu_all = load_ab_items(args.caa_dir / "test" / "mmlu" / "mmlu.json")
    by_category: dict[str, object] = {}
    for item in mmlu_all:  # one item per category first, for a spread of subjects
        by_category.setdefault(item.extra.get("category", ""), item)
    mmlu = list(by_category.values())[: args.mmlu_items]
    mmlu_base = ab_accuracy(model, mmlu)
    tqa = load_ab_items(args.caa_dir / "test" / "truthfulqa" / "truthful_qa.json")[: args.truthfulqa_items]
    tqa_base = ab_accuracy(model, tqa)
    kl_prompts = neutral[:30]
    grid = sorted({-m for m in args.rel_multipliers} | {0.0} | set(args.rel_multipliers))

    results: dict[str, dict] = {}
    test_sweeps = {}
    vectors = {}
    for name in args.behaviours:
        t0 = time.perf_counter()
        gen_path = args.caa_dir / "generate" / name / "generate_dataset.json"
        pairs = tlsteer.load_caa_dataset(gen_path, model)
        gen_items = load_ab_items(gen_path)
        if args.train_pairs + args.val_items > len(pairs):
            raise SystemExit(f"{name}: {len(pairs)} pairs, fewer than train + validation")
        val = gen_items[-args.val_items :]
        if args.letters == "first":
            train = pairs[: args.train_pairs]
        else:  # as many pairs whose matching answer is (A) as (B), so the letter itself cancels
            pool = range(len(pairs) - args.val_items)
            by_letter = [[i for i in pool if gen_items[i].matching == f"({x})"] for x in "AB"]
            half = args.train_pairs // 2
            if min(len(ids) for ids in by_letter) < half:
                raise SystemExit(f"{name}: fewer than {half} training pairs answered (A) or (B)")
            train = [pairs[i] for i in sorted(by_letter[0][:half] + by_letter[1][:half])]
        vec = tlsteer.train_steering_vector(model, train, layers=args.layers, batch_size=16)
        vectors[name] = vec
        val_items = sweep_items(
            model, val, vec, args.layers, grid, relative=True, norms=norms, outside_ab="zero"
        )
        val_summary = summarize_sweep(val_items)
        best = None
        for layer in args.layers:
            rows = val_summary[val_summary["layer"] == layer].set_index("multiplier")["p_matching"]
            for m in args.rel_multipliers:
                gap = float(rows[m] - rows[-m])
                if best is None or gap > best[0]:
                    best = (gap, layer, m)
        gap, layer, m = best
        test = load_ab_items(args.caa_dir / "test" / name / "test_dataset_ab.json")[: args.test_items]
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
        # the cached engine scores exactly what ab_accuracy(model, items, [(single, +-applied)]) does
        at_m = [Setting(hook, single[hook], sign * applied) for sign in (-1, 1)]
        mmlu_minus, mmlu_plus = (ABAccuracy(tuple(s)) for s in cached_ab_scores(model, mmlu, at_m))
        tqa_minus, tqa_plus = (ABAccuracy(tuple(s)) for s in cached_ab_scores(model, tqa, at_m))
        kl = {sign: kl_on_neutral(model, [(single, sign * applied)], kl_prompts) for sign in (1, -1)}
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
        print(
            f"{name}: layer {layer}, m={m:g} (x{applied:.1f}); test p(matching) "
            f"{p[-m]:.3f} / {p[0.0]:.3f} / {p[m]:.3f}; MMLU {mmlu_minus.accuracy:.2f} / "
            f"{mmlu_base.accuracy:.2f} / {mmlu_plus.accuracy:.2f}; KL +m {kl[1]:.3f}; "
            f"{time.perf_counter() - t0:.0f} s",
            flush=True,
        )
        partial = {"model": model.cfg.model_name, "partial": True, "behaviours": results}
        (args.out / "caa_reproduction.json").write_text(json.dumps(partial, indent=1, default=float))
        if name == "corrigible-neutral-HHH":
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
    out = {
        "model": model.cfg.model_name,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "out"},
        "residual_norms": norms,
        "mmlu_items": len(mmlu),
        "truthfulqa_items": len(tqa),
        "cosine_layer": cos_layer,
        "cosines": cos.round(4).to_dict(),
        "behaviours": results,
        "seconds": time.perf_counter() - start,
    }
    (args.out / "caa_reproduction.json").write_text(json.dumps(out, indent=1, default=float))
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
