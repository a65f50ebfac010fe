"""The pre-registered verdict: every method against CAA, paired, on the plan's datasets.

Reads a committed analysis plan (``benchmarks/plans/verdict-1.toml``: the datasets, methods, KL
budget, prompts, seeds, the margin and the correction; :mod:`tlsteer.experiments.plan`), records
its SHA-256 and the commit that last touched it, and runs ``tlsteer.experiments.feature_vs_caa``
on each of its datasets with the plan's config:

- class sets: every target steered toward on every held-out test prompt (one seed), each method
  calibrated to the plan's KL budget in the test's own setting (chat turn, steered from the last
  prompt token on, disjoint calibration prompts); a set whose judge does not qualify (held-out
  accuracy or accuracy on the set's own example replies below the plan's ``judge_min_accuracy``)
  leaves the verdict, and the output says so;
- analogy domains: every test pair, scored on the whole answer.

Then :func:`tlsteer.experiments.verdict.verdict` compares every method with CAA on the same units:
the difference, its Holm-corrected interval (bootstrap over prompts, stratified by target), the
90% equivalence interval against the plan's margin, and one word (better, worse, equivalent,
undecided). Per-target tables sit beside the pooled one.

Writes into ``benchmarks/results/verdict/`` (``--small``: ``verdict_small/``): each dataset's
``feature_vs_caa_<dataset>.json`` and figures, ``verdict.json`` (the plan, its hash and commit,
the tables, the judges, wall times), ``verdict.md`` (the tables) and ``verdict.png`` (the
differences with their corrected intervals).

    python benchmarks/verdict.py                       # the plan's run (<= 60 min on 2 cores)
    python benchmarks/verdict.py --small               # about 3 minutes: deviations recorded
    python benchmarks/verdict.py --executor ray --workers 2
    python benchmarks/verdict.py --tiny                # seconds, a tiny model: checks the script
"""

from __future__ import annotations

import argparse
import functools
import subprocess
import time
from pathlib import Path
from typing import Any

import _common as common
import matplotlib.pyplot as plt
import numpy as np

from tlsteer.analogy import AnalogyDomain, load_analogies
from tlsteer.data import load_heldout_prompts
from tlsteer.experiments import (
    AnalogyTask,
    ComparisonResult,
    applicable_methods,
    builtin_instructions,
    feature_vs_caa,
)
from tlsteer.experiments.executor import make_executor
from tlsteer.experiments.plan import AnalysisPlan, load_plan
from tlsteer.experiments.verdict import Verdict, verdict

PLAN = Path(__file__).parent / "plans" / "verdict-2.toml"
SMALL = {
    "sets": ["speaking_styles"],
    "targets": ["formal", "pirate"],
    "analogies": [],
    "methods": ["caa", "feature_full", "random", "prompting"],
    "n_prompts": 12,
    "n_calibration_prompts": 6,
    "n_random": 2,
    "max_new_tokens": 16,
}
"""``--small``: the plan's analysis on a few cells (for the notebook); every deviation is recorded."""
TINY = {
    "sets": ["speaking_styles"],
    "targets": ["formal", "pirate"],
    "analogies": ["number_successor"],
    "methods": [
        "caa",
        "feature_full",
        "feature_topk",
        "caa_projected",
        "random",
        "prompting",
        "codes_add",
        "codes_bottleneck",
    ],
    "ks": [2],
    "n_prompts": 4,
    "n_calibration_prompts": 2,
    "n_random": 2,
    "max_new_tokens": 4,
    "layer": 1,
    "n_resamples": 200,
    "analogy_pairs": 16,
    "shots": 2,
}


def applicable(methods: list[str], dataset: Any, codebook: Any, info: dict[str, Any]) -> tuple[str, ...]:
    """The plan's method families that apply to ``dataset`` (``mean_centred`` needs classes, the
    ``codes_*`` methods a codebook); the ones left out are logged and recorded in ``info``."""
    valid = applicable_methods(dataset, codebook=codebook)
    left_out = [m for m in methods if m not in valid]
    if left_out:
        common.log.info(
            "%s: %s do not apply (tlsteer.experiments.applicable_methods)", dataset.name, left_out
        )
        info["left_out"][dataset.name] = left_out
    return tuple(m for m in methods if m in valid)


