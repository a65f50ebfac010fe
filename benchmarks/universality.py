"""Universality across the two embedded models: SmolLM2-135M-Instruct and gemma-3-270m on the same examples.

Every example of the built-in class sets (``--sets``, default all four: 15 classes, 711 examples)
is read in both models, each in its own format (SmolLM2's chat template; gemma, a base model, in
tlsteer's plain "Question: ...\\nAnswer: ..." format), as the mean of the residual stream over its
reply tokens (``tlsteer.classes.class_reads_by_hook``: one stream for every block's
``hook_resid_post``, one more for the dictionaries). Row i is the same example in both models.
Three measures (``tlsteer.universality``), each against a baseline:

a. Layer to layer (``cka``): linear CKA, biased and debiased (``cka_matrix``), between every
   SmolLM2 layer and every gemma layer, over all examples pooled; the best-matching gemma layer
   for each SmolLM2 layer (and back). At the matched pairs (6, 3) and (12, 7) (after 7/30 and 4/18,
   13/30 and 8/18 blocks: the shipped SAEs' layers) the baseline is ``permutation_null``: biased
   CKA with the examples shuffled (``--n-perm`` shuffles), its mean, q95 and p-value; and the same
   with the examples shuffled only within their class (``groups``), a null that keeps what the class
   labels alone explain (CKA above it needs the models to agree on examples inside a class).
b. Class geometry (``geometry``): at the matched pairs, each model's ``class_similarity`` (centred
   cosines of the class means) of all classes pooled and of each set with K >= 4 (emotions has 3),
   in raw residual space and in the dictionary's feature space; ``similarity_correlation``
   (Spearman, Mantel test over ``--n-mantel`` relabellings: p-value and the null's q95, the chance
   level) and a ``bootstrap_similarity_correlation`` interval (``--n-boot`` resamples of examples
   within classes, 95%). The within-model reference (``within``): the same correlation between a
   model's two SAE layers (SmolLM2 6 vs 12, gemma 3 vs 7), what two depths of one model share.
c. Feature correspondence (``correspondence``): at the matched pairs, each class's ``--top``
   distinctive columns in model A (one class against all other examples, ranked by the
   difference of means over the pooled standard deviation, ties broken by the difference: the
   ranking of ``ClassProfile.distinctive`` with ``rank_by="effect"``, computed here without the
   AUROC column that method adds, seconds a class at 5000 features), pooled over the classes (a
   column distinctive for several classes counts once), then ``correspondence`` against every
   column of model B at the matched layer (Pearson over all examples; a match has r >=
   ``--threshold``), both directions. Done for the SAE features and for raw residual dimensions
   (the same rule, matched among the other model's dimensions), so the two compare. Reported: the
   share with a match, the shuffled baseline (share's mean and q95 over ``--n-perm`` shuffles of
   the examples) and the within-class one (shuffles inside each class: a feature of B that only
   tells the classes apart still matches under it, so a share above it needs agreement on
   individual examples), the mean best r and its shuffled means, the share per class and every match.

With ``--codebook`` the dictionary is each model's shipped codebook at those layers instead of its
SAE (a feature is a code; an example's value its firing rate over the reply), written to
``universality_codebook*``; it needs gemma codebooks (``load_embedded_codebook(layer,
model="gemma-3-270m")``, shipped at layers 3 and 7). ``--model`` is ignored: both models run.

Writes ``benchmarks/results/universality.json`` (the command, settings, seconds per part, every
number; ``--tiny`` writes to ``--out``), ``universality_cka.png`` (both CKA matrices) and
``universality_similarity.png`` (the two models' pooled similarity matrices at each matched pair).

    python benchmarks/universality.py [--sets ...] [--n-perm 100] [--n-mantel 1000] [--n-boot 1000]
        [--threshold 0.5] [--top 5] [--codebook] [--tiny]
"""

from __future__ import annotations

import functools
import gc
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import _common as common
import numpy as np
import pandas as pd
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tlsteer.classes import CLASS_DATASETS, ClassDataset, class_reads_by_hook
from tlsteer.data import is_plain_format
from tlsteer.sae.adapter import as_feature_dictionary
from tlsteer.universality import (
    MIN_CLASSES,
    bootstrap_similarity_correlation,
    cka_matrix,
    class_similarity,
    correspondence,
    linear_cka,
    permutation_null,
    similarity_correlation,
)

