"""Distinctive features that generalize: how well a class's distinctive features recognise held-out examples.

For every built-in class set at each shipped SAE (layers 6 and 12), every example is read once
(the mean over its reply's tokens of the SAE's features, as ``tlsteer.sae.class_profile`` reads)
and cut by the set's own ``split(seed)`` (60 / 20 / 20). A profile of the training part names
each class's distinctive features (``distinctive(c, k)``, ranked by standardized effect, with
the stability filter); ``tlsteer.recognition.recognise`` then assigns each validation and test
example to the class whose distinctive features it activates most (mean over the features,
standardized by the training examples, or raw with ``score="mean"``; argmax, ties split) and
reports the accuracy per class and overall (mean over classes; chance 1 / K) beside the number
of features that passed the filter per class (with a note where fewer than k did).

Grid: layer x stability threshold (off, 0.3, 0.5, 0.8) x k (5, 10, 20) x resamples (50, 100)
x score (standardized, mean). The defaults are chosen by the mean validation accuracy over the
sets (configurations within ``--tie`` of the best count as tied, and the simplest of those wins:
no filter before a filter, fewer resamples, the plain mean score, smaller k, the lower layer) and
reported on the test parts, which took no part in the choice.

Also issue 22's measurement: ``emotions`` with 30 training and 15 held-out examples per class
(``split(0, validation=0.0, test=1/3)``), k = 10, 50 resamples, at both layers, with the old
default filter (0.5), without it, and with the chosen defaults.

Writes ``benchmarks/results/distinctive_generalisation.{json,png}``.

    python benchmarks/distinctive_generalisation.py [--sets ...] [--tiny]
"""

from __future__ import annotations

import time
from pathlib import Path

import _common as common
import numpy as np
import torch

from tlsteer.classes import CLASS_DATASETS, ClassDataset, class_reads
from tlsteer.profile import ClassProfile
from tlsteer.recognition import RECOGNITION_SCORES, recognise
from tlsteer.sae import SAEClassProfile
from tlsteer.sae.adapter import as_feature_dictionary

TINY = {"k": [2, 3], "resamples": [2, 3], "thresholds": [0.5]}
OLD_DEFAULT = {"min_stability": 0.5, "k": 10, "resamples": 50}
"""class_profile / distinctive before this benchmark: 50 resamples, k = 10, stability >= 0.5."""


def read_set(model, sae, ds: ClassDataset, batch_size: int) -> dict:
    """Every example's feature row, keyed by class then example (read in one batched stream)."""
    found = as_feature_dictionary(sae, None, model)
    rows = class_reads(
        model,
        ds,
        found.hook_name,
        transform=lambda r: found.encode(r).float().to(r.device),
        d_out=found.width,
        batch_size=batch_size,
    )
    return {"found": found, "rows": {c: dict(zip(ds.examples[c], rows[c], strict=True)) for c in ds.classes}}


def part_rows(read: dict, part: ClassDataset) -> dict[str, torch.Tensor]:
    return {c: torch.stack([read["rows"][c][e] for e in part.examples[c]]) for c in part.classes}


def profile_of(read: dict, train: ClassDataset, resamples: int, seed: int) -> ClassProfile:
    """A feature-space profile of the training part (an SAEClassProfile holding the dictionary)."""
    return SAEClassProfile.from_representations(
        None,
        read["found"].hook_name,
        part_rows(read, train),
        dataset_name=train.name,
        n_bootstrap=resamples,
        seed=seed,
        sae=read["found"],
    )


def pooled(results: list) -> float:
    """Balanced accuracy over several held-out parts together (their confusion counts summed)."""
    classes = results[0].classes
    correct = {c: sum(r.confusion[c][c] for r in results) for c in classes}
    total = {c: sum(sum(r.confusion[c].values()) for r in results) for c in classes}
    return float(np.mean([correct[c] / total[c] for c in classes]))


def grid_rows(read: dict, parts: tuple, args, layer: int) -> list[dict]:
    """Every configuration of the grid on one set at one layer."""
    train, val, test = parts
    held = {"validation": part_rows(read, val), "test": part_rows(read, test)}
    rows = []
    plans = [(None, 0)] + [(t, r) for t in args.thresholds for r in args.resamples]
    for k in args.k:
        tables_by_resamples = {}
        for threshold, resamples in plans:
            if resamples not in tables_by_resamples:  # one bootstrap serves every threshold
                profile = profile_of(read, train, resamples, args.seed)
                tables = {c: profile.distinctive(c, k, stable_only=False) for c in profile.classes}
                tables_by_resamples[resamples] = (profile, tables)
            profile, tables = tables_by_resamples[resamples]
            for score in RECOGNITION_SCORES:
                got = {
                    name: recognise(
                        profile,
                        rows,
                        k=k,
                        stable_only=threshold is not None,
                        min_stability=threshold if threshold is not None else 0.0,
                        score=score,
                        tables=tables,
                    )
                    for name, rows in held.items()
                }
                first = got["validation"]
                rows.append(
                    {
                        "layer": layer,
                        "min_stability": threshold,
                        "k": k,
                        "resamples": resamples or None,
                        "score": score,
                        "validation": first.overall,
                        "test": got["test"].overall,
                        "held_out": pooled(list(got.values())),
                        "chance": first.chance,
                        "per_class_validation": dict(first.accuracy),
                        "per_class_test": dict(got["test"].accuracy),
                        "n_features": first.n_features,
                        "short": list(first.short),
                        "note": first.note(),
                    }
                )
    return rows


