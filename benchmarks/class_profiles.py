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

    python benchmarks/class_profiles.py [--sets speaking_styles attitude_domain] [--layer 6]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import tlsteer
from tlsteer.eval.class_plots import plot_class_features, plot_class_map, plot_class_similarity
from tlsteer.eval.judge import class_judge, load_embedder
from tlsteer.sae import class_profile, inspect_feature, load_embedded_sae
from tlsteer.sae.adapter import logit_lens

ROOT = Path(__file__).resolve().parents[1]


def tokens_of(model, sae, feature: int, n: int = 4) -> str:
    promoted, _ = logit_lens(model, sae.W_dec[feature], n)
    return " ".join(repr(t) for t, _ in promoted)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sets", nargs="+", default=["speaking_styles", "attitude_domain"])
    parser.add_argument("--layer", type=int, default=None, help="default: the lowest shipped SAE")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--bootstrap", type=int, default=50)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    start = time.perf_counter()
    model = tlsteer.load_model()
    sae = load_embedded_sae(args.layer)
    embedder = load_embedder()
    out: dict = {"hook": sae.cfg.metadata.hook_name, "sets": {}}
    text: list[str] = []
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.sets:
        ds = tlsteer.load_class_dataset(name)
        train, _, _ = ds.split(seed=0)
        profile = class_profile(model, sae, train, n_bootstrap=args.bootstrap, seed=0)
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
        text.append(f"==== {name} at {profile.hook_name} (train sizes {train.sizes}) ====")
        text.append(
            f"judge: held-out accuracy {judge.held_out_accuracy:.3f} on {judge.n_test} texts"
            f"{' (FLAGGED)' if judge.flagged else ''}; on the {sum(ds.sizes.values())} example replies "
            f"{on_examples:.3f}"
        )
        all_texts = [t for c in ds.classes for t in ds.texts(model, c)]
        for c in ds.classes:
            table = profile.distinctive(c, k=args.k)
            table["top_tokens"] = [tokens_of(model, sae, int(f)) for f in table.feature]
            row["distinctive"][c] = table.round(4).to_dict(orient="records")
            text.append(f"-- distinctive features of {c} (stable >= 0.5 of {args.bootstrap} resamples) --")
            cols = [
                "feature",
                "mean_in",
                "mean_out",
                "effect",
                "auroc",
                "frequency_in",
                "stability",
                "top_tokens",
            ]
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
        plot_class_features(profile, k=3, path=args.out / f"class_{name}_features.png")
        plot_class_map(profile, path=args.out / f"class_{name}_map.png")
        plot_class_similarity(profile, centred=True, path=args.out / f"class_{name}_similarity.png")
        out["sets"][name] = row
        print("\n".join(text[-4:]), flush=True)
    out["seconds"] = round(time.perf_counter() - start, 1)
    (args.out / "class_profiles.json").write_text(json.dumps(out, indent=1) + "\n")
    (args.out / "class_profiles.txt").write_text("\n".join(text) + "\n")
    print(f"done in {out['seconds']:.0f} s")


if __name__ == "__main__":
    main()
