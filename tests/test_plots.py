"""Plots: each figure function returns a Figure, draws its input, and writes a non-empty PNG."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from tlsteer.contrast import ContrastActivations
from tlsteer.eval.diagnostics import steerability
from tlsteer.eval.plots import (
    plot_behaviour_curves,
    plot_cosine_matrix,
    plot_layer_diagnostics,
    plot_pca,
    plot_slope_histogram,
    plot_sweep_heatmap,
)

HOOK = "blocks.1.hook_resid_post"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def sweep_frame() -> pd.DataFrame:
    rows = []
    for layer in (1, 2, 3):
        for m in (-1.0, 0.0, 2.0):
            rows.append(
                {
                    "layer": layer,
                    "hook": f"blocks.{layer}.hook_resid_post",
                    "multiplier": m,
                    "multiplier_abs": m,
                    "p_matching": 0.5 + 0.1 * m * layer / 3,
                    "n_matching": layer,
                    "letter_mass": 0.9,
                    "logit_diff": m * layer,
                }
            )
    return pd.DataFrame(rows)


def assert_png(path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 1000


def test_behaviour_curves(tmp_path):
    frame = sweep_frame()
    path = tmp_path / "curves.png"
    fig = plot_behaviour_curves({"honesty": frame[frame["layer"] == 2], "refusal": frame}, path=path)
    assert isinstance(fig, Figure)
    assert_png(path)
    lines = [line for line in fig.axes[0].get_lines() if not line.get_label().startswith("_")]
    labels = [line.get_label() for line in lines]
    assert labels == ["honesty", "refusal (layer 1)", "refusal (layer 2)", "refusal (layer 3)"]
    np.testing.assert_allclose(lines[0].get_ydata(), frame[frame["layer"] == 2]["p_matching"])
    with pytest.raises(KeyError, match=r"the sweep of 'x' needs columns \['multiplier', 'p_matching'\]"):
        plot_behaviour_curves({"x": frame.drop(columns="p_matching")})


def test_sweep_heatmap(tmp_path):
    frame = sweep_frame()
    path = tmp_path / "heatmap.png"
    fig = plot_sweep_heatmap(frame, "logit_diff", path=path)
    assert_png(path)
    image = fig.axes[0].get_images()[0].get_array()
    expected = np.array([[m * layer for m in (-1.0, 0.0, 2.0)] for layer in (1, 2, 3)])
    np.testing.assert_allclose(np.asarray(image), expected)
    with pytest.raises(KeyError, match=r"value 'p' is not a column of the sweep; valid: 'multiplier_abs'"):
        plot_sweep_heatmap(frame, "p")


def test_layer_diagnostics_plot(tmp_path):
    frame = pd.DataFrame(
        {
            "layer": [3, 1, 2],
            "hook": ["h3", "h1", "h2"],
            "norm": [3.0, 1.0, 2.0],
            "relative_norm": [0.3, 0.1, 0.2],
        }
    )
    path = tmp_path / "layers.png"
    fig = plot_layer_diagnostics(frame, path=path)
    assert_png(path)
    assert [ax.get_title() for ax in fig.axes] == ["norm", "relative_norm"]
    np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_ydata(), [1.0, 2.0, 3.0])


def test_cosine_matrix_plot(tmp_path):
    matrix = pd.DataFrame([[1.0, -0.5], [-0.5, 1.0]], index=["a", "b"], columns=["a", "b"])
    path = tmp_path / "cos.png"
    fig = plot_cosine_matrix(matrix, path=path)
    assert_png(path)
    np.testing.assert_allclose(np.asarray(fig.axes[0].get_images()[0].get_array()), matrix.to_numpy())
    assert [t.get_text() for t in fig.axes[0].texts] == ["1.00", "-0.50", "-0.50", "1.00"]


def test_pca_plot(tmp_path):
    gen = torch.Generator().manual_seed(0)
    u = torch.zeros(16)
    u[3] = 1.0
    pos = torch.randn(10, 16, generator=gen) * 0.1 + 4 * u
    neg = torch.randn(7, 16, generator=gen) * 0.1 - 4 * u
    acts = ContrastActivations({HOOK: pos}, {HOOK: neg}, paired=False)
    path = tmp_path / "pca.png"
    fig = plot_pca(acts, HOOK, path=path)
    assert_png(path)
    pos_pts, neg_pts = (c.get_offsets() for c in fig.axes[0].collections)
    assert (len(pos_pts), len(neg_pts)) == (10, 7)
    # the planted direction is PC1: the classes sit on opposite sides of it
    assert np.sign(pos_pts[:, 0]).tolist() == [np.sign(pos_pts[0, 0])] * 10
    assert np.sign(neg_pts[:, 0]).tolist() == [-np.sign(pos_pts[0, 0])] * 7
    by_layer = plot_pca(acts, 1)
    np.testing.assert_array_equal(by_layer.axes[0].collections[0].get_offsets(), pos_pts)
    with pytest.raises(KeyError, match="hook 'blocks.9.hook_resid_post' not in the activations"):
        plot_pca(acts, "blocks.9.hook_resid_post")
    with pytest.raises(KeyError, match=r"layer 4 matches 0 hooks of the activations"):
        plot_pca(acts, 4)


def test_slope_histogram(tmp_path):
    frame = sweep_frame().assign(item=lambda f: f["layer"] % 2)
    st = steerability(frame)
    path = tmp_path / "slopes.png"
    fig = plot_slope_histogram(st, bins=5, path=path)
    assert_png(path)
    counts = [sum(p.get_height() for p in container) for container in fig.axes[0].containers]
    assert counts == [1, 1, 1]  # one item per layer
    fig2 = plot_slope_histogram(st.slopes)
    assert len(fig2.axes[0].containers) == 3
