"""A built-in concept in the shipped SAEs' feature space: formulas, selection, table, inspections.

For the concept (default ``sentiment``) and each shipped SAE layer:

1. the conversations of ``tlsteer.data.load_builtin_replies`` (the first 60 pairs), each read as
   the mean of its reply's feature activations, give a :class:`FeatureVector` by each formula:
   ``paired``, ``sums`` (the same pairs: equal to ``paired`` up to float error) and
   ``class_means`` on an unpaired split (40 positives against 40 other negatives);
2. the raw-space vector of the same data (``raw_vector``) is compared with the decoded feature
   vector (cosine), and with the negative control ``encode_steering_vector`` (the raw vector
   pushed through the encoder);
3. selection: features that fire on the first token of the chat prompts are dropped (FGAA), then
   those denser than ``--max-density`` on the reference texts, the ``--candidates`` largest are
   kept, and the ``--keep`` of highest output score (``output_scores``, after Arad et al. 2025);
4. the table of the selected features (id, value, density, output score, top logit-lens tokens)
   and the inspection of the top ``--inspect`` features (top activating tokens in context, on the
   reference texts and all 160 replies).

Reference texts: tlsteer's 64 open prompts and 60 neutral prompts, chat-formatted, with the 160
replies of the concept. Writes ``benchmarks/results/sae_features_<concept>.{json,txt}`` and a bar
chart per layer ``sae_features_<concept>_layer<L>.png``.

    python benchmarks/sae_concept_features.py [--concept sentiment] [--layers 6 12]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import tlsteer
from tlsteer.data import ContrastSet, load_builtin_replies, load_open_prompts, reply_span
from tlsteer.sae import (
    embedded_sae_layers,
    encode_steering_vector,
    feature_stats,
    feature_vector,
    inspect_feature,
    load_embedded_sae,
    output_scores,
    plot_feature_vector,
    raw_vector,
)

ROOT = Path(__file__).resolve().parents[1]


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=0))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concept", default="sentiment", choices=tlsteer.BUILTIN_DATASETS)
    parser.add_argument("--layers", type=int, nargs="+", default=None, help="default: every shipped SAE")
    parser.add_argument("--max-density", type=float, default=0.1)
    parser.add_argument("--candidates", type=int, default=40)
    parser.add_argument("--keep", type=int, default=10)
    parser.add_argument("--inspect", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    start = time.perf_counter()
    model = tlsteer.load_model()
    pairs = load_builtin_replies(args.concept, model)
    train = pairs[:60]
    unpaired = ContrastSet([p for p, _ in train[:40]], [n for _, n in train[20:]])
    span = reply_span(model)
    reference = [tlsteer.chat_prompt(model, p) for p in load_open_prompts() + tlsteer.load_neutral_text()]
    replies = [t for pair in pairs for t in pair]
    out: dict = {"concept": args.concept, "n_train_pairs": len(train), "layers": {}}
    text: list[str] = []
    for layer in args.layers or list(embedded_sae_layers()):
        sae = load_embedded_sae(layer)
        hook = sae.cfg.metadata.hook_name
        fv = {f: feature_vector(model, sae, train, f, read="mean", span=span) for f in ("paired", "sums")}
        fv["class_means"] = feature_vector(model, sae, unpaired, "class_means", read="mean", span=span)
        raw = raw_vector(model, train, hook, read="mean", span=span)
        decoded = fv["paired"].to_steering_vector(sae)
        control = encode_steering_vector(sae, raw)
        stats = feature_stats(model, sae, reference + replies)
        sink = stats.first_token_features()
        candidates = fv["paired"].drop_first_token_features(sink).max_density(args.max_density, stats.density)
        candidates = candidates.top_k(args.candidates)
        scores = output_scores(model, sae, candidates)
        selected = candidates.by_output_score(scores, k=args.keep)
        table = selected.table(model, sae, k=args.keep, densities=stats.density)
        table.insert(3, "output_score", [float(scores[f]) for f in table["feature"]])
        reports = [
            inspect_feature(model, sae, int(f), reference + replies, k=5)
            for f in table["feature"][: args.inspect]
        ]
        plot_feature_vector(
            selected, model, sae, k=args.keep, path=args.out / f"sae_features_{args.concept}_layer{layer}.png"
        )
        row = {
            "hook": hook,
            "nonzero_features": {f: len(v.features) for f, v in fv.items()},
            "paired_vs_sums_max_abs_diff": float((fv["paired"].values - fv["sums"].values).abs().max()),
            "cos_paired_class_means_feature_space": cosine(fv["paired"].values, fv["class_means"].values),
            "cos_decoded_paired_vs_raw": cosine(decoded[hook], raw[hook]),
            "cos_decoded_selected_vs_raw": cosine(selected.to_steering_vector(sae)[hook], raw[hook]),
            "cos_encoded_control_vs_paired_feature_space": cosine(control.values, fv["paired"].values),
            "control_nonzero_features": len(control.features),
            "first_token_features": len(sink),
            "dead_on_reference": len(stats.dead()),
            "candidates": len(candidates.features),
            "selected": table.to_dict(orient="records"),
            "inspections": [str(r) for r in reports],
        }
        out["layers"][layer] = row
        text.append(f"== {args.concept} at {hook} ==")
        text.append(
            json.dumps({k: v for k, v in row.items() if k not in ("selected", "inspections")}, indent=1)
        )
        text.append(table.to_string(index=False))
        text += [str(r) + "\n" for r in reports]
        print("\n".join(text[-3 - len(reports) :]), flush=True)
    out["seconds"] = round(time.perf_counter() - start, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"sae_features_{args.concept}.json").write_text(json.dumps(out, indent=1) + "\n")
    (args.out / f"sae_features_{args.concept}.txt").write_text("\n".join(text) + "\n")
    print(f"done in {out['seconds']:.0f} s")


if __name__ == "__main__":
    main()
