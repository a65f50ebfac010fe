"""Built-in class sets in raw and SAE feature space: distinctive and shared features, similarities, judges.

For each class set (default: ``speaking_styles`` and ``attitude_domain``) at the shipped SAE's hook:

- ``tlsteer.sae.class_profile`` on the training split (seed 0; each example read as the mean over
  its reply's tokens), ``--bootstrap`` resamples for stability;
- per class, the top ``--k`` distinctive features (ranked by standardized effect; AUROC and
  stability beside), only stable ones (>= 0.5), each with its top logit-lens tokens; the top
  feature of each class is inspected (top activating tokens in context over all examples);
- the features shared by all classes (active in >= 50% of every class's examples, ranked by the
  smallest class mean), and for the 2 x 2 set the features shared within each factor level (e.g.
  both ``enjoy`` classes), ranked by contrast: the group's smallest mean minus the largest mean
  of the other classes;
- the class similarity matrices (cosine of centroids, raw and feature space, plain and centred);
- the K-class judge's held-out accuracy (flagged below 0.85) and its accuracy on the examples'
  replies (texts it never saw).

Writes ``benchmarks/results/class_profiles.{json,txt}`` and per set
``class_<set>_features.png``, ``class_<set>_map.png``, ``class_<set>_similarity.png``.

With ``--codebook`` the dictionary is the shipped codebook at the layer instead of the SAE (a
feature is a code, its activation 1 when it is among the token's k, so a class mean is a firing
rate); the files are ``class_profiles_codebook.{json,txt}`` and ``class_<set>_codebook_*.png``.

    python benchmarks/class_profiles.py [--sets speaking_styles attitude_domain] [--layer 6] [--codebook]
"""

from __future__ import annotations

import time
from pathlib import Path

import _common as common
import torch

from tlsteer.eval.class_plots import plot_class_features, plot_class_map, plot_class_similarity
from tlsteer.eval.judge import class_judge
from tlsteer.sae import class_profile, inspect_feature
from tlsteer.sae.adapter import as_feature_dictionary, logit_lens

TINY = {"bootstrap": 2, "k": 3}
DISTINCTIVE_COLUMNS = ["feature", "mean_in", "mean_out", "effect", "auroc", "frequency_in", "stability"]


def tokens_of(model, sae, feature: int, n: int = 4) -> str:
    promoted, _ = logit_lens(model, as_feature_dictionary(sae).decoder_rows(torch.tensor([feature]))[0], n)
    return " ".join(repr(t) for t, _ in promoted)


