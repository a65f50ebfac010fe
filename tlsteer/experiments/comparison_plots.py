"""Figures and tables of the feature-vs-CAA comparison: success against KL per method, bars at each
budget, transfer matrices, and markdown tables across datasets (:func:`comparison_markdown`).

They read a :class:`~tlsteer.experiments.comparison_result.ComparisonResult` (through
:class:`ComparisonLike`, what they need of one: its dataset's name, its cells, and for a class set
its classes and targets); its ``plot()``, ``plot_transfer()`` and ``to_markdown()`` call them
(this module does not import it, so that it can). Cells are keyed by
``(method, budget)`` (``budget`` is ``None`` for ``"unsteered"`` and ``"prompting"``), and each
has its ``success`` rate (class sets: share judged as the target; A/B data: p(matching);
analogies: top-k accuracy of the whole answer among the domain's answers) with a 95% interval
(bootstrap; exact binomial for analogies). Like the other plot modules: a fresh
``Figure`` on the Agg canvas.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tlsteer.experiments.cells import UNSTEERED, Cell, CellKey, Interval

__all__ = [
    "TRANSFER_METHODS",
    "ComparisonLike",
    "comparison_markdown",
    "plot_comparison",
    "plot_transfer_grid",
]

TRANSFER_METHODS = ("unsteered", "caa", "feature_full", "feature_output", "clamp", "prompting")
"""The cells :func:`plot_transfer_grid` shows by default, those of them that the result holds."""


@runtime_checkable
class ComparisonLike(Protocol):
    """What the figures and tables read of a result; a
    :class:`~tlsteer.experiments.comparison_result.ComparisonResult` is one."""

    @property
    def dataset(self) -> str:
        """The dataset's name."""
        ...

    @property
    def cells(self) -> Mapping[CellKey, Cell]:
        """``{(method, budget): cell}``."""
        ...

    @property
    def classes(self) -> tuple[str, ...]:
        """A class set's classes (empty for other datasets)."""
        ...

    @property
    def targets(self) -> tuple[str, ...]:
        """The classes steered toward (empty for other datasets)."""
        ...


def _kl(cell: Cell) -> float:
    """The cell's mean KL on neutral text; 0 for the unsteered cell (it is the reference)."""
    return 0.0 if cell.kl_mean is None else cell.kl_mean


def _text(value: Interval | None) -> str:
    """An interval as the tables print it, ``"0.42 [0.32, 0.51]"``; blank where it was not measured."""
    return "" if value is None else str(value)


def _budgets(results: Sequence[ComparisonLike]) -> list[float]:
    return sorted({c.budget for r in results for c in r.cells.values() if c.budget is not None})


def _methods(results: Sequence[ComparisonLike]) -> list[str]:
    """Every method, unsteered first, then the steering methods, the controls, prompting last."""
    methods = list(dict.fromkeys(c.method for r in results for c in r.cells.values()))
    methods.sort(key=lambda m: (m != "unsteered", m == "prompting", m in ("caa_encoded", "random")))
    return methods


def _at(result: ComparisonLike, method: str, budget: float) -> Cell | None:
    """The method's cell at ``budget``, or its one cell if it has no budget (prompting, unsteered)."""
    return result.cells.get((method, budget), result.cells.get((method, None)))