def plan_commit(path: Path) -> dict[str, Any]:
    """The last commit that touched the plan, and whether the file differs from it."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "log", "-1", "--format=%H %cI", "--", str(path.resolve())],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        dirty = subprocess.run(
            ["git", "diff", "--quiet", "HEAD", "--", str(path.resolve())], cwd=root, check=False
        ).returncode
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "committed_at": None, "uncommitted_changes": None}
    return {
        "commit": commit[0] if commit else None,
        "committed_at": commit[1] if len(commit) > 1 else None,
        "uncommitted_changes": bool(dirty) or not commit,
    }


def judge_check(dataset: Any, embedder: Any, minimum: float) -> dict[str, Any]:
    """The set's judge (:func:`tlsteer.eval.judge_report`): held-out accuracy, accuracy on its own
    example replies, the degenerate detector's false positives, whether it qualifies and why not."""
    from tlsteer.eval import judge_report

    return judge_report(dataset, embedder, minimum=minimum).to_dict()


def tables(result: ComparisonResult, plan: AnalysisPlan, budget: float) -> dict[str, Verdict]:
    """The pooled verdict and, for a class set, one per target."""
    a = plan.analysis
    kw = {
        "margin": a["margin"],
        "reference": a["reference"],
        "budget": budget,
        "alpha": a["alpha"],
        "equivalence_level": a["equivalence_level"],
        "n_resamples": a["n_resamples"],
    }
    out = {"pooled": verdict(result, **kw)}
    for t in result.targets:
        out[t] = verdict(result, stratum=t, **kw)
    return out


def markdown(
    results: dict[str, ComparisonResult], verdicts: dict[str, dict[str, Verdict]], info: dict
) -> str:
    """The verdict tables: pooled (methods x datasets), per target, cells with KL and cosine."""
    lines = [
        f"Plan `{info['plan']['path']}` (sha256 `{info['plan']['sha256'][:16]}`), reference "
        f"`{info['analysis']['reference']}`, margin ±{info['analysis']['margin']}, Holm at "
        f"alpha {info['analysis']['alpha']}.",
        "",
    ]
    for name, by in verdicts.items():
        result = results[name]
        lines += [
            f"### {name}",
            "",
            "| method | success | method − CAA [Holm interval] | 90% interval | verdict |",
        ]
        lines.append("|---|---|---|---|---|")
        for row in by["pooled"].rows:
            cell = result.cells[_key(row.method)]
            lines.append(
                f"| {row.method} | {cell.success.value:.3f} | {row.difference:+.3f} "
                f"[{row.low:+.3f}, {row.high:+.3f}] | [{row.eq_low:+.3f}, {row.eq_high:+.3f}] | "
                f"**{row.word}** |"
            )
        targets = [t for t in by if t != "pooled"]
        if targets:
            lines += ["", f"Per target ({name}): method − CAA, verdict", ""]
            lines.append("| method | " + " | ".join(targets) + " |")
            lines.append("|---|" + "---|" * len(targets))
            for row in by["pooled"].rows:
                cells = [
                    f"{by[t].row(row.method).difference:+.3f} {by[t].row(row.method).word}" for t in targets
                ]
                lines.append(f"| {row.method} | " + " | ".join(cells) + " |")
        lines += ["", f"Cells ({name}): KL reached in the test setting, cosine with CAA", ""]
        lines.append("| cell | success [95%] | fluent success | KL mean | KL p95 | reached | cosine |")
        lines.append("|---|---|---|---|---|---|---|")
        for cell in result.cells.values():
            fluent = "" if cell.success_fluent is None else str(cell.success_fluent)
            kl = "" if cell.kl_mean is None else f"{cell.kl_mean:.3f}"
            p95 = "" if cell.kl_p95 is None else f"{cell.kl_p95:.3f}"
            cos = "" if cell.cosine is None else f"{cell.cosine:+.2f}"
            lines.append(
                f"| {cell.label} | {cell.success} | {fluent} | {kl} | {p95} | "
                f"{'' if cell.reached is None else cell.reached} | {cos} |"
            )
        lines.append("")
    return "\n".join(lines)


