"""Feature steering against raw CAA at matched side effects, on CAA behaviours and built-in class sets.

For each dataset, ``tlsteer.experiments.feature_vs_caa`` builds every method from the same training data
at the shipped SAE's hook, calibrates each method's strength so that its mean per-token KL from
the unsteered model on neutral text reaches each budget, and scores it on held-out data with 95%
bootstrap intervals:

- CAA behaviours (``--caa-dir``): vectors from ``--train-pairs`` generate pairs read at the
  answer letter; success is p(matching) on the 50 held-out A/B items;
- analogy domains (``--analogies``): vectors from the few-shot vs neutral prompts of the training
  pairs (``tlsteer.experiments.analogy_task``); each held-out pair's whole answer is ranked among the
  domain's answers by summed log-probability, steered from the prompt's last token on; success is
  top-5 among them (top 1 beside it), with exact binomial intervals; no MMLU;
- class sets: vectors from the training split (class vs the rest, mean over each reply); for each
  class, generations from built-in open prompts (second half, never used to build anything;
  ``--prompts`` split across the classes, ``--seeds`` samples each) steered toward it; success is
  the share the set's K-class judge assigns to the target; selectivity and perplexity beside.

MMLU accuracy (``--mmlu`` items of the CAA copy) at each cell's strength is a side effect.
Writes ``benchmarks/results/feature_vs_caa_<dataset>.{json,png}``,
``feature_vs_caa_summary.json`` (wall time included) and ``feature_vs_caa_tables.md``
(``tlsteer.experiments.comparison_plots.comparison_markdown``). Each dataset runs with one
``tlsteer.experiments.ComparisonConfig`` built from the flags, and gives a ``ComparisonResult``.

    python benchmarks/feature_vs_caa.py --caa-dir ../shared/caa           # default run
    python benchmarks/feature_vs_caa.py --small    # about 3 minutes, into benchmarks/results/small/
    python benchmarks/feature_vs_caa.py --replot   # redraw the figures from the JSON
    python benchmarks/feature_vs_caa.py --tiny     # seconds, a tiny model: checks the script
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import _common as common

import tlsteer
from tlsteer.analogy import AnalogyDomain, load_analogies
from tlsteer.data import load_ab_items, load_caa_dataset
from tlsteer.experiments import (
    METHODS,
    ABTask,
    AnalogyTask,
    ComparisonConfig,
    ComparisonResult,
    applicable_methods,
    builtin_instructions,
    feature_vs_caa,
)
from tlsteer.experiments.comparison_plots import comparison_markdown

SMALL_METHODS = ("caa", "feature_full", "feature_output", "clamp", "random", "prompting")
SMALL = {
    "sets": ["speaking_styles"],
    "methods": list(SMALL_METHODS),
    "prompts": 16,
    "seeds": 1,
    "max_new_tokens": 16,
    "neutral": 12,
    "resamples": 1000,
    "behaviours": [],
    "mmlu": 0,
    "budgets": [0.5],
    "targets": ["formal", "pirate"],
    "analogies": [],
}
"""``--small``: about 3 minutes, into ``benchmarks/results/small``."""
TINY = {
    "behaviours": ["coordinate-other-ais"],
    "sets": ["speaking_styles"],
    "analogies": ["number_successor"],
    "layer": 1,
    "methods": ["caa", "feature_full", "clamp", "random", "prompting"],
    "budgets": [0.5],
    "prompts": 2,
    "seeds": 1,
    "max_new_tokens": 4,
    "train_pairs": 6,
    "test_items": 4,
    "mmlu": 2,
    "neutral": 3,
    "resamples": 100,
    "targets": ["formal", "pirate"],
    "shots": 2,
    "analogy_pairs": 16,
}


def load_results(out: Path, names) -> list[ComparisonResult]:
    """The results of the datasets ``names``, from their JSON in ``out``."""
    return [ComparisonResult.load(out / f"feature_vs_caa_{name}.json") for name in names]


def replot(out: Path) -> Path:
    """Redraw the figures and the tables from the JSON in ``out``."""
    summary = json.loads((out / "feature_vs_caa_summary.json").read_text())
    results = load_results(out, summary["datasets"])
    for result in results:  # the figure, and a class set's transfer matrices beside it
        result.plot(out / f"feature_vs_caa_{result.dataset}.png")
    tables = out / "feature_vs_caa_tables.md"
    tables.write_text(comparison_markdown(results) + "\n")
    return tables


def summary_rows(result: ComparisonResult) -> list[dict]:
    """One row per cell for the summary JSON: method, budget, success and its interval, KL mean and
    p95 (0 unsteered), strength, reached (true unsteered)."""
    rows = []
    for cell in result.cells.values():
        unsteered = cell.method == "unsteered"
        rows.append(
            {
                "method": cell.method,
                "budget": cell.budget,
                "success": cell.success.value,
                "low": cell.success.low,
                "high": cell.success.high,
                "kl_mean": 0.0 if unsteered else cell.kl_mean,
                "kl_p95": 0.0 if unsteered else cell.kl_p95,
                "strength": list(cell.strength) if isinstance(cell.strength, tuple) else cell.strength,
                "reached": True if unsteered else cell.reached,
            }
        )
    return rows


def tasks(args, model) -> tuple[list, Path | None]:
    """The CAA behaviours (with a CAA folder), class sets and analogy domains to compare on, and
    the CAA folder (``None``: no CAA behaviours, no MMLU)."""
    out = []
    caa_dir = args.caa_dir
    if caa_dir is None and args.tiny and args.behaviours:
        caa_dir = common.caa_dir(args)
    if caa_dir is not None:
        instructions = builtin_instructions()["caa"]
        for b in args.behaviours:
            pairs = load_caa_dataset(caa_dir / "generate" / b / "generate_dataset.json", model)
            items = load_ab_items(caa_dir / "test" / b / "test_dataset_ab.json")[: args.test_items]
            out.append(ABTask(b, pairs[: args.train_pairs], items, instructions.get(b)))
    out += [common.load_class_dataset(args, name) for name in args.sets]
    domains, analogy_instructions = load_analogies(), builtin_instructions()["analogies"]
    for name in args.analogies:
        domain = domains[name]
        if args.analogy_pairs is not None:
            domain = AnalogyDomain(name, domain.pairs[: args.analogy_pairs], domain.template)
        out.append(AnalogyTask(domain, n_shots=args.shots, instruction=analogy_instructions.get(name)))
    return out, caa_dir


def body(args) -> Path:
    if args.replot:
        return replot(args.out)
    small(args)
    start = time.perf_counter()
    model = common.load_model(args)
    sae = common.load_sae(args, model, args.layer)
    embedder = common.load_embedder(args)
    neutral = tlsteer.load_neutral_text()[: args.neutral]
    datasets, caa_dir = tasks(args, model)
    mmlu = None
    if caa_dir is not None and args.mmlu:
        mmlu = load_ab_items(caa_dir / "test" / "mmlu" / "mmlu.json")[:: max(1, 570 // args.mmlu)][
            : args.mmlu
        ]
    skip = ("out", "caa_dir", "tiny", "seed", "test_items", "shots", "analogy_pairs")
    summary: dict[str, Any] = {
        "settings": {k: v for k, v in vars(args).items() if k not in skip},
        "datasets": {},
    }
    for task in datasets:
        t0 = time.perf_counter()
        is_class_set = isinstance(task, tlsteer.ClassDataset)
        methods = None
        if args.methods is not None:  # one list for every dataset: each runs those that apply to it
            applicable = applicable_methods(task)
            methods = [m for m in args.methods if m in applicable]
            skipped = [m for m in args.methods if m not in applicable]
            if skipped:
                common.log.info(
                    "%s: %s do not apply to it; running the others", task.name, ", ".join(skipped)
                )
        config = ComparisonConfig(
            methods=methods,
            budgets=args.budgets,
            n_prompts=args.prompts,
            targets=args.targets if is_class_set else None,
            seeds=list(range(args.seeds)),
            max_new_tokens=args.max_new_tokens,
            n_resamples=args.resamples,
        )
        result = feature_vs_caa(
            model,
            sae,
            task,
            config,
            neutral=neutral,
            mmlu=None if isinstance(task, AnalogyTask) else mmlu,  # analogies: top-k accuracy only
            embedder=embedder if is_class_set else None,
            out_dir=args.out,
        )
        name = result.dataset
        summary["datasets"][name] = {
            "table": summary_rows(result),
            "judge_held_out_accuracy": result.judge_held_out_accuracy,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        common.log.info("== %s (%.0f s)", name, summary["datasets"][name]["seconds"])
        for row in summary["datasets"][name]["table"]:
            common.log.info(
                "  %15s @%s: %.3f [%.3f, %.3f]  KL %.3f (p95 %.3f)  strength %s",
                row["method"],
                row["budget"],
                row["success"],
                row["low"],
                row["high"],
                row["kl_mean"],
                row["kl_p95"],
                row["strength"],
            )
    summary["seconds"] = round(time.perf_counter() - start, 1)
    path = args.out / "feature_vs_caa_summary.json"
    if args.append and path.exists():
        before = json.loads(path.read_text())
        summary["runs"] = before.get("runs", [{"settings": before["settings"], "seconds": before["seconds"]}])
        summary["runs"].append({"settings": summary["settings"], "seconds": summary["seconds"]})
        summary["datasets"] = {**before["datasets"], **summary["datasets"]}
        summary["seconds"] = round(sum(r["seconds"] for r in summary["runs"]), 1)
    common.write_json(path, summary)
    results = load_results(args.out, summary["datasets"])
    (args.out / "feature_vs_caa_tables.md").write_text(comparison_markdown(results) + "\n")
    common.log.info("done in %.0f s", summary["seconds"])
    return path


def main(argv: list[str] | None = None) -> Path:
    p = common.parser(__doc__)
    p.add_argument("--caa-dir", type=Path, default=None, help="the CAA datasets folder (skip CAA if absent)")
    p.add_argument("--behaviours", nargs="*", default=["coordinate-other-ais", "sycophancy", "refusal"])
    p.add_argument("--sets", nargs="*", default=["speaking_styles", "aggression"])
    p.add_argument(
        "--analogies", nargs="*", default=["number_successor", "country_capital"], help="analogy domains"
    )
    p.add_argument(
        "--append", action="store_true", help="add to an existing summary (its wall time is summed)"
    )
    p.add_argument("--layer", type=int, default=6)
    p.add_argument(
        "--methods", nargs="+", default=None, help=f"of {', '.join(METHODS)} (default: all that apply)"
    )
    p.add_argument("--budgets", type=float, nargs="+", default=[0.1, 0.5])
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--train-pairs", type=int, default=64)
    p.add_argument("--test-items", type=int, default=None, help="at most N held-out A/B items (default all)")
    p.add_argument("--mmlu", type=int, default=40)
    p.add_argument("--neutral", type=int, default=16, help="neutral texts for calibration")
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--targets", nargs="+", default=None, help="classes to steer toward (default: all)")
    p.add_argument("--shots", type=int, default=5, help="demonstrations per analogy few-shot prompt")
    p.add_argument("--analogy-pairs", type=int, default=None, help="the first N pairs of each domain")
    p.add_argument("--small", action="store_true", help="2 styles, 6 methods, 1 budget, few prompts")
    p.add_argument("--replot", action="store_true", help="only redraw the figures from the JSON in --out")
    return common.run(body, p, argv, TINY)


def small(args) -> None:
    """``--small``: 2 styles, 6 methods, 1 budget, few prompts, into ``benchmarks/results/small``."""
    if args.small:
        vars(args).update(SMALL)
        if args.out == common.RESULTS:
            args.out = args.out / "small"
            args.out.mkdir(parents=True, exist_ok=True)


if __name__ == "__main__":
    main()
