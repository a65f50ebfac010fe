"""Does the ranking of steering methods hold across the two embedded models? (gemma-ranking-1, Question 2)

The pre-registered analysis of ``benchmarks/plans/gemma-ranking-1.toml`` ("Question 2"), exactly:

- Data: the cells (method at the KL budget, or prompting) that both verdict runs scored on the
  class set ``--set`` (default speaking_styles; ``unsteered`` left out), each run's
  ``feature_vs_caa_<set>.json`` (``--a``: SmolLM2's verdict-2 run, ``benchmarks/results/verdict/``;
  ``--b``: gemma's, ``benchmarks/results/verdict_gemma-3-270m/``), restricted to the first
  ``--n-prompts`` test prompts (default: the plan's ``n_test_prompts``, 48), the same prompts in
  both runs: every target of both runs must have its unit on each of them, or the script refuses.
- Statistic: Spearman's correlation (average ranks for ties) between the two models' success rates
  over the shared cells; a cell's success is the mean over targets of the per-target mean outcome
  (the verdict's primary metric). Success rates are rounded to 12 decimals before ranking, so two
  equal rates tie exactly whatever order their sums were taken in. A model whose rates are all equal
  has no ranking: the correlation is undefined (``null``) and the word is "undecided".
- Interval: 95% percentile bootstrap over the prompts (``--n-resamples`` 2000, ``--seed`` 0, a
  ``numpy`` generator): a resample draws ``n_prompts`` prompt indices with replacement, and a drawn
  prompt brings its units in every target in BOTH models (one draw, two models: the pairing). A
  resample in which either model's rates are all equal has no correlation: it is dropped and counted.
- Reading: the ranking "holds" if the interval's lower bound is above 0, is "reversed" if its upper
  bound is below 0, and is "undecided" otherwise.
- A model's side may be several runs (``--a`` / ``--b`` take several folders; gemma-ranking-2's
  Question 2 adds the codes arm this way): they are read as one only if they hold the same units and
  every cell they share has the same outcomes unit for unit, or the script refuses; a cell's word
  comes from the first run whose ``verdict.json`` has one.
- Beside it, not tested: each cell's success in both models (on the shared prompts), each method's
  word against CAA in each model as its ``verdict.json`` has it (SmolLM2's on its 120 prompts,
  gemma's on 48), and how many words agree.

Writes ``<name>.json`` (``--name``, default ``method_ranking``: the command, the plan's path and
SHA-256, the inputs, the settings, the per-cell table, the correlation with its interval and word,
the words) and ``<name>.png`` (each cell's success in model A against model B, the diagonal, the
correlation in the title) into ``--out`` (default ``benchmarks/results``).

    python benchmarks/method_ranking.py        # after both verdict runs; about a second
    python benchmarks/method_ranking.py --plan benchmarks/plans/gemma-ranking-2.toml \\
        --a benchmarks/results/verdict benchmarks/results/codebooks_verdict \\
        --b benchmarks/results/verdict_gemma-3-270m benchmarks/results/verdict_gemma-3-270m_codes \\
        --name method_ranking_codes            # gemma-ranking-2's Question 2: the codes added
    python benchmarks/method_ranking.py --tiny # two small synthetic verdict folders: checks the script
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _common as common
import matplotlib.pyplot as plt
import numpy as np
from scipy.stats import rankdata

from tlsteer.experiments.plan import DEFAULT_MODEL, load_plan
from tlsteer.profile import spearman

PLAN = Path(__file__).parent / "plans" / "gemma-ranking-1.toml"
DEFAULT_A = common.RESULTS / "verdict"
DEFAULT_B = common.RESULTS / "verdict_gemma-3-270m"
EXCLUDED = ("unsteered",)
"""Cells that are no steering method and never enter the ranking."""
MIN_CELLS = 3
"""A ranking of fewer cells says too little to compare."""
LEVEL = 0.95
"""The interval's coverage (the plan's)."""
DECIMALS = 12
"""Success rates are rounded to this many decimals before ranking (exact ties stay ties)."""
TINY = {"n_prompts": 6}
TINY_CELLS = {"unsteered": 0.1, "caa@0.5": 0.7, "feature_top8@0.5": 0.4, "random@0.5": 0.2, "prompting": 0.9}
"""The synthetic runs' cells and the success probability of each (model B's shifted a little)."""
TINY_TARGETS = ("formal", "pirate")
TINY_WORDS = ("better", "worse", "equivalent", "undecided")


@dataclass(frozen=True)
class Outcomes:
    """One run's outcomes on the shared cells and prompts, summed per (cell, target, prompt).

    ``sums[c, t, p]`` is the sum of the outcomes of cell ``c`` over the units of target ``t`` on
    prompt ``p``; ``counts[t, p]`` is the number of those units (the same in every cell: every cell
    scores every unit once). A prompt drawn ``w`` times weighs its sums and counts by ``w``.
    """

    cells: tuple[str, ...]
    targets: tuple[str, ...]
    sums: np.ndarray
    counts: np.ndarray

    @property
    def n_prompts(self) -> int:
        return self.counts.shape[1]


def shared_cells(cells_a: list[str], cells_b: list[str]) -> list[str]:
    """The cells both runs scored, in run A's order, ``unsteered`` left out; at least :data:`MIN_CELLS`."""
    shared = [c for c in cells_a if c in cells_b and c not in EXCLUDED]
    if len(shared) < MIN_CELLS:
        raise ValueError(
            f"the two runs share {len(shared)} cells ({shared}); a ranking needs at least {MIN_CELLS}. "
            f"Run A's cells: {cells_a}; run B's: {cells_b}"
        )
    return shared


