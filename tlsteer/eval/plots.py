"""Matplotlib figures for sweeps, diagnostics and activations.

Every function builds a fresh :class:`~matplotlib.figure.Figure` on the Agg canvas (no pyplot, so
no global figure registry and no backend switching), returns it, and writes a PNG when given
``path``. Inputs are the frames and values of :mod:`tlsteer.eval.sweeps` and
:mod:`tlsteer.eval.diagnostics`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tlsteer._types import parse_hook_name
from tlsteer.contrast import ContrastActivations
from tlsteer.errors import format_options
from tlsteer.eval.diagnostics import Steerability

__all__ = [
    "plot_behaviour_curves",
    "plot_cosine_matrix",
    "plot_layer_diagnostics",
    "plot_pca",
    "plot_slope_histogram",
    "plot_sweep_heatmap",
]


def _figure(width: float | int = 6.0, height: float | int = 4.0) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _finish(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        fig.savefig(str(path), format="png", dpi=100)
    return fig


def _require(frame: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(f"{what} needs columns {columns}; missing {missing}; has {list(frame.columns)}")


def plot_behaviour_curves(sweeps: Mapping[str, pd.DataFrame], path: str | Path | None = None) -> Figure:
    """p(matching) against the multiplier, one line per behaviour (and per layer if several).

    Args:
        sweeps: ``{behaviour: frame}`` with ``multiplier`` and ``p_matching`` columns (a
            :func:`tlsteer.eval.sweeps.sweep` frame, say).
        path: Where to write a PNG.
    """
    if not sweeps:
        raise ValueError("plot_behaviour_curves needs at least one behaviour's sweep")
    fig = _figure()
    ax = fig.add_subplot()
    for name, frame in sweeps.items():
        _require(frame, ["multiplier", "p_matching"], f"the sweep of {name!r}")
        layers = frame["layer"].unique() if "layer" in frame.columns else [None]
        for layer in layers:
            part = frame if layer is None else frame[frame["layer"] == layer]
            part = part.sort_values("multiplier")
            label = name if layer is None or len(layers) == 1 else f"{name} (layer {layer})"
            ax.plot(part["multiplier"], part["p_matching"], marker="o", label=label)
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    ax.set_ylim(0, 1)
    ax.set_xlabel("multiplier")
    ax.set_ylabel("p(matching answer)")
    ax.legend()
    return _finish(fig, path)


def plot_sweep_heatmap(
    frame: pd.DataFrame, value: str = "p_matching", path: str | Path | None = None
) -> Figure:
    """A layer x multiplier heatmap of one column of a :func:`tlsteer.eval.sweeps.sweep` frame."""
    _require(frame, ["layer", "multiplier"], "plot_sweep_heatmap")
    numeric = [c for c in frame.columns if c not in ("layer", "multiplier", "hook")]
    if value not in numeric:
        raise KeyError(f"value {value!r} is not a column of the sweep; valid: {format_options(numeric)}")
    grid = frame.pivot_table(index="layer", columns="multiplier", values=value, aggfunc="mean")
    fig = _figure()
    ax = fig.add_subplot()
    image = ax.imshow(grid.to_numpy(dtype=float), aspect="auto", origin="lower", cmap="viridis")
    ax.set_xticks(range(grid.shape[1]), [f"{m:g}" for m in grid.columns])
    ax.set_yticks(range(grid.shape[0]), [str(layer) for layer in grid.index])
    ax.set_xlabel("multiplier")
    ax.set_ylabel("layer")
    fig.colorbar(image, ax=ax, label=value)
    return _finish(fig, path)


def plot_layer_diagnostics(frame: pd.DataFrame, path: str | Path | None = None) -> Figure:
    """One panel per metric of a :func:`tlsteer.eval.diagnostics.layer_diagnostics` frame, against layer."""
    _require(frame, ["layer"], "plot_layer_diagnostics")
    metrics = [c for c in frame.columns if c not in ("layer", "hook")]
    if not metrics:
        raise ValueError(f"no metric columns to plot; columns: {list(frame.columns)}")
    fig = _figure(4.0 * len(metrics), 3.5)
    ordered = frame.sort_values("layer")
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        ax.plot(ordered["layer"], ordered[metric], marker="o")
        ax.set_xlabel("layer")
        ax.set_title(metric)
    return _finish(fig, path)


def plot_cosine_matrix(matrix: pd.DataFrame, path: str | Path | None = None) -> Figure:
    """A :func:`tlsteer.eval.diagnostics.cosine_matrix` frame as an annotated heatmap on [-1, 1]."""
    values = matrix.to_numpy(dtype=float)
    fig = _figure(1.2 * len(matrix) + 2.5, 1.0 * len(matrix) + 2.0)
    ax = fig.add_subplot()
    image = ax.imshow(values, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(values.shape[1]), [str(c) for c in matrix.columns], rotation=45, ha="right")
    ax.set_yticks(range(values.shape[0]), [str(i) for i in matrix.index])
    for (row, col), v in np.ndenumerate(values):
        ax.text(col, row, f"{v:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(image, ax=ax, label="cosine")
    return _finish(fig, path)


def plot_pca(acts: ContrastActivations, hook: int | str, path: str | Path | None = None) -> Figure:
    """Positive and negative activations at a layer (or hook name) on their first two principal components."""
    if isinstance(hook, int):
        matches = [h for h in acts.hooks if parse_hook_name(h)[0] == hook]
        if len(matches) != 1:
            raise KeyError(
                f"layer {hook} matches {len(matches)} hooks of the activations; hooks: {acts.hooks}"
            )
        hook = matches[0]
    if hook not in acts.positive:
        raise KeyError(f"hook {hook!r} not in the activations; hooks: {acts.hooks}")
    pos, neg = acts.positive[hook].double(), acts.negative[hook].double()
    stacked = torch.cat([pos, neg])
    if stacked.shape[0] < 2:
        raise ValueError(f"PCA needs at least 2 activations, got {stacked.shape[0]}")
    centred = stacked - stacked.mean(0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    k = min(2, vh.shape[0])
    coords = (centred @ vh[:k].T).numpy()
    if k == 1:
        coords = np.column_stack([coords, np.zeros(len(coords))])
    share = (s[:k] ** 2 / (s**2).sum()).numpy() if float(s.sum()) > 0 else np.zeros(k)
    fig = _figure(5.0, 4.5)
    ax = fig.add_subplot()
    n_pos = pos.shape[0]
    ax.scatter(coords[:n_pos, 0], coords[:n_pos, 1], s=14, label="positive", color="tab:blue")
    ax.scatter(coords[n_pos:, 0], coords[n_pos:, 1], s=14, label="negative", color="tab:red")
    ax.set_xlabel(f"PC1 ({share[0]:.0%})")
    ax.set_ylabel(f"PC2 ({share[1]:.0%})" if k == 2 else "PC2 (none)")
    ax.set_title(hook)
    ax.legend()
    return _finish(fig, path)


def plot_slope_histogram(
    data: Steerability | pd.DataFrame, bins: int = 20, path: str | Path | None = None
) -> Figure:
    """Histogram of per-item steerability slopes (one per layer, overlaid), with zero marked."""
    slopes = data.slopes if isinstance(data, Steerability) else data
    _require(slopes, ["slope"], "plot_slope_histogram")
    fig = _figure()
    ax = fig.add_subplot()
    groups = slopes.groupby("layer") if "layer" in slopes.columns else [(None, slopes)]
    for layer, group in groups:
        values = group["slope"].dropna().to_numpy(dtype=float)
        label = "items" if layer is None else f"layer {layer[0] if isinstance(layer, tuple) else layer}"
        ax.hist(values, bins=bins, alpha=0.6, label=label)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("slope of logit difference per unit multiplier")
    ax.set_ylabel("items")
    ax.legend()
    return _finish(fig, path)
