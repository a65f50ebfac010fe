"""A built-in concept in the shipped SAEs' feature space: formulas, selection, table, inspections.

For the concept (default ``sentiment``) and each shipped SAE layer:

1. the conversations of ``tlsteer.data.load_builtin_replies`` (the first 60 pairs), each read as
   the mean of its reply's feature activations, give a :class:`FeatureVector` by each formula:
   ``paired``, ``sums`` (the same pairs: equal to ``paired`` up to float error) and
   ``class_means`` on an unpaired split (40 positives against 40 other negatives);
2. the raw-space vector of the same data (``tlsteer.train_steering_vector`` with the same read)
   is compared with the decoded feature vector (cosine), and with the negative control
   ``encode_steering_vector`` (the raw vector pushed through the encoder);
3. selection: features that fire on the first token of the chat prompts are dropped (FGAA), then
   those denser than ``--max-density`` on the reference texts, the ``--candidates`` largest are
   kept, and the ``--keep`` of highest output score (``output_scores``, after Arad et al. 2025);
4. the table of the selected features (id, value, density, output score, top logit-lens tokens)
   and the inspection of the top ``--inspect`` features (top activating tokens in context, on the
   reference texts and all 160 replies).

Reference texts: tlsteer's 64 open prompts and 60 neutral prompts, chat-formatted, with the 160
replies of the concept. Writes ``benchmarks/results/sae_features_<concept>.{json,txt}`` and a bar
chart per layer ``sae_features_<concept>_layer<L>.png``.

    python benchmarks/sae_concept_features.py [--concept sentiment] [--layers 6 12] [--tiny]
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import _common as common
import torch

import tlsteer
from tlsteer import Read
from tlsteer.data import BUILTIN_DATASETS, ContrastSet, load_builtin_replies, load_open_prompts, reply_span
from tlsteer.sae import (
    encode_steering_vector,
    feature_stats,
    feature_vector,
    inspect_feature,
    output_scores,
    plot_feature_vector,
)

TINY = {"candidates": 10, "keep": 3, "inspect": 1, "train": 12, "reference": 12}


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=0))


def layer_report(
    model, sae, layer: int, train, unpaired, reference: list[str], replies, args
) -> tuple[dict, list]:
    """One SAE layer's formulas, selection, table and inspections (its JSON row and reports)."""
    hook = sae.cfg.metadata.hook_name
    read = Read.mean(reply_span(model))
    fv = {f: feature_vector(model, sae, train, f, read=read) for f in ("paired", "sums")}
    fv["class_means"] = feature_vector(model, sae, unpaired, "class_means", read=read)
    raw = tlsteer.train_steering_vector(model, train, layers=[layer], read=read)
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
    png = args.out / f"sae_features_{args.concept}_layer{layer}.png"
    plot_feature_vector(selected, model, sae, k=args.keep, path=png)
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
    text = [f"== {args.concept} at {hook} =="]
    text.append(json.dumps({k: v for k, v in row.items() if k not in ("selected", "inspections")}, indent=1))
    text.append(table.to_string(index=False))
    text += [str(r) + "\n" for r in reports]
    return row, text


def body(args) -> Path:
    start = time.perf_counter()
    model = common.load_model(args)
    pairs = load_builtin_replies(args.concept, model)
    train = pairs[: args.train]
    third = args.train // 3
    unpaired = ContrastSet([p for p, _ in train[: 2 * third]], [n for _, n in train[third:]])
    reference = [tlsteer.chat_prompt(model, p) for p in load_open_prompts() + tlsteer.load_neutral_text()]
    replies = [t for pair in pairs for t in pair]
    if args.reference is not None:  # the first N reference texts and replies (--tiny)
        reference, replies = reference[: args.reference], replies[: args.reference]
    out: dict = {"concept": args.concept, "n_train_pairs": len(train), "layers": {}}
    text: list[str] = []
    for layer in args.layers or list(common.sae_layers(args)):
        sae = common.load_sae(args, model, layer)
        row, lines = layer_report(model, sae, layer, train, unpaired, reference, replies, args)
        out["layers"][layer] = row
        text += lines
        common.log.info("%s", "\n".join(lines[1:]))
    out["seconds"] = round(time.perf_counter() - start, 1)
    path = common.write_json(args.out / f"sae_features_{args.concept}.json", out)
    (args.out / f"sae_features_{args.concept}.txt").write_text("\n".join(text) + "\n")
    common.log.info("done in %.0f s", out["seconds"])
    return path


def main(argv: list[str] | None = None) -> Path:
    p = common.parser(__doc__)
    p.add_argument("--concept", default="sentiment", choices=BUILTIN_DATASETS)
    p.add_argument("--layers", type=int, nargs="+", default=None, help="default: every shipped SAE")
    p.add_argument("--max-density", type=float, default=0.1)
    p.add_argument("--candidates", type=int, default=40)
    p.add_argument("--keep", type=int, default=10)
    p.add_argument("--inspect", type=int, default=3)
    p.add_argument("--train", type=int, default=60, help="the first N conversations build the vectors")
    p.add_argument("--reference", type=int, default=None, help="the first N reference texts and replies")
    return common.run(body, p, argv, TINY)


if __name__ == "__main__":
    main()