def config_key(row: dict) -> tuple:
    return (row["layer"], row["min_stability"], row["k"], row["resamples"], row["score"])


def summarize(per_set: dict[str, list[dict]]) -> list[dict]:
    """Per configuration: the mean over sets of validation, test and pooled held-out accuracy."""
    by_key: dict[tuple, list[dict]] = {}
    for rows in per_set.values():
        for row in rows:
            by_key.setdefault(config_key(row), []).append(row)
    out = []
    for key, rows in by_key.items():
        layer, threshold, k, resamples, score = key
        out.append(
            {
                "layer": layer,
                "min_stability": threshold,
                "k": k,
                "resamples": resamples,
                "score": score,
                "n_sets": len(rows),
                **{m: float(np.mean([r[m] for r in rows])) for m in ("validation", "test", "held_out")},
                "sets_with_short_classes": sum(bool(r["short"]) for r in rows),
            }
        )
    return sorted(out, key=lambda r: -r["validation"])


def simplicity(row: dict) -> tuple:
    """Smaller is simpler: no filter, fewer resamples, the plain mean, smaller k, the lower layer."""
    return (
        row["min_stability"] is not None,
        row["resamples"] or 0,
        row["score"] != "mean",
        row["k"],
        row["layer"],
    )


def choose(summary: list[dict], tie: float) -> dict:
    best = max(r["validation"] for r in summary)
    tied = [r for r in summary if r["validation"] >= best - tie]
    return min(tied, key=simplicity)


def find(summary: list[dict], **want) -> dict | None:
    hits = [r for r in summary if all(r[key] == value for key, value in want.items())]
    return hits[0] if hits else None


def issue_measurement(model, saes: dict, args, chosen: dict, reads: dict) -> dict:
    """emotions, 30 training / 15 held-out examples per class, at every layer (issue 22, item 8)."""
    ds = common.load_class_dataset(args, "emotions")
    train, _, test = ds.split(args.seed, validation=0.0, test=1 / 3)
    out: dict = {"train_sizes": train.sizes, "held_out_sizes": test.sizes, "layers": {}}
    settings = {
        "old_default_filter": {"stable_only": True, "min_stability": 0.5, "k": 10, "resamples": 50},
        "no_filter": {"stable_only": False, "min_stability": 0.0, "k": 10, "resamples": 0},
        "chosen_default": {
            "stable_only": chosen["min_stability"] is not None,
            "min_stability": chosen["min_stability"] or 0.0,
            "k": chosen["k"],
            "resamples": chosen["resamples"] or 0,
        },
    }
    for layer, sae in saes.items():
        read = reads.get(("emotions", layer)) or read_set(model, sae, ds, args.batch_size)
        held = part_rows(read, test)
        row = {}
        for label, s in settings.items():
            k = min(s["k"], max(args.k))
            profile = profile_of(read, train, s["resamples"], args.seed)
            for score in RECOGNITION_SCORES:
                got = recognise(
                    profile,
                    held,
                    k=k,
                    stable_only=s["stable_only"],
                    min_stability=s["min_stability"],
                    score=score,
                )
                row[f"{label}/{score}"] = got.to_dict() | {"features": None}
                common.log.info("emotions layer %s %s/%s: %s", layer, label, score, str(got).splitlines()[0])
        out["layers"][str(layer)] = row
    return out


