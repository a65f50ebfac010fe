"""Figures and tables of the feature-vs-CAA comparison, from a hand-written result."""

from __future__ import annotations

import pytest

from tlsteer.experiments.cells import Cell, Interval
from tlsteer.experiments.comparison_config import ComparisonConfig
from tlsteer.experiments.comparison_plots import comparison_markdown, plot_comparison, plot_transfer_grid
from tlsteer.experiments.comparison_result import ComparisonResult


def ci(v):
    return Interval(v, v - 0.1, v + 0.1)


def cell(method, budget, v, matrix=None, **kw):
    return Cell(method, budget, success=ci(v), transfer=matrix, **kw)


CLASSES = ("a", "b", "c")


def calibrated(kl, p95, strength, reached=True):
    return {"kl_mean": kl, "kl_p95": p95, "strength": strength, "reached": reached}


CELLS = [
    cell("unsteered", None, 0.2, {"a": {"a": 0.2, "b": 0.5, "c": 0.3}, "b": {"a": 0.1, "b": 0.2, "c": 0.7}}),
    cell(
        "caa",
        0.1,
        0.4,
        {"a": {"a": 0.4, "b": 0.3, "c": 0.3}, "b": {"a": 0.2, "b": 0.4, "c": 0.4}},
        **calibrated(0.1, 0.3, (0.2, 0.3)),
    ),
    cell(
        "caa",
        0.5,
        0.6,
        {"a": {"a": 0.75, "b": 0.0, "c": 0.25}, "b": {"a": 0.5, "b": 0.45, "c": 0.05}},
        **calibrated(0.5, 1.3, (0.4, 0.5)),
    ),
    cell(
        "prompting",
        None,
        0.9,
        {"a": {"a": 0.9, "b": 0.1, "c": 0.0}, "b": {"a": 0.1, "b": 0.9, "c": 0.0}},
        **calibrated(0.4, 1.5, (None, None), reached=False),
    ),
]


def result(cells=CELLS, **kw):
    base = {
        "dataset": "toy",
        "kind": "class_set",
        "config": ComparisonConfig(methods=["caa", "prompting"], budgets=[0.1, 0.5]),
        "hook": "blocks.1.hook_resid_post",
        "residual_norm": 10.0,
        "n_neutral": 4,
        "cells": {c.key: c for c in cells},
        "seconds": 1.0,
        "classes": CLASSES,
        "targets": ("a", "b"),
        "judge_held_out_accuracy": 0.9,
        "judge_flagged": False,
    }
    return ComparisonResult(**(base | kw))


RESULT = result()


def test_comparison_figure_has_curves_and_bars(tmp_path):
    fig = plot_comparison(RESULT, path=tmp_path / "c.png")
    left, right = fig.axes
    assert len(right.patches) == 2 * 2  # (caa, prompting) x 2 budgets
    assert sorted(p.get_height() for p in right.patches) == pytest.approx([0.4, 0.6, 0.9, 0.9])
    # the curve of caa: its two cells, in order of KL
    curves = {c.get_label(): c.lines[0] for c in left.containers}
    assert list(curves) == ["unsteered", "caa", "prompting"]
    assert list(curves["caa"].get_xdata()) == [0.1, 0.5] and list(curves["caa"].get_ydata()) == [0.4, 0.6]
    assert list(curves["unsteered"].get_xdata()) == [1e-3]  # KL 0, drawn at the axis' floor
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_result_plot_writes_the_transfer_grid_beside_a_class_sets_figure(tmp_path):
    fig = RESULT.plot(tmp_path / "toy.png")
    assert len(fig.axes[1].patches) == 4
    assert (tmp_path / "toy.png").stat().st_size > 1000
    assert (tmp_path / "toy_transfer.png").stat().st_size > 1000


def test_transfer_grid_shows_each_matrix_at_the_largest_budget(tmp_path):
    fig = plot_transfer_grid(RESULT, path=tmp_path / "t.png")
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title().split("\n")[0] for ax in panels] == ["unsteered", "caa@0.5", "prompting"]
    caa = panels[1].images[0].get_array()
    assert caa.tolist() == [[0.75, 0.0, 0.25], [0.5, 0.45, 0.05]]
    assert "0.75" in [t.get_text() for t in panels[1].texts]
    low = RESULT.plot_transfer(methods=["caa"], budget=0.1)
    assert low.axes[0].images[0].get_array()[0, 0] == 0.4
    ab = result(
        cells=[Cell("unsteered", None, success=ci(0.5))],
        kind="ab",
        classes=(),
        targets=(),
        judge_held_out_accuracy=None,
        judge_flagged=None,
        n_train_pairs=4,
        n_test_items=4,
    )
    with pytest.raises(ValueError, match="class-set result .*; 'toy' is not one"):
        plot_transfer_grid(ab)
    # a method asked for by name with no matrix is refused, not skipped
    have = r"those that have one: \['caa', 'prompting', 'unsteered'\]"
    with pytest.raises(ValueError, match=rf"method 'clamp' has no transfer matrix at budget 0.5; {have}"):
        plot_transfer_grid(RESULT, methods=["caa", "clamp"])
    with pytest.raises(ValueError, match=rf"no method; {have}"):
        plot_transfer_grid(RESULT, methods=[])
    with pytest.raises(TypeError, match="methods must be a list of method names, got 'caa'"):
        plot_transfer_grid(RESULT, methods="caa")
    bare = result(cells=[cell("caa", 0.1, 0.4, **calibrated(0.1, 0.3, (0.2, 0.3)))], targets=("a",))
    with pytest.raises(ValueError, match="none of .* has a transfer matrix"):
        plot_transfer_grid(bare)


def test_markdown_tables_read_each_cell():
    text = RESULT.to_markdown()
    assert text == comparison_markdown([RESULT])
    lines = text.split("\n")
    at_01 = lines[lines.index("Success at mean KL 0.1 (prompting and unsteered as they are):") + 2 :][:4]
    assert at_01 == [
        "| method | toy |",
        "|---|---|",
        "| `unsteered` | 0.20 [0.10, 0.30] |",
        "| `caa` | 0.40 [0.30, 0.50] |",
    ]
    assert "| `prompting` | 0.90 [0.80, 1.00] |" in lines
    # a class set's own table at the largest budget; what a cell did not measure is blank
    assert "toy at KL 0.5: selectivity, perplexity under the unsteered model, MMLU change:" in lines
    assert "| `caa` |  |  |  | 0.50 (1.30) |" in lines and "| `unsteered` |  |  |  | 0.00 (0.00) |" in lines
    assert not any("MMLU accuracy" in line for line in lines)  # no cell measured MMLU
    with pytest.raises(TypeError, match="results must be a list of comparison results"):
        comparison_markdown(RESULT)
