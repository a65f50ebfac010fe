"""Matplotlib figures for class profiles: distinctive features, centroid maps, similarity matrices.

Like :mod:`tlsteer.eval.plots`: each function builds a fresh ``Figure`` on the Agg canvas (no
pyplot), returns it, and writes a PNG when given ``path``. Inputs are
:class:`~tlsteer.ClassProfile` objects (raw space, or raw and feature space from
:func:`tlsteer.sae.class_profile`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tlsteer.profile import ClassProfile

__all__ = [
    "plot_analogies",
    "plot_class_features",
    "plot_class_map",
    "plot_class_similarity",
    "plot_ordinal",
    "plot_transfer_matrix",
]


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        fig.savefig(str(path), dpi=120)
    return fig


def plot_class_features(
    profile: ClassProfile,
    k: int = 5,
    space: str = "feature",
    rank_by: str = "effect",
    path: str | Path | None = None,
) -> Figure:
    """Heatmap, classes x the top ``k`` distinctive columns of every class (stable or not).

    Each cell is the class mean of that column, standardized across classes (z-score per column);
    the column labels give the feature id, the class it distinguishes and its stability.
    """
    columns: list[tuple[int, str, float]] = []
    for name in profile.classes:
        table = profile.distinctive(name, k=k, space=space, rank_by=rank_by, stable_only=False)
        columns += [(int(f), name, float(s)) for f, s in zip(table.feature, table.stability, strict=True)]
    means = profile.means(space).numpy()
    ids = [f for f, _, _ in columns]
    cells = means[:, ids]
    z = (cells - cells.mean(0)) / np.maximum(cells.std(0), 1e-8)
    fig = _figure(max(4.0, 0.35 * len(ids) + 2.0), 0.5 * len(profile.classes) + 2.2)
    ax = fig.add_subplot()
    image = ax.imshow(z, cmap="RdBu_r", vmin=-2, vmax=2, aspect="auto")
    ax.set_yticks(range(len(profile.classes)), list(profile.classes))
    labels = [f"{f} ({name}, {s:.2f})" for f, name, s in columns]
    ax.set_xticks(range(len(ids)), labels, rotation=90, fontsize=7)
    ax.set_title(f"{profile.dataset_name}: top {k} distinctive {space} columns per class (stability)")
    fig.colorbar(image, ax=ax, label="class mean, z-scored across classes")
    return _save(fig, path)


def _pca_2d(points: np.ndarray, basis_of: np.ndarray) -> np.ndarray:
    centre = basis_of.mean(0)
    _, _, vt = np.linalg.svd(basis_of - centre, full_matrices=False)
    return (points - centre) @ vt[:2].T


def plot_class_map(profile: ClassProfile, path: str | Path | None = None) -> Figure:
    """2-D map of every example and the class centroids, per space (PCA of the centroids' plane)."""
    spaces = [s for s in ("raw", "feature") if s in profile.reps]
    fig = _figure(5.0 * len(spaces), 4.4)
    for i, space in enumerate(spaces):
        ax = fig.add_subplot(1, len(spaces), i + 1)
        rows = profile.reps[space]
        means = profile.means(space).numpy()
        basis = (
            means if len(profile.classes) >= 3 else np.concatenate([rows[c].numpy() for c in profile.classes])
        )
        for j, name in enumerate(profile.classes):
            xy = _pca_2d(rows[name].numpy(), basis)
            ax.scatter(xy[:, 0], xy[:, 1], s=10, alpha=0.35, color=f"C{j}")
            centre = _pca_2d(means[j : j + 1], basis)[0]
            ax.scatter(*centre, s=140, marker="*", color=f"C{j}", edgecolor="black", label=name)
        ax.set_title(f"{space} space")
        ax.legend(fontsize=7)
    fig.suptitle(f"{profile.dataset_name}: examples and centroids (PCA of the centroids)")
    return _save(fig, path)


def plot_class_similarity(
    profile: ClassProfile, centred: bool = False, path: str | Path | None = None
) -> Figure:
    """The K x K cosine similarity of class centroids in each space, side by side."""
    spaces = [s for s in ("raw", "feature") if s in profile.reps]
    fig = _figure(4.2 * len(spaces), 3.8)
    for i, space in enumerate(spaces):
        ax = fig.add_subplot(1, len(spaces), i + 1)
        _matrix(ax, profile.similarity(space, centred=centred), f"{space}{' (centred)' if centred else ''}")
    return _save(fig, path)


def _matrix(ax: Any, frame: pd.DataFrame, title: str, vmin: float = -1.0, vmax: float = 1.0) -> None:
    ax.imshow(frame.to_numpy(), cmap="RdBu_r", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(frame.shape[1]), list(frame.columns), rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(frame.shape[0]), list(frame.index), fontsize=8)
    for (r, c), value in np.ndenumerate(frame.to_numpy()):
        ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=7)
    ax.set_title(title)