def plot(per_set: dict, summary: list[dict], chosen: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = sorted({r["layer"] for r in summary})
    thresholds = [None, *sorted({r["min_stability"] for r in summary if r["min_stability"] is not None})]
    labels = ["off" if t is None else f">= {t:g}" for t in thresholds]
    fig, axes = plt.subplots(1, len(layers) + 1, figsize=(5 * (len(layers) + 1), 4), sharey=True)
    resamples = chosen["resamples"] or min(r["resamples"] for r in summary if r["resamples"])

    def pick(rows, layer, t, k, score):
        want = {"layer": layer, "min_stability": t, "k": k, "score": score}
        want["resamples"] = None if t is None else resamples
        hit = [r for r in rows if all(r[key] == v for key, v in want.items())]
        return hit[0]["held_out"] if hit else np.nan

    for ax, layer in zip(axes, layers, strict=False):
        for name, rows in per_set.items():
            ax.plot(
                labels,
                [pick(rows, layer, t, chosen["k"], chosen["score"]) for t in thresholds],
                "o-",
                label=name,
            )
        for chance in (1 / 4, 1 / 3):
            ax.axhline(chance, color="grey", ls=":", lw=1)
        ax.set_title(f"layer {layer}: k={chosen['k']}, {chosen['score']} score, by set")
        ax.set_xlabel("stability filter")
    axes[0].set_ylabel("held-out accuracy (val + test); chance 1/4, 1/3 dotted")
    axes[0].legend(fontsize=8)
    ax = axes[-1]
    for layer in layers:
        for k in sorted({r["k"] for r in summary}):
            ys = [pick(summary, layer, t, k, chosen["score"]) for t in thresholds]
            ax.plot(labels, ys, "o-" if layer == layers[0] else "s--", label=f"layer {layer}, k={k}")
    ax.set_title(f"mean over sets ({chosen['score']} score)")
    ax.set_xlabel("stability filter")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def body(args) -> Path:
    start = time.perf_counter()
    model = common.load_model(args)
    layers = args.layers or common.sae_layers(args)
    saes = {layer: common.load_sae(args, model, layer) for layer in layers}
    per_set: dict[str, list[dict]] = {}
    sizes, reads = {}, {}
    for name in args.sets:
        ds = common.load_class_dataset(args, name)
        parts = ds.split(seed=args.seed)
        sizes[name] = {p.name: p.sizes for p in parts}
        per_set[name] = []
        for layer, sae in saes.items():
            read = reads[name, layer] = read_set(model, sae, ds, args.batch_size)
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # small tensors: threads only contend
            try:
                per_set[name] += grid_rows(read, parts, args, layer)
            finally:
                torch.set_num_threads(threads)
            common.log.info("%s layer %s done at %.0f s", name, layer, time.perf_counter() - start)
    summary = summarize(per_set)
    chosen = choose(summary, args.tie)
    old = {**OLD_DEFAULT, "layer": min(layers)}
    old = {key: min(max(args.k), v) if key == "k" else v for key, v in old.items()}
    baselines = {
        f"old_default/{score}": find(summary, **old, score=score) for score in RECOGNITION_SCORES
    } | {
        f"no_filter_layer{layer}_k10/{score}": find(
            summary, layer=layer, min_stability=None, k=min(10, max(args.k)), score=score
        )
        for layer in layers
        for score in RECOGNITION_SCORES
    }
    out = {
        "rule": (
            "each held-out example goes to the class whose distinctive features (distinctive(c, k), "
            "effect ranking, after the stability filter) have the highest mean value on it, each "
            "feature standardized by the training examples (score 'standardized') or raw ('mean'); "
            "ties split evenly; accuracy per class, overall = mean over classes, chance = 1/K"
        ),
        "choice": (
            f"highest mean validation accuracy over the sets; configurations within {args.tie} of it "
            "are tied, and the simplest wins (no filter, fewer resamples, mean score, smaller k, "
            "lower layer); test accuracy reported beside, not used"
        ),
        "sets": list(args.sets),
        "split_sizes": sizes,
        "grid": {
            "layers": list(layers),
            "min_stability": [None, *args.thresholds],
            "k": list(args.k),
            "resamples": list(args.resamples),
            "score": list(RECOGNITION_SCORES),
        },
        "chosen": chosen,
        "baselines": baselines,
        "summary": summary,
        "per_set": per_set,
    }
    if "emotions" in args.sets:
        out["issue_22_emotions"] = issue_measurement(model, saes, args, chosen, reads)
    out["seconds"] = round(time.perf_counter() - start, 1)
    path = common.write_json(args.out / "distinctive_generalisation.json", out)
    plot(per_set, summary, chosen, args.out / "distinctive_generalisation.png")
    common.log.info("chosen: %s", chosen)
    common.log.info("done in %.0f s", out["seconds"])
    return path


def main(argv: list[str] | None = None) -> Path:
    p = common.parser(__doc__)
    p.add_argument("--sets", nargs="+", default=list(CLASS_DATASETS), choices=CLASS_DATASETS)
    p.add_argument("--layers", nargs="+", type=int, default=None, help="default: every shipped SAE")
    p.add_argument("--k", nargs="+", type=int, default=[5, 10, 20])
    p.add_argument("--thresholds", nargs="+", type=float, default=[0.3, 0.5, 0.8])
    p.add_argument("--resamples", nargs="+", type=int, default=[50, 100])
    p.add_argument("--tie", type=float, default=0.01, help="validation accuracy within this of the best ties")
    p.add_argument("--batch-size", type=int, default=16)
    return common.run(body, p, argv, TINY)


if __name__ == "__main__":
    main()