def _key(label: str) -> tuple[str, float | None]:
    method, at, budget = label.partition("@")
    return (method, float(budget)) if at else (method, None)


def plot(verdicts: dict[str, dict[str, Verdict]], margin: float, path: Path) -> None:
    """Each dataset's differences from CAA with their Holm intervals, and the margin."""
    fig, axes = plt.subplots(1, len(verdicts), figsize=(5 * len(verdicts), 4), squeeze=False)
    colours = {"better": "tab:green", "worse": "tab:red", "equivalent": "tab:blue", "undecided": "tab:gray"}
    for ax, (name, by) in zip(axes[0], verdicts.items(), strict=True):
        rows = by["pooled"].rows
        y = np.arange(len(rows))
        for i, r in enumerate(rows):
            ax.plot([r.low, r.high], [i, i], color=colours[r.word], lw=2)
            ax.plot(r.difference, i, "o", color=colours[r.word])
        ax.axvline(0, color="k", lw=0.8)
        ax.axvspan(-margin, margin, color="tab:blue", alpha=0.1)
        ax.set_yticks(y, [f"{r.method} ({r.word})" for r in rows], fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("success − CAA (Holm-corrected 95%)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def body(args) -> Path:
    start = time.perf_counter()
    plan = load_plan(args.plan)
    design = dict(plan.design)
    if args.model != plan.model and not args.tiny:  # the plan fixes the model; --model confirms it
        raise SystemExit(
            f"the plan {args.plan} is for {plan.model!r}; run it with --model {plan.model} "
            f"(got {args.model!r})"
        )
    if args.out == common.RESULTS / "verdict" and common.model_tag(args):
        args.out = common.RESULTS / f"verdict{common.model_tag(args)}"
    deviations = {}
    for key in (
        "sets",
        "targets",
        "analogies",
        "methods",
        "ks",
        "n_prompts",
        "n_calibration_prompts",
        "n_random",
        "max_new_tokens",
        "layer",
        "n_resamples",
        "analogy_pairs",
        "shots",
    ):
        value = getattr(args, key, None)
        if value is not None:
            deviations[key] = value
    if args.small:
        deviations = {**SMALL, **deviations}
        if args.out == common.RESULTS / "verdict":
            args.out = common.RESULTS / "verdict_small"
    args.out.mkdir(parents=True, exist_ok=True)
    sets = deviations.get("sets", design["class_sets"])
    analogies = deviations.get("analogies", design["analogy_domains"])
    methods = deviations.get("methods", design["methods"])
    layer = deviations.get("layer", design["layer"])
    budget = float(design["budget"])
    overrides = {
        k: v
        for k, v in {
            "n_prompts": deviations.get("n_prompts"),
            "n_calibration_prompts": deviations.get("n_calibration_prompts", design["n_calibration_prompts"]),
            "n_random": deviations.get("n_random", design["n_random_directions"]),
            "max_new_tokens": deviations.get("max_new_tokens"),
            "n_resamples": deviations.get("n_resamples"),
            "ks": tuple(deviations["ks"]) if "ks" in deviations else None,
        }.items()
        if v is not None
    }
    model = common.load_model(args)
    sae = common.load_sae(args, model, layer)
    codebook = None
    if any(m.startswith("codes_") for m in methods):  # the codebook arm: the shipped codebook at the layer
        codebook = common.load_codebook(args, model, layer)
    executor = make_executor(args.executor, workers=args.workers)
    model_loader = None
    if args.executor == "ray":
        model_loader = functools.partial(common.load_model, argparse.Namespace(**vars(args)))
    embedder = common.load_embedder(args)
    info: dict[str, Any] = {
        "plan": plan.record() | plan_commit(Path(args.plan)),
        "model": model.cfg.model_name,
        "design": design,
        "analysis": plan.analysis,
        "deviations": deviations,
        "executor": args.executor if args.executor == "inprocess" else f"ray x{args.workers}",
        "judges": {},
        "left_out": {},
        "datasets": {},
    }
    results: dict[str, ComparisonResult] = {}
    calibration = load_heldout_prompts("calibration")
    for name in sets:
        dataset = common.load_class_dataset(args, name)
        check = judge_check(dataset, embedder, plan.analysis["judge_min_accuracy"])
        info["judges"][name] = check
        if not check["qualifies"] and not args.tiny:
            common.log.info("%s leaves the verdict: %s", name, check["why"])
            continue
        config = plan.config(
            methods=applicable(methods, dataset, codebook, info),
            targets=deviations.get("targets"),
            **overrides,
        )
        t0 = time.perf_counter()
        result = feature_vs_caa(
            model,
            sae,
            dataset,
            config,
            calibration_prompts=calibration,
            embedder=embedder,
            out_dir=args.out,
            plan=plan,
            executor=executor,
            model_loader=model_loader,
            codebook=codebook,
        )
        results[result.dataset] = result
        info["datasets"][result.dataset] = {"seconds": round(time.perf_counter() - t0, 1)}
    executor.close()
    domains, analogy_instructions = load_analogies(), builtin_instructions()["analogies"]
    for name in analogies:
        domain = domains[name]
        if getattr(args, "analogy_pairs", None):
            domain = AnalogyDomain(name, domain.pairs[: args.analogy_pairs], domain.template)
        task = AnalogyTask(  # success: the whole answer ranks first among the candidates
            domain, n_shots=args.shots or 5, k=1, instruction=analogy_instructions.get(name)
        )
        config = plan.config(
            methods=applicable(methods, task, codebook, info),
            n_resamples=overrides.get("n_resamples", plan.analysis["n_resamples"]),
            **({"ks": tuple(deviations["ks"])} if "ks" in deviations else {}),
        )
        t0 = time.perf_counter()
        result = feature_vs_caa(model, sae, task, config, out_dir=args.out, plan=plan, codebook=codebook)
        results[result.dataset] = result
        info["datasets"][result.dataset] = {"seconds": round(time.perf_counter() - t0, 1)}
    verdicts = {name: tables(result, plan, budget) for name, result in results.items()}
    for name, by in verdicts.items():
        info["datasets"][name]["verdict"] = {k: v.to_dict() for k, v in by.items()}
    info["seconds"] = round(time.perf_counter() - start, 1)
    path = common.write_json(args.out / "verdict.json", info)
    (args.out / "verdict.md").write_text(markdown(results, verdicts, info) + "\n")
    if verdicts:
        plot(verdicts, plan.analysis["margin"], args.out / "verdict.png")
    common.log.info("verdict done in %.0f s: %s", info["seconds"], path)
    for name, by in verdicts.items():
        for row in by["pooled"].rows:
            common.log.info("  %s %s: %s", name, row.method, row)
    return path


def main(argv: list[str] | None = None) -> Path:
    p = common.parser(__doc__, out_help="results folder (default: benchmarks/results/verdict)")
    p.add_argument("--plan", type=Path, default=PLAN, help="the committed analysis plan (TOML)")
    p.add_argument(
        "--small", action="store_true", help="a few cells in about 3 minutes (deviations recorded)"
    )
    p.add_argument("--sets", nargs="*", default=None, help="override the plan's class sets (recorded)")
    p.add_argument("--targets", nargs="+", default=None)
    p.add_argument("--analogies", nargs="*", default=None)
    p.add_argument("--methods", nargs="+", default=None, help="method families (tlsteer.experiments.METHODS)")
    p.add_argument("--ks", type=int, nargs="+", default=None)
    p.add_argument("--n-prompts", type=int, default=None)
    p.add_argument("--n-calibration-prompts", type=int, default=None)
    p.add_argument("--n-random", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--n-resamples", type=int, default=None)
    p.add_argument("--layer", type=int, default=None)
    p.add_argument("--analogy-pairs", type=int, default=None)
    p.add_argument("--shots", type=int, default=None)
    p.add_argument("--executor", choices=["inprocess", "ray"], default="inprocess")
    p.add_argument("--workers", type=int, default=2, help="Ray workers (--executor ray)")
    return common.run(body, p, argv, TINY, default_out=common.RESULTS / "verdict")


if __name__ == "__main__":
    main()
