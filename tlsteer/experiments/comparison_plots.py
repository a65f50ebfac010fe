"""Figures and tables of the feature-vs-CAA comparison: success against KL per method, bars at each
budget, and markdown tables across datasets (:func:`comparison_markdown`).

The input is the dict :func:`tlsteer.experiments.feature_vs_caa` returns. Cells are keyed
``"<method>@<budget>"`` (``"prompting"`` and ``"unsteered"`` have no budget); success is
``success`` (class sets: share judged as the target) or ``p_matching`` (A/B data), each with a
95% bootstrap interval. Like the other plot modules: a fresh ``Figure`` on the Agg canvas.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = [
    "TRANSFER_METHODS",
    "comparison_markdown",
    "comparison_table",
    "plot_comparison",
    "plot_transfer_grid",
]

TRANSFER_METHODS = ("unsteered", "caa", "feature_full", "feature_output", "clamp", "prompting")
"""The cells :func:`plot_transfer_grid` shows by default, those of them that the result holds."""


def _metric(cell: dict[str, Any]) -> dict[str, float]:
    return cell["success"] if "success" in cell else cell["p_matching"]


def comparison_table(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per cell: method, budget, success (value, low, high), KL mean and p95, strength."""
    rows = []
    for key, cell in result["cells"].items():
        method, _, budget = key.partition("@")
        m = _metric(cell)
        rows.append(
            {
                "method": method,
                "budget": float(budget) if budget else None,
                "success": m["value"],
                "low": m["low"],
                "high": m["high"],
                "kl_mean": cell.get("kl_mean", 0.0),
                "kl_p95": cell.get("kl_p95", 0.0),
                "strength": cell.get("strength"),
                "reached": cell.get("reached", True),
            }
        )
    return rows


def _fmt(ci: dict[str, float]) -> str:
    return f"{ci['value']:.2f} [{ci['low']:.2f}, {ci['high']:.2f}]"


def _cell(result: dict[str, Any], method: str, budget: float) -> dict[str, Any] | None:
    return result["cells"].get(f"{method}@{budget}", result["cells"].get(method))


def comparison_markdown(results: dict[str, dict[str, Any]]) -> str:
    """Markdown tables of several datasets' results (``{name: result}``) at matched budgets.

    Per budget: success with its interval, methods x datasets (prompting and unsteered as they
    are). At the largest budget: MMLU accuracy unsteered and each method's change (datasets with
    MMLU), and per class set its selectivity, perplexity, MMLU change and KL.
    """
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
                cell = _cell(results[name], m, b)
                row.append("" if cell is None else _fmt(_metric(cell)))
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
                cell = _cell(results[name], m, b)
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
            cell = _cell(res, m, b)
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