def scored_cells(result: dict[str, Any]) -> list[str]:
    """The cells of a ``feature_vs_caa_<set>.json`` that kept their per-unit outcomes."""
    return [c for c, cell in result["cells"].items() if cell.get("outcomes") is not None]


def outcome_table(result: dict[str, Any], cells: list[str], n_prompts: int, name: str = "run") -> Outcomes:
    """The outcomes of ``cells`` on prompts ``0 .. n_prompts - 1`` of a ``feature_vs_caa_<set>.json``.

    Units on later prompts are left out. Raises ``ValueError`` if a target lacks a unit on one of
    those prompts, or if a unit names a target the result does not list.
    """
    targets = tuple(result["targets"])
    units = [(str(t), int(p)) for t, p in result.get("units", ())]
    if not units:
        raise ValueError(f"{name} records no units (written before units were kept); rerun it")
    index = {t: i for i, t in enumerate(targets)}
    unknown = sorted({t for t, _ in units if t not in index})
    if unknown:
        raise ValueError(
            f"{name}: units name targets {unknown} that are not among its targets {list(targets)}"
        )
    counts = np.zeros((len(targets), n_prompts))
    kept = [(u, index[t], p) for u, (t, p) in enumerate(units) if 0 <= p < n_prompts]
    for _, t, p in kept:
        counts[t, p] += 1
    missing = {targets[t]: [int(p) for p in np.flatnonzero(counts[t] == 0)] for t in range(len(targets))}
    missing = {t: ps for t, ps in missing.items() if ps}
    if missing:
        shown = {t: ps[:8] + (["..."] if len(ps) > 8 else []) for t, ps in missing.items()}
        raise ValueError(
            f"{name} has no unit on some of the first {n_prompts} prompts: {shown}; both runs need every "
            "target on every one of them (lower --n-prompts, or rerun with more test prompts)"
        )
    sums = np.zeros((len(cells), len(targets), n_prompts))
    for c, cell in enumerate(cells):
        outcomes = np.asarray(result["cells"][cell]["outcomes"], dtype=float)
        if outcomes.shape != (len(units),):
            raise ValueError(f"{name}: cell {cell!r} has {outcomes.size} outcomes for {len(units)} units")
        for u, t, p in kept:
            sums[c, t, p] += outcomes[u]
    return Outcomes(tuple(cells), targets, sums, counts)