def plot_transfer_matrix(matrix: pd.DataFrame, title: str = "", path: str | Path | None = None) -> Figure:
    """A K x K transfer matrix (rows: source class; columns: where the judge puts the output)."""
    fig = _figure(4.6, 4.0)
    ax = fig.add_subplot()
    _matrix(ax, matrix, title or "transfer matrix", vmin=0.0, vmax=1.0)
    ax.set_ylabel("source class")
    ax.set_xlabel("judged class")
    return _save(fig, path)


def plot_ordinal(
    projections: dict[str, dict[str, np.ndarray]],
    sweeps: dict[str, Any],
    title: str = "",
    path: str | Path | None = None,
) -> Figure:
    """Left: held-out projections per level for each direction; right: judged level vs multiplier.

    ``projections`` is ``{direction name: {level: projections}}`` (levels lowest first);
    ``sweeps`` is ``{method: OrdinalSweep}`` (mean judged level with the 5th-95th percentile of
    per-prompt scores shaded).
    """
    fig = _figure(11.0, 4.0)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    width = 0.8 / max(len(projections), 1)
    for i, (name, by_level) in enumerate(projections.items()):
        pooled = np.concatenate(list(by_level.values()))
        centre, spread = pooled.mean(), pooled.std() or 1.0
        xs, means = [], []
        for j, values in enumerate(by_level.values()):
            x = j + (i - (len(projections) - 1) / 2) * width
            scaled = (values - centre) / spread
            left.scatter(np.full(len(values), x), scaled, s=6, alpha=0.3, color=f"C{i}")
            xs.append(x)
            means.append(scaled.mean())
        left.plot(xs, means, marker="D", color=f"C{i}", label=name)
        levels = list(by_level)
    if projections:
        left.set_xticks(range(len(levels)), levels)
    left.set_ylabel("projection (z-scored over all levels); line: level means")
    left.set_title("held-out examples by level")
    left.legend(fontsize=7)
    for i, (name, sweep) in enumerate(sweeps.items()):
        m = np.asarray(sweep.multipliers)
        lo, hi = np.percentile(sweep.scores, [5, 95], axis=1)
        right.plot(
            m, sweep.mean_scores, marker="o", color=f"C{i}", label=f"{name} (rho {sweep.spearman:+.2f})"
        )
        right.fill_between(m, lo, hi, color=f"C{i}", alpha=0.12)
    if sweeps:
        classes = next(iter(sweeps.values())).classes
        right.set_yticks(range(len(classes)), classes)
    right.set_xlabel("multiplier (x mean residual norm)")
    right.set_ylabel("judged level (expected)")
    right.set_title("steering along the order")
    right.legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


def plot_analogies(result: dict[str, Any], path: str | Path | None = None) -> Figure:
    """Left: test top-1 / top-5 per domain for each method; right: the cross-domain top-5 matrix.

    ``result`` is what ``benchmarks/analogies.py`` writes: ``domains[name]`` with ``none``,
    ``random``, ``relation`` and ``few_shot`` scores, and ``cross_domain`` with ``top5``.
    """
    fig = _figure(12.0, 4.2)
    ax = fig.add_subplot(1, 2, 1)
    names = list(result["domains"])
    methods = ("none", "random", "relation", "few_shot")
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        x = np.arange(len(names)) + (i - (len(methods) - 1) / 2) * width
        top5 = [result["domains"][n][method]["top5"] for n in names]
        top1 = [result["domains"][n][method]["top1"] for n in names]
        ax.bar(x, top5, width, color=f"C{i}", alpha=0.35)
        ax.bar(x, top1, width, color=f"C{i}", label=method)
    ax.set_xticks(range(len(names)), names, rotation=15, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("test accuracy (solid: top-1, pale: top-5)")
    ax.set_title("relation vectors on held-out x's")
    ax.legend(fontsize=7)
    cross = result["cross_domain"]
    frame = pd.DataFrame(cross["top5"], index=cross["rows_vector_columns_prompts"], columns=names)
    _matrix(fig.add_subplot(1, 2, 2), frame, "top-5, vector of row on prompts of column", vmin=0.0, vmax=1.0)
    return _save(fig, path)