def profile_set(model, sae, ds, embedder, args) -> tuple[dict, list[str], object]:
    """One class set's JSON row, its text report and its profile."""
    train, _, _ = ds.split(seed=args.seed)
    profile = class_profile(model, sae, train, n_bootstrap=args.bootstrap, seed=args.seed)
    judge = class_judge(ds, embedder)
    on_examples = judge.accuracy({c: [e.response for e in ds.examples[c]] for c in ds.classes})
    row: dict = {
        "classes": list(ds.classes),
        "train_sizes": train.sizes,
        "judge": {
            "held_out_accuracy": judge.held_out_accuracy,
            "n_test": judge.n_test,
            "flagged": judge.flagged,
            "accuracy_on_example_replies": on_examples,
        },
        "distinctive": {},
        "similarity": {},
    }
    text = [f"==== {ds.name} at {profile.hook_name} (train sizes {train.sizes}) ===="]
    text.append(
        f"judge: held-out accuracy {judge.held_out_accuracy:.3f} on {judge.n_test} texts"
        f"{' (FLAGGED)' if judge.flagged else ''}; on the {sum(ds.sizes.values())} example replies "
        f"{on_examples:.3f}"
    )
    all_texts = [t for c in ds.classes for t in ds.texts(model, c)]
    for c in ds.classes:
        # only the stable ones, as this report has always shown them (the library's default keeps
        # the top k whatever their stability: benchmarks/distinctive_generalisation.py)
        table = profile.distinctive(c, k=args.k, stable_only=True, min_stability=0.5)
        table["top_tokens"] = [tokens_of(model, sae, int(f)) for f in table.feature]
        row["distinctive"][c] = table.round(4).to_dict(orient="records")
        text.append(f"-- distinctive features of {c} (stable >= 0.5 of {args.bootstrap} resamples) --")
        cols = [*DISTINCTIVE_COLUMNS, "top_tokens"]
        text.append(table[cols].round(3).to_string(index=False) if len(table) else "(none stable)")
        if len(table):
            report = inspect_feature(model, sae, int(table.feature[0]), all_texts, k=4)
            row["distinctive"][c + ":inspection"] = str(report)
            text.append(str(report))
    groups = {"all classes": list(ds.classes)}
    for factor, labels in ds.factors.items():
        for level in sorted(set(labels.values())):
            groups[f"{factor}={level}"] = [c for c in ds.classes if labels[c] == level]
    row["shared"] = {}
    for label, classes in groups.items():
        # a group smaller than all classes: what it shares and the rest lacks (contrast)
        rank_by = "min_mean" if len(classes) == len(ds.classes) else "contrast"
        shared = profile.shared(k=args.k, classes=classes, rank_by=rank_by)
        shared["top_tokens"] = [tokens_of(model, sae, int(f)) for f in shared.feature]
        row["shared"][label] = shared.round(4).to_dict(orient="records")
        text.append(
            f"-- features shared by {label} {classes} (active in >= 50% of each; ranked by {rank_by}) --"
        )
        text.append(shared.round(3).to_string(index=False) if len(shared) else "(none)")
    for space in ("raw", "feature"):
        for centred in (False, True):
            key = f"{space}{'_centred' if centred else ''}"
            sim = profile.similarity(space, centred=centred)
            row["similarity"][key] = sim.round(4).to_dict()
            text.append(f"-- cosine of class centroids, {key} --\n{sim.round(3).to_string()}")
    return row, text, profile


def body(args) -> Path:
    start = time.perf_counter()
    model = common.load_model(args)
    sae = (
        common.load_codebook(args, model, args.layer)
        if args.codebook
        else common.load_sae(args, model, args.layer)
    )
    embedder = common.load_embedder(args)
    suffix = "_codebook" if args.codebook else ""
    out: dict = {
        "hook": as_feature_dictionary(sae).hook_name,
        "dictionary": "codebook" if args.codebook else "sae",
        "sets": {},
    }
    text: list[str] = []
    for name in args.sets:
        row, lines, profile = profile_set(model, sae, common.load_class_dataset(args, name), embedder, args)
        plot_class_features(profile, k=3, path=args.out / f"class_{name}{suffix}_features.png")
        plot_class_map(profile, path=args.out / f"class_{name}{suffix}_map.png")
        plot_class_similarity(profile, centred=True, path=args.out / f"class_{name}{suffix}_similarity.png")
        out["sets"][name] = row
        text += lines
        common.log.info("%s", "\n".join(text[-4:]))
    out["seconds"] = round(time.perf_counter() - start, 1)
    path = common.write_json(args.out / f"class_profiles{suffix}.json", out)
    (args.out / f"class_profiles{suffix}.txt").write_text("\n".join(text) + "\n")
    common.log.info("done in %.0f s", out["seconds"])
    return path


def main(argv: list[str] | None = None) -> Path:
    p = common.parser(__doc__)
    p.add_argument("--sets", nargs="+", default=["speaking_styles", "attitude_domain"])
    p.add_argument("--layer", type=int, default=None, help="default: the lowest shipped SAE")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--bootstrap", type=int, default=50)
    p.add_argument("--codebook", action="store_true", help="the shipped codebook instead of the SAE")
    return common.run(body, p, argv, TINY)


if __name__ == "__main__":
    main()
