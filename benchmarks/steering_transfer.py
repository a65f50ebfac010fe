"""Does a class direction carry from one model to the other? Steer the target with the source's
class direction, carried over by a linear map, at matched KL, and judge where generations land.

The two embedded models (SmolLM2-135M-Instruct and gemma-3-270m, which runs in tlsteer's plain
question/answer format) are read at matched depths, SmolLM2's layer 6 and gemma's layer 3
(``blocks.L.hook_resid_post``), on the examples of a class set (``--dataset``, default
speaking_styles): each example's mean over its reply tokens (``tlsteer.classes.class_reads``); row
``i`` of a class is the same example in both models. Each class's examples are split in half with a
seeded RNG: train and held-out.

Maps (``tlsteer.universality.fit_linear_map``, source space -> target space, fitted on train rows):

- ``pooled``: on every class's train rows (the design as first asked). With fewer fitting rows
  (4 x 24) than dimensions (576, 640) a lightly regularised map nearly interpolates them, and a
  class direction is a combination of those rows: the pooled map carries it over by construction.
  On two unrelated random spaces of these sizes that share nothing but the labels, the pooled map's
  carried direction has cosine 1.00 with the target's own at every ridge of the grid (the
  unseen-class map's: -0.09 to 0.07; with a noisy linear relation between the spaces, 0.46 to
  0.63). It answers "does the map fit", not "does a direction carry".
- ``unseen`` (``--map unseen-class``, the default that steers): for each target class, a map
  fitted on the OTHER classes' train rows only, so the class the direction stands for was never
  seen by the map: the direction has to carry through structure the models share.

Each map's ridge is chosen from a grid by leave-one-class-out cross-validation over the classes it
is fitted on (fit on all but one, score the squared error on the left-out class's rows: the
generalisation a carried direction needs); ``--ridge`` fixes it instead. Held-out R^2 (on the
held-out half) is reported for every map.

Directions in the target model, per target class (unit vectors, scaled by the target's mean residual
norm at the hook on neutral text, as the comparison's vector methods are):

- ``own``: the target's class direction on train rows, the class mean minus the mean of the class
  means (``ClassProfile.mean_centred``: the other classes' mean, rescaled, the same direction; the
  comparison's ``mean_centred`` method);
- ``mapped_unseen`` / ``mapped_pooled``: the source's class direction, the same construction in the
  source model, carried over by the map (``LinearMap.direction``);
- ``random``: ``--random-draws`` seeded Gaussian directions per target class (test prompt ``i`` uses
  draw ``i mod n``, each draw calibrated on its own: a distribution of directions, as in the verdict).

Every direction is calibrated to the same KL budget (``--kl``, default 0.5 nats, the verdict-2
plan's) exactly as the comparison calibrates a class set
(``tlsteer.experiments.cells.calibrate_method`` on a ``ReplySetting``: the held-out calibration
prompts in the chat turn, KL(unsteered || steered) per token over the unsteered model's sampled
replies, steered from the last prompt token on). Generations then come from the held-out test
prompts (``load_heldout_prompts("test")``, disjoint from the calibration ones), every target steered
toward on every prompt, one sampled generation each (seeded, ``--temperature``), scored by the class
set's judge (``tlsteer.eval.judge.class_judge``, trained on the set's judge texts) through the
comparison's own class task (``tlsteer.experiments.class_task.run_class_task``): a prompt's outcome
is 1 when the judge assigns the steered class (a degenerate text counts as a failure).

Reported per target class and pooled: hit rates of unsteered / own / mapped / random with exact
(Clopper-Pearson) intervals; paired differences mapped - random, mapped - own and own - random
with bootstrap intervals over prompts (per class ``paired_difference_ci``; pooled, a resampled
prompt brings its outcome in every target class, ``bootstrap_ci`` over prompt rows); the
multipliers and KL reached; the cosines of the directions. Writes
``benchmarks/results/steering_transfer.json`` and ``steering_transfer.png``.

    python benchmarks/steering_transfer.py [--direction smollm-to-gemma] [--dataset speaking_styles]
        [--kl 0.5] [--prompts 24] [--map unseen-class] [--tiny]
"""

from __future__ import annotations

import gc
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import _common as common
import numpy as np
import torch