def success(table: Outcomes, weights: np.ndarray | None = None) -> np.ndarray:
    """Each cell's success: the mean over targets of the per-target mean outcome.

    ``weights`` (``[n_resamples, n_prompts]``, how often each prompt was drawn) gives one row of
    rates per resample (``[n_resamples, n_cells]``): a drawn prompt brings its units in every target.
    Without it, one rate per cell on all the prompts.
    """
    w = np.ones((1, table.n_prompts)) if weights is None else np.asarray(weights, dtype=float)
    per_target = np.einsum("rp,ctp->rct", w, table.sums) / np.einsum("rp,tp->rt", w, table.counts)[:, None]
    rates = np.round(per_target.mean(-1), DECIMALS)
    return rates[0] if weights is None else rates


def prompt_weights(n_prompts: int, n_resamples: int, seed: int) -> np.ndarray:
    """``[n_resamples, n_prompts]``: how often each prompt is drawn in each resample (``n_prompts``
    draws with replacement per resample, a ``numpy`` generator seeded by ``seed``)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_prompts, size=(n_resamples, n_prompts))
    weights = np.zeros((n_resamples, n_prompts))
    np.add.at(weights, (np.arange(n_resamples)[:, None], draws), 1)
    return weights


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's correlation of each row of ``x`` with the same row of ``y`` (average ranks for
    ties); NaN for a row where either is constant."""
    rx, ry = rankdata(x, axis=1), rankdata(y, axis=1)
    rx, ry = rx - rx.mean(1, keepdims=True), ry - ry.mean(1, keepdims=True)
    denom = np.sqrt((rx**2).sum(1) * (ry**2).sum(1))
    out = np.full(x.shape[0], np.nan)
    ok = denom > 0
    out[ok] = np.clip((rx * ry).sum(1)[ok] / denom[ok], -1.0, 1.0)
    return out


def word(low: float | None, high: float | None) -> str:
    """The plan's reading of the interval: "holds", "reversed" or "undecided"."""
    if low is None or high is None:
        return "undecided"
    return "holds" if low > 0 else "reversed" if high < 0 else "undecided"


def ranking_test(
    a: Outcomes, b: Outcomes, n_resamples: int, seed: int, level: float = LEVEL
) -> dict[str, Any]:
    """The correlation of the two runs' success rates, its paired bootstrap interval and its word.

    ``a`` and ``b`` hold the same cells in the same order and the same number of prompts (the same
    prompts). One set of prompt draws (:func:`prompt_weights`) resamples both.
    """
    if a.cells != b.cells:
        raise ValueError(f"the two tables hold different cells: {a.cells} and {b.cells}")
    if a.n_prompts != b.n_prompts:
        raise ValueError(f"the two tables hold {a.n_prompts} and {b.n_prompts} prompts; they need the same")
    value = spearman(success(a), success(b))
    weights = prompt_weights(a.n_prompts, n_resamples, seed)
    values = spearman_rows(success(a, weights), success(b, weights))
    kept = values[np.isfinite(values)]
    low = high = None
    if kept.size:
        tail = (1 - level) / 2
        low, high = (float(q) for q in np.quantile(kept, [tail, 1 - tail]))
    defined = math.isfinite(value)
    return {
        "value": value if defined else None,
        "low": low,
        "high": high,
        "level": level,
        "word": word(low, high) if defined else "undecided",
        "n_resamples": n_resamples,
        "dropped_resamples": int(values.size - kept.size),
    }


def verdict_words(verdict: dict[str, Any], dataset: str) -> dict[str, str]:
    """Each method's word against the reference in a ``verdict.json`` (the pooled table of
    ``dataset``); the reference itself gets "reference". Empty if the verdict has no such table."""
    pooled = verdict.get("datasets", {}).get(dataset, {}).get("verdict", {}).get("pooled")
    if not pooled:
        return {}
    words = {row["method"]: row["word"] for row in pooled["rows"]}
    return words | {pooled["reference"]: "reference"}


