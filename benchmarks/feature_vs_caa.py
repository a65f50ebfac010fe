"""Feature steering against raw CAA at matched side effects, on CAA behaviours and built-in class sets.

For each dataset, ``tlsteer.experiments.feature_vs_caa`` builds every method from the same training data
at the shipped SAE's hook, calibrates each method's strength so that its mean per-token KL from
the unsteered model on neutral text reaches each budget, and scores it on held-out data with 95%
bootstrap intervals:

- CAA behaviours (``--caa-dir``): vectors from ``--train-pairs`` generate pairs read at the
  answer letter; success is p(matching) on the 50 held-out A/B items;
- analogy domains (``--analogies``): vectors from the few-shot vs neutral prompts of the training
  pairs (``tlsteer.experiments.analogy_task``); success is top-5 accuracy of the answer's first token on
  the held-out pairs (top 1 beside it), steered at the last token; no MMLU;
- class sets: vectors from the training split (class vs the rest, mean over each reply); for each
  class, generations from built-in open prompts (second half, never used to build anything;
  ``--prompts`` split across the classes, ``--seeds`` samples each) steered toward it; success is
  the share the set's K-class judge assigns to the target; selectivity and perplexity beside.

MMLU accuracy (``--mmlu`` items of the CAA copy) at each cell's strength is a side effect.
Writes ``benchmarks/results/feature_vs_caa_<dataset>.{json,png}`` and
``feature_vs_caa_summary.json`` (wall time included).

    python benchmarks/feature_vs_caa.py --caa-dir ../shared/caa           # default run
    python benchmarks/feature_vs_caa.py --small    # about 3 minutes, into benchmarks/results/small/
    python benchmarks/feature_vs_caa.py --replot   # redraw the figures from the JSON
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

import tlsteer
from tlsteer.analogy import load_analogies
from tlsteer.data import load_ab_items, load_caa_dataset
from tlsteer.experiments import (
    METHODS,
    ABTask,
    AnalogyTask,
    applicable_methods,
    builtin_instructions,
    comparison_table,
    feature_vs_caa,
    plot_comparison,
    plot_transfer_grid,
)
from tlsteer.sae import load_embedded_sae

ROOT = Path(__file__).resolve().parents[1]
SMALL_METHODS = ("caa", "feature_full", "feature_output", "clamp", "random", "prompting")


def _fmt(ci: dict) -> str:
    return f"{ci['value']:.2f} [{ci['low']:.2f}, {ci['high']:.2f}]"


def markdown_tables(results: dict[str, dict]) -> str:
    """Matched-budget tables (methods x datasets, success with its interval) and side effects."""
    names = list(results)
    budgets = sorted({r["budget"] for res in results.values() for r in comparison_table(res) if r["budget"]})
    methods = list(dict.fromkeys(r["method"] for res in results.values() for r in comparison_table(res)))
    methods.sort(key=lambda m: (m != "unsteered", m == "prompting", m in ("caa_encoded", "random")))
    out = []
    for b in budgets:
        out += [f"Success at mean KL {b} (prompting and unsteered as they are):", ""]
        out += ["| method | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for m in methods:
            row = []
            for name in names:
                cell = results[name]["cells"].get(f"{m}@{b}", results[name]["cells"].get(m))
                row.append("" if cell is None else _fmt(cell.get("success", cell.get("p_matching"))))
            out.append(f"| `{m}` | " + " | ".join(row) + " |")
        out.append("")
    with_mmlu = [n for n in names if "mmlu" in results[n]["cells"].get("unsteered", {})]
    if with_mmlu:
        b = budgets[-1]
        out += [f"MMLU accuracy (unsteered) and its change at KL {b}:", ""]
        out += ["| method | " + " | ".join(with_mmlu) + " |", "|---" * (len(with_mmlu) + 1) + "|"]
        for m in methods:
            row = []
            for name in with_mmlu:
                cell = results[name]["cells"].get(f"{m}@{b}", results[name]["cells"].get(m))
                if cell is None:
                    row.append("")
                elif m == "unsteered":
                    row.append(_fmt(cell["mmlu"]))
                else:
                    row.append(f"{cell['mmlu_change']:+.2f}")
            out.append(f"| `{m}` | " + " | ".join(row) + " |")
        out.append("")
    for name, res in results.items():
        if "classes" not in res:
            continue
        b = budgets[-1]
        out += [f"{name} at KL {b}: selectivity, perplexity under the unsteered model, MMLU change:", ""]
        out += [
            "| method | selectivity | perplexity | MMLU change | KL mean (p95) |",
            "|---|---|---|---|---|",
        ]
        for m in methods:
            cell = res["cells"].get(f"{m}@{b}", res["cells"].get(m))
            if cell is None:
                continue
            change = cell.get("mmlu_change")
            out.append(
                f"| `{m}` | {_fmt(cell['selectivity'])} | {_fmt(cell['perplexity'])} | "
                f"{'' if change is None else f'{change:+.2f}'} | "
                f"{cell.get('kl_mean', 0):.2f} ({cell.get('kl_p95', 0):.2f}) |"
            )
        out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--caa-dir", type=Path, default=None, help="the CAA datasets folder (skip CAA if absent)"
    )
    parser.add_argument("--behaviours", nargs="*", default=["coordinate-other-ais", "sycophancy", "refusal"])
    parser.add_argument("--sets", nargs="*", default=["speaking_styles", "aggression"])
    parser.add_argument(
        "--analogies", nargs="*", default=["number_successor", "country_capital"], help="analogy domains"
    )
    parser.add_argument(
        "--append", action="store_true", help="add to an existing summary (its wall time is summed)"
    )
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument(
        "--methods", nargs="+", default=None, help=f"of {', '.join(METHODS)} (default: all that apply)"
    )
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.1, 0.5])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--train-pairs", type=int, default=64)
    parser.add_argument("--mmlu", type=int, default=40)
    parser.add_argument("--neutral", type=int, default=16, help="neutral texts for calibration")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--targets", nargs="+", default=None, help="classes to steer toward (default: all)")
    parser.add_argument("--small", action="store_true", help="2 styles, 6 methods, 1 budget, few prompts")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--replot", action="store_true", help="only redraw the figures from the JSON in --out"
    )
    args = parser.parse_args()
    if args.replot:
        summary = json.loads((args.out / "feature_vs_caa_summary.json").read_text())
        results = {}
        for name in summary["datasets"]:
            path = args.out / f"feature_vs_caa_{name}.json"
            results[name] = json.loads(path.read_text())
            plot_comparison(results[name], path=path.with_suffix(".png"))
            if "classes" in results[name]:
                plot_transfer_grid(results[name], path=path.with_name(f"{path.stem}_transfer.png"))
        (args.out / "feature_vs_caa_tables.md").write_text(markdown_tables(results) + "\n")
        return
    if args.small:
        args.sets, args.methods, args.prompts, args.seeds = ["speaking_styles"], list(SMALL_METHODS), 16, 1
        args.max_new_tokens, args.neutral, args.resamples, args.behaviours, args.mmlu = 16, 12, 1000, [], 0
        args.budgets, args.targets, args.analogies = [0.5], ["formal", "pirate"], []
        if args.out == ROOT / "benchmarks" / "results":
            args.out = args.out / "small"
    logging.basicConfig(format="%(message)s")
    logging.getLogger("tlsteer").setLevel(logging.INFO)  # the comparison's progress, stage by stage
    torch.set_grad_enabled(False)
    start = time.perf_counter()
    model = tlsteer.load_model()
    sae = load_embedded_sae(args.layer)
    neutral = tlsteer.load_neutral_text()[: args.neutral]
    mmlu = None
    if args.caa_dir is not None and args.mmlu:
        mmlu = load_ab_items(args.caa_dir / "test" / "mmlu" / "mmlu.json")[:: max(1, 570 // args.mmlu)][
            : args.mmlu
        ]
    common = {
        "budgets": args.budgets,
        "seeds": list(range(args.seeds)),
        "max_new_tokens": args.max_new_tokens,
        "neutral": neutral,
        "mmlu": mmlu,
        "n_resamples": args.resamples,
        "out_dir": args.out,
    }
    summary = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "caa_dir")},
        "datasets": {},
    }
    tasks = []
    if args.caa_dir is not None:
        instructions = builtin_instructions()["caa"]
        for b in args.behaviours:
            pairs = load_caa_dataset(args.caa_dir / "generate" / b / "generate_dataset.json", model)
            items = load_ab_items(args.caa_dir / "test" / b / "test_dataset_ab.json")
            tasks.append(ABTask(b, pairs[: args.train_pairs], items, instructions.get(b)))
    tasks += [tlsteer.load_class_dataset(name) for name in args.sets]
    domains, analogy_instructions = load_analogies(), builtin_instructions()["analogies"]
    tasks += [
        AnalogyTask(domains[name], instruction=analogy_instructions.get(name)) for name in args.analogies
    ]
    for task in tasks:
        t0 = time.perf_counter()
        kwargs = dict(common)
        if isinstance(task, tlsteer.ClassDataset):
            kwargs["n_prompts"] = args.prompts
            kwargs["targets"] = args.targets
        if isinstance(task, AnalogyTask):
            kwargs["mmlu"] = None  # top-k accuracy of the answer token only
        if args.methods is not None:  # one list for every dataset: each runs those that apply to it
            applicable = applicable_methods(task)
            kwargs["methods"] = [m for m in args.methods if m in applicable]
            skipped = [m for m in args.methods if m not in applicable]
            if skipped:
                print(f"{task.name}: {', '.join(skipped)} do not apply to it; running the others", flush=True)
        result = feature_vs_caa(model, sae, task, **kwargs)
        name = result["dataset"]
        summary["datasets"][name] = {
            "table": comparison_table(result),
            "judge_held_out_accuracy": result.get("judge_held_out_accuracy"),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(f"== {name} ({summary['datasets'][name]['seconds']:.0f} s)", flush=True)
        for row in summary["datasets"][name]["table"]:
            print(
                f"  {row['method']:>15} @{row['budget']}: {row['success']:.3f}"
                f" [{row['low']:.3f}, {row['high']:.3f}]"
                f"  KL {row['kl_mean']:.3f} (p95 {row['kl_p95']:.3f})  strength {row['strength']}",
                flush=True,
            )
    summary["seconds"] = round(time.perf_counter() - start, 1)
    path = args.out / "feature_vs_caa_summary.json"
    if args.append and path.exists():
        before = json.loads(path.read_text())
        summary["runs"] = before.get("runs", [{"settings": before["settings"], "seconds": before["seconds"]}])
        summary["runs"].append({"settings": summary["settings"], "seconds": summary["seconds"]})
        summary["datasets"] = {**before["datasets"], **summary["datasets"]}
        summary["seconds"] = round(sum(r["seconds"] for r in summary["runs"]), 1)
    path.write_text(json.dumps(summary, indent=1) + "\n")
    results = {
        n: json.loads((args.out / f"feature_vs_caa_{n}.json").read_text()) for n in summary["datasets"]
    }
    (args.out / "feature_vs_caa_tables.md").write_text(markdown_tables(results) + "\n")
    print(f"done in {summary['seconds']:.0f} s")


if __name__ == "__main__":
    main()