from tlsteer.classes import CLASS_DATASETS, class_reads
from tlsteer.data import load_heldout_prompts, load_neutral_text
from tlsteer.eval import residual_norms
from tlsteer.eval.bootstrap import bootstrap_ci, clopper_pearson, paired_difference_ci
from tlsteer.eval.judge import class_judge
from tlsteer.experiments.cells import UNSTEERED, ReplySetting, calibrate_method
from tlsteer.experiments.class_task import run_class_task
from tlsteer.experiments.methods import Method
from tlsteer.profile import ClassProfile
from tlsteer.universality import LinearMap, fit_linear_map
from tlsteer.vector import SteeringVector, VectorMetadata

SMOLLM, GEMMA = common.MODELS
LAYERS = {SMOLLM: 6, GEMMA: 3}
"""Matched depths: SmolLM2's layer 6 of 30 and gemma's layer 3 of 18."""
TINY_LAYERS = {SMOLLM: 1, GEMMA: 1}
"""Both tiny stand-ins have 4 layers."""
DIRECTIONS = {"smollm-to-gemma": (SMOLLM, GEMMA), "gemma-to-smollm": (GEMMA, SMOLLM)}
MAPS = {"unseen-class": "mapped_unseen", "pooled": "mapped_pooled"}
"""``--map`` value -> the steered method's name."""
RIDGES = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
"""The ridge grid of the cross-validation (relative to the mean eigenvalue: ``fit_linear_map``)."""
BATCH = {"batch_size": 32, "max_rows": 128}
"""Rows per generation batch and per perplexity pass (the comparison's)."""

TINY = {
    "prompts": 3,
    "calibration_prompts": 2,
    "max_new_tokens": 4,
    "random_draws": 2,
    "n_resamples": 200,
}


