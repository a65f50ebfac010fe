"""Figures and the table of the feature-vs-CAA comparison, from a hand-written result."""

from __future__ import annotations

import pytest

from tlsteer.experiments.comparison_plots import comparison_table, plot_comparison, plot_transfer_grid


def ci(v):
    return {"value": v, "low": v - 0.1, "high": v + 0.1}


def cell(v, matrix=None, **kw):
    out = {"success": ci(v), **kw}
    if matrix is not None:
        out["transfer"] = matrix
    return out


CLASSES = ["a", "b", "c"]
RESULT = {
    "dataset": "toy",
    "classes": CLASSES,
    "targets": ["a", "b"],
    "cells": {
        "unsteered": cell(0.2, {"a": {"a": 0.2, "b": 0.5, "c": 0.3}, "b": {"a": 0.1, "b": 0.2, "c": 0.7}}),
        "caa@0.1": cell(
            0.4,
            {"a": {"a": 0.4, "b": 0.3, "c": 0.3}, "b": {"a": 0.2, "b": 0.4, "c": 0.4}},
            kl_mean=0.1,
            kl_p95=0.3,
            strength=[0.2, 0.3],
        ),
        "caa@0.5": cell(
            0.6,
            {"a": {"a": 0.75, "b": 0.0, "c": 0.25}, "b": {"a": 0.5, "b": 0.45, "c": 0.05}},
            kl_mean=0.5,
            kl_p95=1.3,
            strength=[0.4, 0.5],
        ),
        "prompting": cell(
            0.9,
            {"a": {"a": 0.9, "b": 0.1, "c": 0.0}, "b": {"a": 0.1, "b": 0.9, "c": 0.0}},
            kl_mean=0.4,
            kl_p95=1.5,
            strength=[None, None],
        ),
    },
}


def test_table_reads_every_cell():
    rows = comparison_table(RESULT)
    assert [(r["method"], r["budget"]) for r in rows] == [
        ("unsteered", None),
        ("caa", 0.1),
        ("caa", 0.5),
        ("prompting", None),
    ]
    assert rows[2]["success"] == 0.6 and rows[2]["low"] == pytest.approx(0.5) and rows[2]["kl_p95"] == 1.3
    ab = {"cells": {"unsteered": {"p_matching": ci(0.5)}}}
    assert comparison_table(ab)[0]["success"] == 0.5


def test_comparison_figure_has_curves_and_bars(tmp_path):
    fig = plot_comparison(RESULT, path=tmp_path / "c.png")
    left, right = fig.axes
    assert len(right.patches) == 2 * 2  # (caa, prompting) x 2 budgets
    assert sorted(p.get_height() for p in right.patches) == pytest.approx([0.4, 0.6, 0.9, 0.9])
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_transfer_grid_shows_each_matrix_at_the_largest_budget(tmp_path):
    fig = plot_transfer_grid(RESULT, path=tmp_path / "t.png")
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title().split("\n")[0] for ax in panels] == ["unsteered", "caa@0.5", "prompting"]
    caa = panels[1].images[0].get_array()
    assert caa.tolist() == [[0.75, 0.0, 0.25], [0.5, 0.45, 0.05]]
    assert "0.75" in [t.get_text() for t in panels[1].texts]
    low = plot_transfer_grid(RESULT, methods=["caa"], budget=0.1)
    assert low.axes[0].images[0].get_array()[0, 0] == 0.4
    with pytest.raises(ValueError, match="class-set result"):
        plot_transfer_grid({"cells": {}})
    # a method asked for by name with no matrix is refused, not skipped
    have = r"those that have one: \['caa', 'prompting', 'unsteered'\]"
    with pytest.raises(ValueError, match=rf"method 'clamp' has no transfer matrix at budget 0.5; {have}"):
        plot_transfer_grid(RESULT, methods=["caa", "clamp"])
    with pytest.raises(ValueError, match=rf"no method; {have}"):
        plot_transfer_grid(RESULT, methods=[])
    with pytest.raises(ValueError, match="none of .* has a transfer matrix"):
        plot_transfer_grid({"classes": CLASSES, "targets": ["a"], "cells": {"caa@0.1": cell(0.4)}})