def comparison_markdown(results: Any) -> str:
    """Markdown tables of several datasets' results (a list of :class:`ComparisonLike`) at matched
    budgets, one column per dataset.

    Per budget: success with its interval, methods x datasets (prompting and unsteered as they
    are). At the largest budget: MMLU accuracy unsteered and each method's change (datasets with
    MMLU), and per class set its selectivity, perplexity, MMLU change and KL.
    """
    if isinstance(results, ComparisonLike) or not isinstance(results, Sequence):
        raise TypeError(f"results must be a list of comparison results, got {type(results).__name__}")
    names = [r.dataset for r in results]
    budgets = _budgets(results)
    methods = _methods(results)
    out = []
    for b in budgets:
        out += [f"Success at mean KL {b} (prompting and unsteered as they are):", ""]
        out += ["| method | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for m in methods:
            row = []
            for result in results:
                cell = _at(result, m, b)
                row.append("" if cell is None else str(cell.success))
            out.append(f"| `{m}` | " + " | ".join(row) + " |")
        out.append("")
    with_mmlu = [r for r in results if (base := r.cells.get(UNSTEERED)) is not None and base.mmlu is not None]
    if with_mmlu:
        b = budgets[-1]
        out += [f"MMLU accuracy (unsteered) and its change at KL {b}:", ""]
        out += [
            "| method | " + " | ".join(r.dataset for r in with_mmlu) + " |",
            "|---" * (len(with_mmlu) + 1) + "|",
        ]
        for m in methods:
            row = []
            for result in with_mmlu:
                cell = _at(result, m, b)
                if cell is None:
                    row.append("")
                elif m == "unsteered":
                    row.append(str(cell.mmlu))
                else:
                    row.append(f"{cell.mmlu_change:+.2f}")
            out.append(f"| `{m}` | " + " | ".join(row) + " |")
        out.append("")
    for result in results:
        if not result.classes:
            continue
        b = budgets[-1]
        out += [
            f"{result.dataset} at KL {b}: selectivity, perplexity under the unsteered model, MMLU change:",
            "",
        ]
        out += [
            "| method | selectivity | perplexity | MMLU change | KL mean (p95) |",
            "|---|---|---|---|---|",
        ]
        for m in methods:
            cell = _at(result, m, b)
            if cell is None:
                continue
            change = cell.mmlu_change
            p95 = 0.0 if cell.kl_p95 is None else cell.kl_p95
            out.append(
                f"| `{m}` | {_text(cell.selectivity)} | {_text(cell.perplexity)} | "
                f"{'' if change is None else f'{change:+.2f}'} | {_kl(cell):.2f} ({p95:.2f}) |"
            )
        out.append("")
    return "\n".join(out)


def plot_comparison(result: ComparisonLike, path: str | Path | None = None) -> Figure:
    """Left: success vs mean KL per method (95% intervals); right: success at each budget, bars."""
    cells = list(result.cells.values())
    budgets = _budgets([result])
    methods = list(dict.fromkeys(c.method for c in cells))
    fig = Figure(figsize=(13.0, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    palette = matplotlib.color_sequences["tab20"]  # 20 distinct colours: every method its own
    for i, method in enumerate(methods):
        mine = sorted((c for c in cells if c.method == method), key=_kl)
        x = [max(_kl(c), 1e-3) for c in mine]
        y = [c.success.value for c in mine]
        err = [
            [c.success.value - c.success.low for c in mine],
            [c.success.high - c.success.value for c in mine],
        ]
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
    left.set_ylabel("success (95% interval)")
    left.set_title(f"{result.dataset}: success against side effect")
    left.legend(fontsize=6, ncol=2)
    width = 0.8 / max(len(budgets), 1)
    order = [m for m in methods if m != "unsteered"]
    for j, b in enumerate(budgets):
        xs, ys, lo, hi = [], [], [], []
        for i, method in enumerate(order):
            cell = next((c for c in cells if c.method == method and c.budget in (b, None)), None)
            if cell is None:
                continue
            xs.append(i + (j - (len(budgets) - 1) / 2) * width)
            ys.append(cell.success.value)
            lo.append(cell.success.value - cell.success.low)
            hi.append(cell.success.high - cell.success.value)
        right.bar(xs, ys, width, yerr=[lo, hi], capsize=2, color=f"C{j}", label=f"KL budget {b}")
    base = next((c for c in cells if c.method == "unsteered"), None)
    if base is not None:
        right.axhline(base.success.value, color="black", linewidth=0.8, linestyle="--", label="unsteered")
    right.set_xticks(np.arange(len(order)), order, rotation=40, ha="right", fontsize=7)
    right.set_ylabel("success")
    right.set_title("at matched KL (prompting: as it is)")
    right.legend(fontsize=7)
    if path is not None:
        fig.savefig(str(path), dpi=120)
    return fig


def plot_transfer_grid(
    result: ComparisonLike,
    methods: Any = None,
    budget: float | None = None,
    path: str | Path | None = None,
) -> Figure:
    """Transfer matrices of a class set's cells side by side (rows: the class steered toward;
    columns: the share the judge gives each class), at ``budget`` (default: the largest).

    ``methods`` (a list of method names) default to those of :data:`TRANSFER_METHODS` that the
    result holds; a method asked for by name that has no transfer matrix at ``budget`` is refused,
    naming those that have one.
    """
    if not result.classes:
        raise ValueError(
            "transfer matrices need a class-set result (with classes and targets); "
            f"{result.dataset!r} is not one"
        )
    budgets = _budgets([result])
    budget = budgets[-1] if budget is None and budgets else budget

    def find(m: str) -> Cell | None:
        for key in ((m, None), (m, budget)):
            cell = result.cells.get(key)
            if cell is not None and cell.transfer is not None:
                return cell
        return None

    if methods is None:
        shown = [c for c in map(find, TRANSFER_METHODS) if c is not None]
        if not shown:
            raise ValueError(f"none of {list(TRANSFER_METHODS)} has a transfer matrix at budget {budget}")
    else:
        if isinstance(methods, str) or not isinstance(methods, Sequence):
            raise TypeError(f"methods must be a list of method names, got {methods!r}")
        found = {m: find(m) for m in methods}
        missing = [m for m, c in found.items() if c is None]
        if missing or not found:
            have = sorted({c.method for c in result.cells.values() if c.transfer is not None})
            what = (
                f"method {missing[0]!r} has no transfer matrix at budget {budget}" if missing else "no method"
            )
            raise ValueError(f"{what}; those that have one: {have}")
        shown = [c for c in found.values() if c is not None]
    classes, targets = result.classes, result.targets
    fig = Figure(figsize=(2.6 * len(shown) + 0.8, 0.5 * len(targets) + 2.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(shown), squeeze=False)[0]
    for ax, cell in zip(axes, shown, strict=True):
        assert cell.transfer is not None  # find() keeps only cells with a matrix
        table = np.array([[cell.transfer[t][c] for c in classes] for t in targets])
        image = ax.imshow(table, vmin=0, vmax=1, cmap="viridis")
        for (i, j), v in np.ndenumerate(table):
            ax.text(
                j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black"
            )
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(targets)), targets if ax is axes[0] else [], fontsize=7)
        ax.set_title(f"{cell.label}\nsuccess {cell.success.value:.2f}", fontsize=8)
    axes[0].set_ylabel("steered toward")
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="share judged as")
    fig.suptitle(f"{result.dataset}: where generations land", fontsize=9)
    if path is not None:
        fig.savefig(str(path), dpi=120)
    return fig