def plot_comparison(result: dict[str, Any], path: str | Path | None = None) -> Figure:
    """Left: success vs mean KL per method (95% intervals); right: success at each budget, bars."""
    rows = comparison_table(result)
    budgets = sorted({r["budget"] for r in rows if r["budget"] is not None})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig = Figure(figsize=(13.0, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    palette = matplotlib.color_sequences["tab20"]  # 20 distinct colours: every method its own
    for i, method in enumerate(methods):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["kl_mean"])
        x = [max(r["kl_mean"], 1e-3) for r in mine]
        y = [r["success"] for r in mine]
        err = [[r["success"] - r["low"] for r in mine], [r["high"] - r["success"] for r in mine]]
        marker = "*" if method == "prompting" else ("s" if method == "unsteered" else "o")
        left.errorbar(
            x,
            y,
            yerr=err,
            marker=marker,
            color=palette[(2 * i) % 20 if i < 10 else (2 * i + 1) % 20],
            label=method,
            capsize=2,
            linestyle="-" if len(mine) > 1 else "none",
        )
    for b in budgets:
        left.axvline(b, color="grey", linewidth=0.6, linestyle=":")
    left.set_xscale("log")
    left.set_xlabel("mean per-token KL on neutral text (nats)")
    left.set_ylabel("success (95% bootstrap interval)")
    left.set_title(f"{result.get('dataset', '')}: success against side effect")
    left.legend(fontsize=6, ncol=2)
    width = 0.8 / max(len(budgets), 1)
    order = [m for m in methods if m not in ("unsteered",)]
    for j, b in enumerate(budgets):
        xs, ys, lo, hi = [], [], [], []
        for i, method in enumerate(order):
            r = next((r for r in rows if r["method"] == method and r["budget"] in (b, None)), None)
            if r is None:
                continue
            xs.append(i + (j - (len(budgets) - 1) / 2) * width)
            ys.append(r["success"])
            lo.append(r["success"] - r["low"])
            hi.append(r["high"] - r["success"])
        right.bar(xs, ys, width, yerr=[lo, hi], capsize=2, color=f"C{j}", label=f"KL budget {b}")
    base = next((r for r in rows if r["method"] == "unsteered"), None)
    if base is not None:
        right.axhline(base["success"], color="black", linewidth=0.8, linestyle="--", label="unsteered")
    right.set_xticks(np.arange(len(order)), order, rotation=40, ha="right", fontsize=7)
    right.set_ylabel("success")
    right.set_title("at matched KL (prompting: as it is)")
    right.legend(fontsize=7)
    if path is not None:
        fig.savefig(str(path), dpi=120)
    return fig


def plot_transfer_grid(
    result: dict[str, Any],
    methods: Sequence[str] | None = None,
    budget: float | None = None,
    path: str | Path | None = None,
) -> Figure:
    """Transfer matrices of a class set's cells side by side (rows: the class steered toward;
    columns: the share the judge gives each class), at ``budget`` (default: the largest).

    ``methods`` default to those of :data:`TRANSFER_METHODS` that the result holds; a method asked
    for by name that has no transfer matrix at ``budget`` is refused, naming those that have one.
    """
    if "classes" not in result:
        raise ValueError("transfer matrices need a class-set result (with 'classes' and 'targets')")
    budgets = sorted({r["budget"] for r in comparison_table(result) if r["budget"] is not None})
    budget = budgets[-1] if budget is None and budgets else budget

    def cell_key(m: str) -> str | None:
        for key in (m, f"{m}@{budget}"):
            if key in result["cells"] and "transfer" in result["cells"][key]:
                return key
        return None

    if methods is None:
        keys = [k for k in map(cell_key, TRANSFER_METHODS) if k is not None]
        if not keys:
            raise ValueError(f"none of {list(TRANSFER_METHODS)} has a transfer matrix at budget {budget}")
    else:
        if isinstance(methods, str):
            raise TypeError(f"methods must be a list of method names, got the string {methods!r}")
        found = {m: cell_key(m) for m in methods}
        missing = [m for m, k in found.items() if k is None]
        if missing or not found:
            have = sorted({k.partition("@")[0] for k, c in result["cells"].items() if "transfer" in c})
            what = (
                f"method {missing[0]!r} has no transfer matrix at budget {budget}" if missing else "no method"
            )
            raise ValueError(f"{what}; those that have one: {have}")
        keys = [k for k in found.values() if k is not None]
    classes, targets = result["classes"], result["targets"]
    fig = Figure(figsize=(2.6 * len(keys) + 0.8, 0.5 * len(targets) + 2.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, key in zip(axes, keys, strict=True):
        table = np.array([[result["cells"][key]["transfer"][t][c] for c in classes] for t in targets])
        image = ax.imshow(table, vmin=0, vmax=1, cmap="viridis")
        for (i, j), v in np.ndenumerate(table):
            ax.text(
                j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black"
            )
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(targets)), targets if ax is axes[0] else [], fontsize=7)
        success = result["cells"][key]["success"]["value"]
        ax.set_title(f"{key}\nsuccess {success:.2f}", fontsize=8)
    axes[0].set_ylabel("steered toward")
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="share judged as")
    fig.suptitle(f"{result.get('dataset', '')}: where generations land", fontsize=9)
    if path is not None:
        fig.savefig(str(path), dpi=120)
    return fig