TINY = {"n_perm": 4, "n_mantel": 19, "n_boot": 100, "top": 2}
MODELS = {"smollm2": "smollm2-135m-instruct", "gemma": "gemma-3-270m"}
"""Short name -> embedded model; the first is model A of every pair."""
A, B = MODELS
PAIRS = ((6, 3), (12, 7))
"""Matched layers (SmolLM2, gemma): the same relative depth, where both models have SAEs."""
TINY_PAIRS = tuple(zip(common.TINY_SAE_LAYERS, common.TINY_SAE_LAYERS, strict=True))
DIGITS = 4


def hook(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def pair_label(layer_a: int, layer_b: int, side_b: str = B) -> str:
    """The JSON key of a comparison, e.g. ``"smollm2 6 vs gemma 3"``."""
    return f"{A} {layer_a} vs {side_b} {layer_b}"


def rounded(value: Any) -> Any:
    """Floats to :data:`DIGITS` decimals, all the way down (NaN becomes None)."""
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else round(float(value), DIGITS)
    if isinstance(value, np.integer):
        return int(value)
    return value


def command(args: Any) -> str:
    """The command line, ``--out`` repo-relative (no machine paths in results)."""
    argv, out = list(args.argv), []
    for i, arg in enumerate(argv):
        if i and argv[i - 1] == "--out":
            arg = common.repo_relative(Path(arg))
        elif arg.startswith("--out="):
            arg = "--out=" + common.repo_relative(Path(arg[len("--out=") :]))
        out.append(arg)
    return shlex.join(["python", "benchmarks/universality.py", *out])


def pooled_dataset(args: Any) -> tuple[ClassDataset, dict[str, list[str]]]:
    """All classes of ``--sets`` as one set (class names are unique across the built-in sets), and
    each set's classes."""
    examples: dict[str, Any] = {}
    groups: dict[str, list[str]] = {}
    for name in args.sets:
        ds = common.load_class_dataset(args, name)
        for c in ds.classes:
            if c in examples:
                raise SystemExit(
                    f"class {c!r} of {name!r} is also a class of another set; sets must not share names"
                )
            examples[c] = ds.examples[c]
        groups[name] = list(ds.classes)
    return ClassDataset("pooled", tuple(examples), examples), groups


def load_dictionary(args: Any, model: Any, name: str, layer: int) -> Any:
    """The model's SAE at ``layer``, or with ``--codebook`` its codebook (``--tiny``: random ones)."""
    if not args.codebook:
        return common.load_sae(args, model, layer)
    if args.tiny:
        return common.load_codebook(args, model, layer)
    from tlsteer.codebook import load_embedded_codebook

    return load_embedded_codebook(layer, model=name)


def read_model(args: Any, name: str, ds: ClassDataset, layers: list[int]) -> dict[str, Any]:
    """One model's reads: raw at every block, and each dictionary's features at its layer."""
    start = time.perf_counter()
    model = common.load_named_model(args, name)
    n_layers = model.cfg.n_layers
    raw = class_reads_by_hook(model, ds, [hook(i) for i in range(n_layers)], batch_size=args.batch_size)
    found = [as_feature_dictionary(load_dictionary(args, model, name, i), hook(i), model) for i in layers]
    widths = [d.width for d in found]

    def encode(rows: torch.Tensor) -> torch.Tensor:
        # one stream for all dictionaries: each encodes at every dictionary hook, each hook keeps its own
        return torch.cat([d.encode(rows).float().to(rows.device) for d in found], dim=-1)

    joint = class_reads_by_hook(
        model, ds, [hook(i) for i in layers], transform=encode, d_out=sum(widths), batch_size=args.batch_size
    )
    features, at = {}, 0
    for layer, width in zip(layers, widths, strict=True):
        features[layer] = {c: t[:, at : at + width].clone() for c, t in joint[hook(layer)].items()}
        at += width
    info = {
        "model_name": model.cfg.model_name,
        "n_layers": n_layers,
        "d_model": model.cfg.d_model,
        "format": "plain question/answer" if is_plain_format(model) else "chat template",
        "example_text": ds.examples[ds.classes[0]][0].text(model),
        "dictionary_width": dict(zip(layers, widths, strict=True)),
    }
    del model, joint
    gc.collect()
    info["seconds"] = round(time.perf_counter() - start, 1)
    common.log.info("read %s: %d layers, dictionaries at %s, %.0f s", name, n_layers, layers, info["seconds"])
    return {"raw": {i: raw[hook(i)] for i in range(n_layers)}, "features": features, "info": info}


def stacked(reads: dict[str, torch.Tensor], classes: list[str]) -> torch.Tensor:
    return torch.cat([reads[c] for c in classes])


def row_classes(reads: dict[str, torch.Tensor], classes: list[str]) -> list[str]:
    """The class of each row of ``stacked(reads, classes)``: the groups of the within-class nulls."""
    return [c for c in classes for _ in range(reads[c].shape[0])]


# -- a. layer to layer --------------------------------------------------------------------------------
def part_cka(args: Any, reads: dict, classes: list[str], pairs: tuple) -> tuple[dict, dict]:
    reps = {side: {i: stacked(r, classes) for i, r in reads[side]["raw"].items()} for side in MODELS}
    tables = {
        "biased": cka_matrix(reps[A], reps[B]),
        "debiased": cka_matrix(reps[A], reps[B], debiased=True),
    }
    n_a, n_b = len(reps[A]), len(reps[B])
    out: dict[str, Any] = {"layers": {A: list(reps[A]), B: list(reps[B])}}
    for kind, table in tables.items():
        best_b = {int(la): int(row.idxmax()) for la, row in table.iterrows()}
        best_a = {int(lb): int(col.idxmax()) for lb, col in table.items()}
        out[kind] = {
            "matrix": table.values.tolist(),
            f"best_{B}_layer_per_{A}_layer": list(best_b.values()),
            f"best_{A}_layer_per_{B}_layer": list(best_a.values()),
            "depth_of_best": [[(la + 1) / n_a, (best_b[la] + 1) / n_b] for la in best_b],
        }
    out["matched"] = {}
    labels = row_classes(next(iter(reads[A]["raw"].values())), classes)
    for la, lb in pairs:
        null = permutation_null(linear_cka, reps[A][la], reps[B][lb], n_perm=args.n_perm, seed=args.seed)
        inside = permutation_null(
            linear_cka, reps[A][la], reps[B][lb], n_perm=args.n_perm, seed=args.seed, groups=labels
        )
        biased, debiased = tables["biased"], tables["debiased"]
        out["matched"][pair_label(la, lb)] = {
            A: la,
            B: lb,
            "cka": float(biased.loc[la, lb]),
            "cka_debiased": float(debiased.loc[la, lb]),
            "best_in_row": int(biased.loc[la].idxmax()),
            "best_in_row_debiased": int(debiased.loc[la].idxmax()),
            "null_mean": null.null_mean,
            "null_q95": null.null_q95,
            "p_value": null.p_value,
            "n_perm": null.n_perm,
            "within_class_null_mean": inside.null_mean,
            "within_class_null_q95": inside.null_q95,
            "within_class_p_value": inside.p_value,
        }
        common.log.info(
            "CKA %s %d vs %s %d: %.3f (debiased %.3f), shuffled mean %.3f q95 %.3f, p %.3g; "
            "shuffled within classes mean %.3f q95 %.3f, p %.3g",
            A,
            la,
            B,
            lb,
            biased.loc[la, lb],
            debiased.loc[la, lb],
            null.null_mean,
            null.null_q95,
            null.p_value,
            inside.null_mean,
            inside.null_q95,
            inside.p_value,
        )
    return out, tables


def plot_cka(tables: dict[str, pd.DataFrame], pairs: tuple, path: Path) -> None:
    fig = Figure(figsize=(11, 5.5), layout="constrained")
    FigureCanvasAgg(fig)
    for ax, (kind, table) in zip(fig.subplots(1, 2), tables.items(), strict=True):
        values = table.to_numpy()
        image = ax.imshow(
            values, origin="lower", aspect="auto", cmap="viridis", vmin=min(0.0, values.min()), vmax=1.0
        )
        rows, cols = list(table.index), list(table.columns)
        ax.plot(values.argmax(1), range(len(rows)), "w.", markersize=5, label="best per SmolLM2 layer")
        for la, lb in pairs:
            ax.plot(cols.index(lb), rows.index(la), "s", mfc="none", mec="red", markersize=10)
        ax.set_xticks(range(len(cols)), [str(c) for c in cols], fontsize=7)
        ax.set_yticks(range(len(rows)), [str(r) for r in rows], fontsize=7)
        ax.set_xlabel("gemma-3-270m layer (resid_post)")
        ax.set_ylabel("SmolLM2-135M layer (resid_post)")
        ax.set_title(f"linear CKA, {kind} (red: matched SAE layers)")
        ax.legend(loc="upper left", fontsize=7)
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.savefig(str(path), dpi=120)


# -- b. class geometry --------------------------------------------------------------------------------
def geometry_row(
    args: Any, reps_a: dict, reps_b: dict, classes: list[str], strata: list[str] | None = None
) -> dict[str, Any]:
    sub_a, sub_b = {c: reps_a[c] for c in classes}, {c: reps_b[c] for c in classes}
    _, sim_a = class_similarity(sub_a)
    _, sim_b = class_similarity(sub_b)
    mantel = similarity_correlation(sim_a, sim_b, n_perm=args.n_mantel, seed=args.seed, strata=strata)
    _, low, high = bootstrap_similarity_correlation(
        sub_a, sub_b, n_boot=args.n_boot, seed=args.seed, strata=strata
    )
    return {
        "r": mantel.r,
        "p_value": mantel.p_value,
        "null_q95": mantel.null_q95,
        "ci_low": low,
        "ci_high": high,
        "n_classes": mantel.n_classes,
    }


def part_geometry(args: Any, reads: dict, groups: dict[str, list[str]], pairs: tuple, space: str) -> dict:
    pooled = [c for cs in groups.values() for c in cs]
    scopes = {"all": pooled} | {name: cs for name, cs in groups.items() if len(cs) >= MIN_CLASSES}
    spaces = {"raw": "raw", space: "features"}
    out: dict[str, Any] = {
        "classes": pooled,
        "scopes": dict(scopes),
        "skipped_sets": [name for name, cs in groups.items() if len(cs) < MIN_CLASSES],
        "across": {},
        "within": {},
        "matrices": {},
    }

    # "within_sets": every class pooled, but only pairs inside one class set correlated and classes
    # relabelled within their set: the geometry that the block structure between sets cannot carry
    strata = [name for name, cs in groups.items() for _ in cs]

    def compare(side_a: str, layer_a: int, side_b: str, layer_b: int) -> dict:
        out = {}
        for label, key in spaces.items():
            ra, rb = reads[side_a][key][layer_a], reads[side_b][key][layer_b]
            out[label] = {scope: geometry_row(args, ra, rb, cs) for scope, cs in scopes.items()}
            if len(groups) > 1:
                out[label]["within_sets"] = geometry_row(args, ra, rb, pooled, strata)
        return out

    for la, lb in pairs:
        row = out["across"][pair_label(la, lb)] = compare(A, la, B, lb)
        common.log.info(
            "class geometry %s %d vs %s %d, all classes: raw r %.3f (p %.3g, chance q95 %.3f, "
            "95%% CI %.3f..%.3f)",
            A,
            la,
            B,
            lb,
            *(row["raw"]["all"][k] for k in ("r", "p_value", "null_q95", "ci_low", "ci_high")),
        )
    if len(pairs) >= 2:
        (a1, b1), (a2, b2) = pairs[0], pairs[1]
        out["within"][pair_label(a1, a2, A)] = compare(A, a1, A, a2)
        out["within"][f"{B} {b1} vs {B} {b2}"] = compare(B, b1, B, b2)
        for label, row in out["within"].items():
            common.log.info(
                "class geometry %s (within one model), all classes: raw r %.3f", label, row["raw"]["all"]["r"]
            )
    for side, index in ((A, 0), (B, 1)):
        out["matrices"][side] = {}
        for pair in pairs:
            rows = reads[side]["raw"][pair[index]]
            out["matrices"][side][str(pair[index])] = class_similarity({c: rows[c] for c in pooled})[
                1
            ].tolist()
    return out


def plot_similarity(geometry: dict, groups: dict[str, list[str]], pairs: tuple, path: Path) -> None:
    classes = geometry["classes"]
    fig = Figure(figsize=(11, 5.2 * len(pairs)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.asarray(fig.subplots(len(pairs), 2)).reshape(len(pairs), 2)
    cuts = np.cumsum([len(cs) for cs in groups.values()])[:-1] - 0.5
    for (la, lb), row_axes in zip(pairs, axes, strict=True):
        r = geometry["across"][pair_label(la, lb)]["raw"]["all"]
        for ax, side, layer in zip(row_axes, (A, B), (la, lb), strict=True):
            image = ax.imshow(
                np.array(geometry["matrices"][side][str(layer)]), cmap="RdBu_r", vmin=-1, vmax=1
            )
            ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=6)
            ax.set_yticks(range(len(classes)), classes, fontsize=6)
            for cut in cuts:
                ax.axhline(cut, color="black", linewidth=0.6)
                ax.axvline(cut, color="black", linewidth=0.6)
            ax.set_title(
                f"{MODELS[side]} layer {layer}: centred cosine of class means\n"
                f"Spearman r with the other {r['r']:.2f} (chance q95 {r['null_q95']:.2f})",
                fontsize=9,
            )
            fig.colorbar(image, ax=ax, shrink=0.7)
    fig.savefig(str(path), dpi=120)


# -- c. feature correspondence --------------------------------------------------------------------------
def effect_ranking(reads: dict[str, torch.Tensor], name: str, top: int) -> list[int]:
    """Class ``name``'s ``top`` columns by standardised effect against all other examples: the
    difference of means over the pooled standard deviation, ties broken by the difference; the
    ranking of ``ClassProfile.distinctive(name, k=top, rank_by="effect")``, without its AUROC
    column (which compares every pair of examples in every column: seconds a class at 5120 columns)."""
    inside = reads[name].double()
    outside = torch.cat([t for c, t in reads.items() if c != name]).double()
    n_in, n_out = inside.shape[0], outside.shape[0]
    pooled = ((n_in - 1) * inside.var(0) + (n_out - 1) * outside.var(0)) / max(n_in + n_out - 2, 1)
    diff = inside.mean(0) - outside.mean(0)
    effect = diff / pooled.sqrt().clamp(min=1e-8)
    order = diff.argsort(descending=True, stable=True)
    return order[effect[order].argsort(descending=True, stable=True)][:top].tolist()


def distinctive(
    reads: dict[str, torch.Tensor], classes: list[str], top: int
) -> tuple[list[int], dict[int, list[str]]]:
    """Each class's ``top`` distinctive columns, pooled in first-seen order, and the classes of each."""
    owners: dict[int, list[str]] = {}
    for c in classes:
        for feature in effect_ranking(reads, c, top):
            owners.setdefault(feature, []).append(c)
    return list(owners), owners


def part_correspondence(args: Any, reads: dict, classes: list[str], pairs: tuple, space: str) -> dict:
    spaces = {"raw": "raw", space: "features"}
    out: dict[str, Any] = {"threshold": args.threshold, "top": args.top, "n_perm": args.n_perm}
    for la, lb in pairs:
        layer = {A: la, B: lb}
        pair_out = out[pair_label(la, lb)] = {}
        for label, key in spaces.items():
            pair_out[label] = {}
            for src, dst in ((A, B), (B, A)):
                features, owners = distinctive(reads[src][key][layer[src]], classes, args.top)
                acts_src = stacked(reads[src][key][layer[src]], classes)
                acts_dst = stacked(reads[dst][key][layer[dst]], classes)
                match = functools.partial(
                    correspondence,
                    acts_src,
                    acts_dst,
                    features,
                    threshold=args.threshold,
                    n_perm=args.n_perm,
                    seed=args.seed,
                )
                result = match()  # the examples shuffled
                inside = match(groups=row_classes(reads[src][key][layer[src]], classes))  # within classes
                matches = result.matches
                hit = dict(zip(matches.feature_a, matches.r >= args.threshold, strict=True))
                per_class = {c: float(np.mean([hit[f] for f in features if c in owners[f]])) for c in classes}
                pair_out[label][f"{src}->{dst}"] = {
                    "share": result.share,
                    "null_share_mean": result.null_share_mean,
                    "null_share_q95": result.null_share_q95,
                    "mean_best_r": float(matches.r.mean()),
                    "null_r_mean": result.null_r_mean,
                    "within_class_null_share_mean": inside.null_share_mean,
                    "within_class_null_share_q95": inside.null_share_q95,
                    "within_class_null_r_mean": inside.null_r_mean,
                    "n_features": len(features),
                    "n_candidates": int(acts_dst.shape[1]),
                    "share_per_class": per_class,
                    "matches": {
                        "feature_a": [int(f) for f in matches.feature_a],
                        "feature_b": [int(f) for f in matches.feature_b],
                        "r": matches.r.tolist(),
                        "classes": [owners[int(f)] for f in matches.feature_a],
                    },
                }
                common.log.info(
                    "correspondence %s %d vs %s %d, %s %s->%s (%d features among %d): share %.3f "
                    "(shuffled mean %.3f, q95 %.3f; within classes %.3f, q95 %.3f), mean best r %.3f "
                    "(shuffled %.3f; within classes %.3f)",
                    A,
                    la,
                    B,
                    lb,
                    label,
                    src,
                    dst,
                    len(features),
                    acts_dst.shape[1],
                    result.share,
                    result.null_share_mean,
                    result.null_share_q95,
                    inside.null_share_mean,
                    inside.null_share_q95,
                    matches.r.mean(),
                    result.null_r_mean,
                    inside.null_r_mean,
                )
    return out


# -- the run ------------------------------------------------------------------------------------------
def body(args: Any) -> Path:
    start = time.perf_counter()
    pairs = TINY_PAIRS if args.tiny else PAIRS
    space = "codebook" if args.codebook else "sae"
    suffix = "_codebook" if args.codebook else ""
    ds, groups = pooled_dataset(args)
    classes = list(ds.classes)
    seconds: dict[str, float] = {}
    reads: dict[str, Any] = {}
    for index, side in enumerate(MODELS):
        reads[side] = read_model(args, MODELS[side], ds, [pair[index] for pair in pairs])
        seconds[f"read_{side}"] = reads[side]["info"]["seconds"]

    t = time.perf_counter()
    cka, tables = part_cka(args, reads, classes, pairs)
    plot_cka(tables, pairs, args.out / f"universality{suffix}_cka.png")
    seconds["cka"] = round(time.perf_counter() - t, 1)

    t = time.perf_counter()
    geometry = part_geometry(args, reads, groups, pairs, space)
    plot_similarity(geometry, groups, pairs, args.out / f"universality{suffix}_similarity.png")
    seconds["geometry"] = round(time.perf_counter() - t, 1)

    t = time.perf_counter()
    matched = part_correspondence(args, reads, classes, pairs, space)
    seconds["correspondence"] = round(time.perf_counter() - t, 1)
    seconds["total"] = round(time.perf_counter() - start, 1)

    out = {
        "command": command(args),
        "settings": {
            "models": {side: {"embedded": MODELS[side], **reads[side]["info"]} for side in MODELS},
            "pairs": [{A: la, B: lb} for la, lb in pairs],
            "hook": "blocks.L.hook_resid_post",
            "read": "mean over the reply tokens (Read.reply), each model in its own format",
            "dictionary": space,
            "sets": groups,
            "class_sizes": ds.sizes,
            "n_examples": sum(ds.sizes.values()),
            "n_perm": args.n_perm,
            "n_mantel": args.n_mantel,
            "n_boot": args.n_boot,
            "threshold": args.threshold,
            "top": args.top,
            "seed": args.seed,
            "tiny": args.tiny,
        },
        "seconds": seconds,
        "cka": cka,
        "geometry": geometry,
        "correspondence": matched,
    }
    for side in MODELS:
        out["settings"]["models"][side].pop("seconds")
    path = common.write_json(args.out / f"universality{suffix}.json", rounded(out))
    common.log.info("done in %.0f s: %s", seconds["total"], path)
    return path


def main(argv: list[str] | None = None) -> Path:
    p = common.parser(__doc__)
    p.add_argument("--sets", nargs="+", default=list(CLASS_DATASETS), choices=CLASS_DATASETS)
    p.add_argument(
        "--n-perm",
        type=int,
        default=100,
        help="shuffles of the CKA null and of each correspondence (default 100)",
    )
    p.add_argument(
        "--n-mantel", type=int, default=1000, help="relabellings of each Mantel test (default 1000)"
    )
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples, >= 100 (default 1000)")
    p.add_argument("--threshold", type=float, default=0.5, help="the r a feature match needs (default 0.5)")
    p.add_argument("--top", type=int, default=5, help="distinctive columns per class (default 5)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--codebook", action="store_true", help="codebooks instead of SAEs (needs gemma codebooks)"
    )
    p.set_defaults(argv=sys.argv[1:] if argv is None else list(argv))
    return common.run(body, p, argv, TINY)


if __name__ == "__main__":
    main()