def words_table(cells: list[str], words_a: dict[str, str], words_b: dict[str, str]) -> tuple[dict, dict]:
    """Per cell: both words and whether they agree (``None`` where one is missing or it is the
    reference); and the count of agreeing words among the cells compared."""
    table, agree, compared = {}, 0, 0
    for cell in cells:
        wa, wb = words_a.get(cell), words_b.get(cell)
        same = None
        if wa is not None and wb is not None and "reference" not in (wa, wb):
            same = wa == wb
            compared += 1
            agree += same
        table[cell] = {"a": wa, "b": wb, "agree": same}
    return table, {"agree": agree, "compared": compared}


def ranks(values: np.ndarray) -> list[float]:
    """1 for the highest success (average ranks for ties)."""
    return [float(r) for r in rankdata(-np.asarray(values))]


def merge_runs(results: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """One model's runs read as one: the union of their scored cells (first seen first).

    The runs must hold the same targets and units in the same order, and every cell two runs share
    must have the same outcomes unit for unit (seeded runs of one design reproduce each other);
    otherwise ``ValueError`` names the runs and the cell. One run is returned as it is.
    """
    if len(results) != len(names):
        raise ValueError(f"{len(results)} runs but {len(names)} names")
    first = results[0]
    if len(results) == 1:
        return first
    cells: dict[str, Any] = {c: first["cells"][c] for c in scored_cells(first)}
    origin = dict.fromkeys(cells, names[0])
    for result, name in zip(results[1:], names[1:], strict=True):
        same = {
            "targets": list(result.get("targets", ())) == list(first.get("targets", ())),
            "units": [list(u) for u in result.get("units", ())] == [list(u) for u in first.get("units", ())],
        }
        for key, ok in same.items():
            if not ok:
                raise ValueError(
                    f"{name} and {names[0]} hold different {key}; only runs of the same units can be merged"
                )
        for cell in scored_cells(result):
            outcomes = result["cells"][cell]
            if cell not in cells:
                cells[cell], origin[cell] = outcomes, name
                continue
            x, y = np.asarray(cells[cell]["outcomes"]), np.asarray(outcomes["outcomes"])
            if x.shape != y.shape or not np.array_equal(x, y):
                differ = int((x != y).sum()) if x.shape == y.shape else f"{x.size} vs {y.size}"
                raise ValueError(
                    f"cell {cell!r} has different outcomes in {origin[cell]} and {name} ({differ} units "
                    "differ): the runs are not the same design, so they cannot be read as one"
                )
    return {**first, "cells": cells, "plan": [r.get("plan") for r in results]}


def merge_words(verdicts: list[dict[str, Any]], dataset: str) -> dict[str, str]:
    """Each cell's word against the reference, from the first verdict that has one."""
    words: dict[str, str] = {}
    for verdict in verdicts:
        for cell, w in verdict_words(verdict, dataset).items():
            words.setdefault(cell, w)
    return words


def read_run(folder: Path, dataset: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A verdict folder's ``feature_vs_caa_<dataset>.json`` and its ``verdict.json`` (``{}`` if absent)."""
    path = folder / f"feature_vs_caa_{dataset}.json"
    if not path.is_file():
        raise SystemExit(
            f"no {path.name} in {common.repo_relative(folder)}: run the verdict there first, e.g. "
            "python benchmarks/verdict.py --model gemma-3-270m --plan benchmarks/plans/gemma-ranking-1.toml"
        )
    verdict_path = folder / "verdict.json"
    verdict = json.loads(verdict_path.read_text()) if verdict_path.is_file() else {}
    if not verdict:
        common.log.warning("no verdict.json in %s: its words are missing", common.repo_relative(folder))
    return json.loads(path.read_text()), verdict


def model_name(verdict: dict[str, Any]) -> str:
    """The model a ``verdict.json`` ran (its own record, else its plan's design, else the default)."""
    return verdict.get("model") or verdict.get("design", {}).get("model") or DEFAULT_MODEL


def write_tiny_runs(folder: Path, n_prompts: int, seed: int) -> tuple[Path, Path]:
    """Two small verdict-like folders with random outcomes (2 targets; 4 cells and ``unsteered``):
    run A on ``n_prompts + 2`` prompts (the later ones are left out, as SmolLM2's are), run B on
    ``n_prompts``; each with a ``verdict.json`` of random words. For ``--tiny`` only."""
    rng = np.random.default_rng(seed)
    out = []
    for side, model, extra, shift in (("a", DEFAULT_MODEL, 2, 0.0), ("b", "gemma-3-270m", 0, 0.1)):
        units = [[t, p] for t in TINY_TARGETS for p in range(n_prompts + extra)]
        cells = {
            cell: {"outcomes": (rng.random(len(units)) < min(1.0, prob + shift)).astype(float).tolist()}
            for cell, prob in TINY_CELLS.items()
        }
        result = {"dataset": "speaking_styles", "targets": list(TINY_TARGETS), "units": units, "cells": cells}
        rows = [
            {"method": cell, "word": str(rng.choice(TINY_WORDS))}
            for cell in TINY_CELLS
            if cell not in ("unsteered", "caa@0.5")
        ]
        verdict = {
            "model": model,
            "datasets": {"speaking_styles": {"verdict": {"pooled": {"reference": "caa@0.5", "rows": rows}}}},
        }
        run = folder / f"tiny_verdict_{side}"
        common.write_json(run / "feature_vs_caa_speaking_styles.json", result)
        common.write_json(run / "verdict.json", verdict)
        out.append(run)
    return out[0], out[1]


def plot(out: dict[str, Any], path: Path) -> None:
    """Each cell's success in model A against model B, labelled, with the diagonal."""
    names = list(out["table"])
    xa = [out["table"][c]["success_a"] for c in names]
    xb = [out["table"][c]["success_b"] for c in names]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--")
    ax.scatter(xa, xb, color="tab:blue")
    for name, x, y in zip(names, xa, xb, strict=True):
        ax.annotate(name, (x, y), xytext=(3, 3), textcoords="offset points", fontsize=7)
    rho = out["spearman"]
    value = "undefined" if rho["value"] is None else f"{rho['value']:+.2f}"
    interval = "" if rho["low"] is None else f" [{rho['low']:+.2f}, {rho['high']:+.2f}]"
    ax.set_title(f"Spearman {value}{interval} (95% over prompts): {rho['word']}", fontsize=9)
    ax.set_xlabel(f"success, {out['inputs']['a']['model']}")
    ax.set_ylabel(f"success, {out['inputs']['b']['model']}")
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def command(args: Any) -> str:
    """The command line, its paths repo-relative (no machine paths in results)."""
    out, paths, current = [], ("--out", "--a", "--b", "--plan"), None
    for arg in args.argv:
        flag, eq, value = arg.partition("=")
        if arg.startswith("-"):
            current = flag if flag in paths and not eq else None
            if eq and flag in paths:
                arg = f"{flag}={common.repo_relative(Path(value))}"
        elif current is not None:  # a path after --a (several may follow), --b, --out or --plan
            arg = common.repo_relative(Path(arg))
        out.append(arg)
    return shlex.join(["python", "benchmarks/method_ranking.py", *out])


def body(args: Any) -> Path:
    start = time.perf_counter()
    plan = load_plan(args.plan)
    n_prompts = args.n_prompts if args.n_prompts is not None else plan.design["n_test_prompts"]
    if n_prompts < 2 or args.n_resamples < 100:
        raise SystemExit(
            f"need --n-prompts >= 2 and --n-resamples >= 100, got {n_prompts}, {args.n_resamples}"
        )
    folders_a, folders_b = args.a, args.b
    if args.tiny and folders_a is None and folders_b is None:
        tiny_a, tiny_b = write_tiny_runs(args.out, n_prompts, args.seed)
        folders_a, folders_b = [tiny_a], [tiny_b]
    folders_a = [DEFAULT_A] if folders_a is None else folders_a
    folders_b = [DEFAULT_B] if folders_b is None else folders_b
    sides = {}
    try:
        for side, folders in (("a", folders_a), ("b", folders_b)):
            runs = [read_run(f, args.set) for f in folders]
            names = [f"run {side.upper()} ({common.repo_relative(f)})" for f in folders]
            result = merge_runs([r for r, _ in runs], names)
            sides[side] = (folders, result, [v for _, v in runs], " + ".join(names))
        result_a, result_b = sides["a"][1], sides["b"][1]
        cells = shared_cells(scored_cells(result_a), scored_cells(result_b))
        table_a = outcome_table(result_a, cells, n_prompts, sides["a"][3])
        table_b = outcome_table(result_b, cells, n_prompts, sides["b"][3])
    except ValueError as err:
        raise SystemExit(str(err)) from None
    if table_a.targets != table_b.targets:
        common.log.warning("the runs' targets differ: %s and %s", table_a.targets, table_b.targets)
    rho = ranking_test(table_a, table_b, args.n_resamples, args.seed)
    success_a, success_b = success(table_a), success(table_b)
    rank_a, rank_b = ranks(success_a), ranks(success_b)
    words, agreement = words_table(
        cells, merge_words(sides["a"][2], args.set), merge_words(sides["b"][2], args.set)
    )
    inputs = {}
    for side, table in (("a", table_a), ("b", table_b)):
        folders, result, verdicts, _ = sides[side]
        inputs[side] = {
            "folders": [common.repo_relative(f) for f in folders],
            "model": model_name(verdicts[0]),
            "plan": result.get("plan"),
            "targets": list(table.targets),
            "units_used": int(table.counts.sum()),
            "units_in_run": len(result["units"]),
            "cells_left_out": [c for c in result["cells"] if c not in cells],
        }
    out = {
        "question": "does the ranking of the steering methods hold across the two models (plan's Question 2)",
        "command": command(args),
        "plan": plan.record() | {"path": common.repo_relative(Path(args.plan)), "name": plan.name},
        "inputs": inputs,
        "settings": {
            "set": args.set,
            "n_prompts": n_prompts,
            "n_resamples": args.n_resamples,
            "seed": args.seed,
            "level": LEVEL,
            "success": "mean over targets of the per-target mean outcome, on prompts 0..n_prompts-1",
            "tiny": args.tiny,
        },
        "cells": cells,
        "table": {
            cell: {
                "success_a": float(success_a[i]),
                "success_b": float(success_b[i]),
                "rank_a": rank_a[i],
                "rank_b": rank_b[i],
            }
            for i, cell in enumerate(cells)
        },
        "spearman": rho,
        "words": words,
        "words_agree": agreement,
        "seconds": round(time.perf_counter() - start, 2),
    }
    path = common.write_json(args.out / f"{args.name}.json", out)
    plot(out, args.out / f"{args.name}.png")
    value = "undefined" if rho["value"] is None else f"{rho['value']:+.3f}"
    interval = "none" if rho["low"] is None else f"[{rho['low']:+.3f}, {rho['high']:+.3f}]"
    common.log.info(
        "Spearman %s, 95%% %s (%d resamples dropped): %s; words agree in %d of %d; %s",
        value,
        interval,
        rho["dropped_resamples"],
        rho["word"],
        agreement["agree"],
        agreement["compared"],
        path,
    )
    return path


def main(argv: list[str] | None = None) -> Path:
    p = common.parser(__doc__)
    p.add_argument(
        "--a",
        type=Path,
        nargs="+",
        default=None,
        help="model A's verdict folder, or several runs read as one (default benchmarks/results/verdict)",
    )
    p.add_argument(
        "--b",
        type=Path,
        nargs="+",
        default=None,
        help="model B's verdict folder(s) (default benchmarks/results/verdict_gemma-3-270m)",
    )
    p.add_argument("--name", default="method_ranking", help="the output files' stem (default %(default)s)")
    p.add_argument("--set", default="speaking_styles", help="the class set (default %(default)s)")
    p.add_argument("--plan", type=Path, default=PLAN, help="the committed plan (default gemma-ranking-1)")
    p.add_argument(
        "--n-prompts",
        type=int,
        default=None,
        help="the first test prompts compared (default: the plan's, 48)",
    )
    p.add_argument("--n-resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.set_defaults(argv=sys.argv[1:] if argv is None else list(argv))
    return common.run(body, p, argv, TINY)


if __name__ == "__main__":
    main()