# -- reads, splits, maps ------------------------------------------------------------------------------
def split_rows(reads: dict[str, torch.Tensor], seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per class, ``(train indices, held-out indices)``: a seeded half split of its examples."""
    out = {}
    for i, (c, rows) in enumerate(reads.items()):
        order = torch.from_numpy(np.random.default_rng([seed, i]).permutation(rows.shape[0]))
        half = rows.shape[0] // 2
        out[c] = (order[:half], order[half:])
    return out


def part(reads: dict[str, torch.Tensor], split: dict, which: int) -> dict[str, torch.Tensor]:
    return {c: rows[split[c][which]] for c, rows in reads.items()}


def cat(rows: dict[str, torch.Tensor], classes: list[str]) -> torch.Tensor:
    return torch.cat([rows[c] for c in classes])


def cv_ridge(
    src: dict[str, torch.Tensor], tgt: dict[str, torch.Tensor], classes: list[str], fixed: float | None
) -> tuple[float, dict[str, float]]:
    """The ridge of a map fitted on ``classes``: ``fixed``, or the grid value with the best
    leave-one-class-out score; the score per grid value is ``1 - SSE / SST`` summed over folds,
    SSE the squared error on the left-out class's rows, SST their squared distance from the fitting
    rows' mean (the map against "predict the other classes' mean")."""
    if fixed is not None:
        return fixed, {}
    scores = {}
    for ridge in RIDGES:
        sse = sst = 0.0
        for k in classes:
            rest = [c for c in classes if c != k]
            m = fit_linear_map(cat(src, rest), cat(tgt, rest), ridge=ridge)
            sse += float((m(src[k]).double() - tgt[k].double()).square().sum())
            sst += float((tgt[k].double() - m.mean_b).square().sum())
        scores[str(ridge)] = 1 - sse / sst
    best = max(RIDGES, key=lambda r: scores[str(r)])
    return best, scores


def r2_or_none(m: LinearMap, x_a: torch.Tensor, x_b: torch.Tensor) -> float | None:
    return m.r2(x_a, x_b) if x_a.shape[0] >= 2 else None


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


def unit_method(name: str, direction: torch.Tensor, hook: str, scale: float, own: torch.Tensor) -> Method:
    """A vector method (strength in units of ``scale``) along ``direction``; its ``cosine`` with ``own``."""
    unit = (direction / direction.norm()).float().cpu()
    vector = SteeringVector({hook: unit}, VectorMetadata(note=name))
    return Method(name, "vector", vector, scale=scale, hook_name=hook, cosine=cosine(unit, own))


# -- analysis -----------------------------------------------------------------------------------------
def rate(values: np.ndarray) -> dict[str, Any]:
    """A hit rate and its exact (Clopper-Pearson) 95% interval; outcomes are 0/1 (one seed)."""
    successes, n = round(float(values.sum())), int(values.size)
    value, low, high = clopper_pearson(successes, n)
    return {"value": value, "low": low, "high": high, "successes": successes, "n": n}


def difference(a: np.ndarray, b: np.ndarray, n_resamples: int, seed: int) -> dict[str, Any]:
    """``mean(a - b)`` with a 95% bootstrap interval over prompts; ``a``, ``b``: ``[prompts]``
    (one class: paired pairs) or ``[prompts, classes]`` (pooled: a prompt keeps its classes)."""
    if a.ndim == 1:
        value, low, high = paired_difference_ci(a, b, n_resamples=n_resamples, seed=seed)
    else:
        value, low, high = bootstrap_ci(a - b, n_resamples=n_resamples, seed=seed, statistic=np.mean)
    return {"value": value, "low": low, "high": high, "excludes_zero": bool(low > 0 or high < 0)}


def outcome_table(cell: Any, units: tuple, targets: list[str], n_prompts: int) -> np.ndarray:
    """A cell's outcomes as ``[prompts, targets]``."""
    table = np.full((n_prompts, len(targets)), np.nan)
    for (t, p), value in zip(units, cell.outcomes, strict=True):
        table[p, targets.index(t)] = value
    if np.isnan(table).any():
        raise ValueError("a (target, prompt) unit has no outcome")
    return table


def cell_summary(cell: Any) -> dict[str, Any]:
    """Where a cell's generations land (the judge's shares per target), their perplexity under the
    unsteered model, the success among fluent ones, and the method's cosine with ``own``."""

    def as_dict(value: Any) -> dict[str, float] | None:
        return None if value is None else value.to_dict()

    return {
        "transfer": cell.transfer,
        "perplexity": as_dict(cell.perplexity),
        "success_fluent": as_dict(cell.success_fluent),
        "cosine_with_own": cell.cosine,
    }


# -- the figure ---------------------------------------------------------------------------------------
def plot(out: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(out["hit_rates"])
    groups = [*out["settings"]["targets"], "pooled"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / len(methods)
    for k, m in enumerate(methods):
        rows = [
            out["hit_rates"][m]["per_class"][g] if g != "pooled" else out["hit_rates"][m]["pooled"]
            for g in groups
        ]
        x = np.arange(len(groups)) + (k - (len(methods) - 1) / 2) * width
        values = np.array([r["value"] for r in rows])
        err = np.array([[r["value"] - r["low"] for r in rows], [r["high"] - r["value"] for r in rows]])
        ax.bar(x, values, width, yerr=err, capsize=2, label=m)
    ax.set_xticks(np.arange(len(groups)), groups, rotation=15)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("judged as the steered class (95% exact CI)")
    s = out["settings"]
    ax.set_title(f"{s['dataset']}: {s['source_model']} -> {s['target_model']} at KL {s['kl']}", fontsize=10)
    ax.legend(fontsize=8)
    diffs = list(out["differences"])
    width = 0.8 / len(diffs)
    for k, d in enumerate(diffs):
        rows = [
            out["differences"][d]["per_class"][g] if g != "pooled" else out["differences"][d]["pooled"]
            for g in groups
        ]
        x = np.arange(len(groups)) + (k - (len(diffs) - 1) / 2) * width
        values = np.array([r["value"] for r in rows])
        err = np.array([[r["value"] - r["low"] for r in rows], [r["high"] - r["value"] for r in rows]])
        bx.errorbar(x, values, yerr=err, fmt="o", capsize=3, label=d)
    bx.axhline(0, color="grey", lw=0.8)
    bx.set_xticks(np.arange(len(groups)), groups, rotation=15)
    bx.set_ylabel("paired difference (95% bootstrap over prompts)")
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- the run ------------------------------------------------------------------------------------------
def body(args) -> Path:
    start = time.perf_counter()
    seconds: dict[str, float] = {}
    clock = [time.perf_counter()]

    def lap(name: str) -> None:
        now = time.perf_counter()
        seconds[name] = round(now - clock[0], 2)
        clock[0] = now
        common.log.info("[%7.1f s] %s", now - start, name)

    source_name, target_name = DIRECTIONS[args.direction]
    layers = TINY_LAYERS if args.tiny else LAYERS
    hooks = {name: f"blocks.{layers[name]}.hook_resid_post" for name in (source_name, target_name)}
    maps = list(dict.fromkeys(args.map))
    if args.random_draws < 1 or args.prompts < 1 or args.calibration_prompts < 1 or args.max_new_tokens < 1:
        raise SystemExit("--random-draws, --prompts, --calibration-prompts and --max-new-tokens must be >= 1")
    if not args.kl > 0 or (args.ridge is not None and args.ridge < 0):
        raise SystemExit("--kl must be > 0 and --ridge >= 0")
    ds = common.load_class_dataset(args, args.dataset)
    classes = list(ds.classes)
    if "unseen-class" in maps and len(classes) < 3:
        raise SystemExit(f"--map unseen-class needs at least 3 classes; {args.dataset} has {len(classes)}")
    test_prompts = load_heldout_prompts("test")
    calibration_prompts = load_heldout_prompts("calibration")
    if args.prompts > len(test_prompts) or args.calibration_prompts > len(calibration_prompts):
        raise SystemExit(
            f"at most {len(test_prompts)} test and {len(calibration_prompts)} calibration prompts are "
            "built in"
        )
    test_prompts, calibration_prompts = (
        test_prompts[: args.prompts],
        calibration_prompts[: args.calibration_prompts],
    )

    # 1. example representations at the matched layers; the source model is let go after its reads
    source = common.load_named_model(args, source_name)
    lap("load_source")
    reads_src = class_reads(source, ds, hooks[source_name])
    del source
    gc.collect()
    lap("read_source")
    target = common.load_named_model(args, target_name)
    lap("load_target")
    hook = hooks[target_name]
    reads_tgt = class_reads(target, ds, hook)
    lap("read_target")
    split = split_rows(reads_tgt, args.seed)
    src_train, src_held = part(reads_src, split, 0), part(reads_src, split, 1)
    tgt_train, tgt_held = part(reads_tgt, split, 0), part(reads_tgt, split, 1)

    # 2. maps, their ridges and held-out R^2
    ridge, cv = cv_ridge(src_train, tgt_train, classes, args.ridge)
    pooled = fit_linear_map(cat(src_train, classes), cat(tgt_train, classes), ridge=ridge)
    grid = {}
    for r in RIDGES:  # how much the pooled map's held-out fit depends on its ridge
        m = fit_linear_map(cat(src_train, classes), cat(tgt_train, classes), ridge=r)
        grid[str(r)] = m.r2(cat(src_held, classes), cat(tgt_held, classes))
    maps_out: dict[str, Any] = {
        "pooled": {
            "ridge": ridge,
            "cv_score": cv,
            "r2_train": pooled.r2(cat(src_train, classes), cat(tgt_train, classes)),
            "r2_held_out": pooled.r2(cat(src_held, classes), cat(tgt_held, classes)),
            "r2_held_out_by_ridge": grid,
        },
        "unseen": {},
    }
    unseen: dict[str, LinearMap] = {}
    for c in classes:
        rest = [k for k in classes if k != c]
        r_c, cv_c = cv_ridge(src_train, tgt_train, rest, args.ridge)
        unseen[c] = fit_linear_map(cat(src_train, rest), cat(tgt_train, rest), ridge=r_c)
        maps_out["unseen"][c] = {
            "ridge": r_c,
            "cv_score": cv_c,
            "r2_train": unseen[c].r2(cat(src_train, rest), cat(tgt_train, rest)),
            "r2_held_out_seen_classes": unseen[c].r2(cat(src_held, rest), cat(tgt_held, rest)),
            "r2_held_out_all_classes": unseen[c].r2(cat(src_held, classes), cat(tgt_held, classes)),
            "r2_held_out_unseen_class": r2_or_none(unseen[c], src_held[c], tgt_held[c]),
        }
    lap("maps")

    # 3. directions: own, mapped, random; their cosines
    def profile(rows: dict[str, torch.Tensor], at: str) -> ClassProfile:
        return ClassProfile.from_representations(
            rows, at, classes=classes, dataset_name=ds.name, n_bootstrap=0
        )

    p_src, p_tgt = profile(src_train, hooks[source_name]), profile(tgt_train, hook)
    p_src_held, p_tgt_held = profile(src_held, hooks[source_name]), profile(tgt_held, hook)
    scale = float(residual_norms(target, load_neutral_text(), [hook])[hook])
    d_tgt = reads_tgt[classes[0]].shape[1]
    methods: dict[str, dict[str, Method]] = {}
    cosines: dict[str, Any] = {}
    for i, c in enumerate(classes):
        own = p_tgt.mean_centred(c)[hook].float()
        src_dir = p_src.mean_centred(c)[hooks[source_name]].float()
        mapped = {"mapped_unseen": unseen[c].direction(src_dir), "mapped_pooled": pooled.direction(src_dir)}
        draws = []
        for j in range(args.random_draws):
            gen = torch.Generator().manual_seed(args.seed + 1000 * (i + 1) + j)
            draws.append(torch.randn(d_tgt, generator=gen))
        names = ["random"] if args.random_draws == 1 else [f"random.{j}" for j in range(args.random_draws)]
        built = {"own": unit_method("own", own, hook, scale, own)}
        for flag in maps:
            built[MAPS[flag]] = unit_method(MAPS[flag], mapped[MAPS[flag]], hook, scale, own)
        built |= {n: unit_method(n, v, hook, scale, own) for n, v in zip(names, draws, strict=True)}
        methods[c] = built
        cosines[c] = {
            "own_train_vs_own_held_out": cosine(own, p_tgt_held.mean_centred(c)[hook]),
            "source_train_vs_source_held_out": cosine(
                src_dir, p_src_held.mean_centred(c)[hooks[source_name]]
            ),
            "own_vs_mapped_unseen": cosine(own, mapped["mapped_unseen"]),
            "own_vs_mapped_pooled": cosine(own, mapped["mapped_pooled"]),
            "own_vs_random": float(np.mean([cosine(own, v) for v in draws])),
            "own_vs_random_abs_max": float(np.max([abs(cosine(own, v)) for v in draws])),
        }
    lap("directions")

    # 4. the judge, calibration at matched KL (the comparison's reply setting), generation and judging
    judge = class_judge(ds, common.load_embedder(args))
    lap("judge")
    setting = ReplySetting.sample(
        target,
        calibration_prompts,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=10_000,
        batch_size=BATCH["batch_size"],
    )
    calibrations = {
        c: {n: calibrate_method(target, m, setting, [args.kl]) for n, m in methods[c].items()}
        for c in classes
    }
    lap("calibration")
    cells, examples, units = run_class_task(
        target,
        judge,
        methods,
        calibrations,
        test_prompts,
        seeds=(args.seed,),
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        n_resamples=args.n_resamples,
        batch_size=BATCH["batch_size"],
        max_rows=BATCH["max_rows"],
    )
    lap("generation_and_judging")

    # 5. hit rates and paired differences
    steered = ["own", *[MAPS[f] for f in maps], "random"]
    keys = {"unsteered": UNSTEERED} | {m: (m, float(args.kl)) for m in steered}
    tables = {m: outcome_table(cells[k], units, classes, len(test_prompts)) for m, k in keys.items()}
    hit_rates = {
        m: {"pooled": rate(t), "per_class": {c: rate(t[:, j]) for j, c in enumerate(classes)}}
        for m, t in tables.items()
    }
    pairs = [(m, "random") for m in steered[1:-1]] + [(m, "own") for m in steered[1:-1]] + [("own", "random")]
    differences = {}
    for a, b in pairs:
        differences[f"{a}-{b}"] = {
            "pooled": difference(tables[a], tables[b], args.n_resamples, args.seed),
            "per_class": {
                c: difference(tables[a][:, j], tables[b][:, j], args.n_resamples, args.seed)
                for j, c in enumerate(classes)
            },
        }
    calibration_out = {}
    for c in classes:
        rows = {}
        for n, cal in calibrations[c].items():
            entry = dict(cal[float(args.kl)])
            entry["multiplier"] = entry["strength"] * scale
            rows[n] = entry
        calibration_out[c] = rows
    answer = {}
    for m in steered[1:-1]:
        own_gain = float(tables["own"].mean() - tables["random"].mean())
        gain = float(tables[m].mean() - tables["random"].mean())
        answer[m] = {
            "beats_random": differences[f"{m}-random"]["pooled"]["low"] > 0,
            "below_own": differences[f"{m}-own"]["pooled"]["high"] < 0,
            "share_of_own_gain_over_random": gain / own_gain if own_gain > 0 else None,
        }
    lap("analysis")

    out = {
        "command": shlex.join(args.command),
        "question": "does the mapped direction steer the target class better than a random one at the "
        "same KL, and how close does it come to the target model's own direction?",
        "settings": {
            "dataset": ds.name,
            "direction": args.direction,
            "source_model": source_name,
            "target_model": target_name,
            "source_hook": hooks[source_name],
            "target_hook": hook,
            "targets": classes,
            "maps_steered": maps,
            "kl": args.kl,
            "kl_definition": "mean per-token KL(unsteered || steered) over the unsteered model's sampled "
            "replies to the calibration prompts, steered from the last prompt token on (ReplySetting)",
            "test_prompts": len(test_prompts),
            "calibration_prompts": len(calibration_prompts),
            "max_new_tokens": args.max_new_tokens,
            "temperature": args.temperature,
            "random_draws": args.random_draws,
            "ridge": "cross-validated" if args.ridge is None else args.ridge,
            "ridge_grid": list(RIDGES),
            "n_resamples": args.n_resamples,
            "seed": args.seed,
            "tiny": bool(args.tiny),
            "examples_per_class": {c: int(reads_tgt[c].shape[0]) for c in classes},
            "train_per_class": {c: len(split[c][0]) for c in classes},
            "held_out_per_class": {c: len(split[c][1]) for c in classes},
            "d_source": int(reads_src[classes[0]].shape[1]),
            "d_target": d_tgt,
        },
        "judge": {"held_out_accuracy": float(judge.held_out_accuracy), "flagged": bool(judge.flagged)},
        "target_residual_norm": scale,
        "maps": maps_out,
        "cosines": cosines,
        "calibration": calibration_out,
        "hit_rates": hit_rates,
        "differences": differences,
        "answer": answer,
        "generations": {m: cell_summary(cells[k]) for m, k in keys.items()},
        "outcomes": {m: {c: t[:, j].tolist() for j, c in enumerate(classes)} for m, t in tables.items()},
        "examples": {m: {c: list(examples[keys[m]][c]) for c in classes} for m in steered},
        "seconds": seconds,
    }
    for m in steered:
        common.log.info(
            "%-14s pooled %.3f [%.3f, %.3f]  %s",
            m,
            hit_rates[m]["pooled"]["value"],
            hit_rates[m]["pooled"]["low"],
            hit_rates[m]["pooled"]["high"],
            {c: round(r["value"], 2) for c, r in hit_rates[m]["per_class"].items()},
        )
    for d, v in differences.items():
        p = v["pooled"]
        common.log.info("%-22s %+.3f [%+.3f, %+.3f]", d, p["value"], p["low"], p["high"])
    plot(out, args.out / "steering_transfer.png")
    seconds["total"] = round(time.perf_counter() - start, 1)
    path = common.write_json(args.out / "steering_transfer.json", out)
    common.log.info("done in %.0f s", seconds["total"])
    return path


def main(argv: list[str] | None = None) -> Path:
    p = common.parser(__doc__)
    p.add_argument("--dataset", default="speaking_styles", choices=CLASS_DATASETS)
    p.add_argument("--direction", default="smollm-to-gemma", choices=list(DIRECTIONS))
    p.add_argument(
        "--map",
        nargs="+",
        default=["unseen-class"],
        choices=list(MAPS),
        help="the map(s) whose carried direction steers: unseen-class (fitted without the target "
        "class, the default) and/or pooled (fitted on every class: carries a direction almost by "
        "construction); each adds a direction's calibration and generations",
    )
    p.add_argument("--kl", type=float, default=0.5, help="KL budget in nats (default 0.5, the verdict's)")
    p.add_argument(
        "--prompts", type=int, default=24, help="held-out test prompts, each steered toward every class"
    )
    p.add_argument("--calibration-prompts", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--random-draws", type=int, default=4, help="random directions per target class")
    p.add_argument(
        "--ridge",
        type=float,
        default=None,
        help="the maps' ridge (relative, see fit_linear_map); default: leave-one-class-out cross-validation",
    )
    p.add_argument("--n-resamples", type=int, default=2000, help="bootstrap resamples")
    p.set_defaults(
        command=["python", *sys.argv]
        if argv is None
        else ["python", "benchmarks/steering_transfer.py", *argv]
    )
    return common.run(body, p, argv, TINY)


if __name__ == "__main__":
    main()
