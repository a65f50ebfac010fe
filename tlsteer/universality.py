"""Universal patterns across models: comparing two models' representations of the same examples.

Every input is a plain tensor of example-level representations (for instance a text's activations
at a hook, averaged over its reply tokens). Row ``i`` of every matrix is the same example in both
models; tokenizers differ between models, so nothing here is token-level. Everything is computed
in float64 on the CPU, whatever the input's floating dtype.

- Whole spaces: :func:`linear_cka` (linear centred kernel alignment, Kornblith et al. 2019, or its
  debiased form, Song et al. 2012 / Nguyen et al. 2021) and :func:`cka_matrix` (layer by layer);
  :func:`permutation_null` gives any such statistic a null by shuffling which example is which.
- Class geometry: :func:`class_similarity` (the cosine matrix of the class means, centred on their
  grand mean), :func:`similarity_correlation` (how alike two models' matrices are, with a Mantel
  permutation test over the class labels) and :func:`bootstrap_similarity_correlation` (an interval,
  resampling examples within each class).
- Single features: :func:`best_matches` (each feature of A's best-correlated feature of B) and
  :func:`correspondence` (the share of features with a close match, against the share when the
  examples are shuffled: with thousands of candidates the best correlation of unrelated features
  is far from 0).
- A map between spaces: :func:`fit_linear_map` (ridge least squares, ``B ~ (A - mean_a) W +
  mean_b``) and :class:`LinearMap` (points, directions, R²).

Comparisons of class matrices need at least :data:`MIN_CLASSES` = 4 classes (6 pairs): a Mantel test
relabels the classes, and with K classes no p-value below ``1 / K!`` is possible: 1/6 for 3 classes,
1/24 (below 0.05) from 4 on. With 3 classes a rank correlation of the 3 pairs takes only 4 values.

Shuffles are reproducible: the k-th shuffle of a test is the k-th ``torch.randperm`` of a
``torch.Generator`` seeded with ``seed``. A null value counts as "at least the observed one" within
``1e-12`` (relative), so that a shuffle reproducing the observed pairing counts, whatever the rounding.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from scipy.stats import rankdata
from torch import Tensor

from tlsteer._types import is_int
from tlsteer.errors import closest, format_options

__all__ = [
    "METHODS",
    "MIN_CLASSES",
    "CorrespondenceResult",
    "LinearMap",
    "MantelResult",
    "NullResult",
    "best_matches",
    "bootstrap_similarity_correlation",
    "cka_matrix",
    "class_similarity",
    "correspondence",
    "fit_linear_map",
    "linear_cka",
    "permutation_null",
    "similarity_correlation",
]

METHODS: tuple[str, ...] = ("spearman", "pearson")
"""Correlations of similarity matrices: rank (Spearman, ties get their average rank) or Pearson."""

MIN_CLASSES = 4
"""The fewest classes a comparison of class similarity matrices accepts (see the module docstring)."""

_BLOCK = 1 << 22
"""Elements of one float64 working block (32 MiB) in the chunked loops."""

_TIE = 1e-12
"""Relative tolerance of "a null value at least the observed one"."""


# -- validation -------------------------------------------------------------------------------------
def _real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


def _check_int(value: Any, name: str, low: int) -> int:
    if not is_int(value) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def _check_method(method: Any) -> str:
    if method not in METHODS:
        near = closest(str(method), METHODS)
        raise ValueError(
            f"unknown method {method!r}; valid: {format_options(METHODS)}"
            + (f"; closest: {near[0]!r}" if near else "")
        )
    return str(method)


def _check_tensor(
    x: Any, name: str, *, min_rows: int = 2, ndims: tuple[int, ...] = (2,), why: str = ""
) -> Tensor:
    """``x`` detached on the CPU (its own dtype) if it is a finite floating tensor of a valid shape."""
    shape = "[n examples, d]" if ndims == (2,) else "[n examples] or [n examples, d]"
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {shape}, got {type(x).__name__}")
    if x.ndim not in ndims:
        raise ValueError(
            f"{name} must be {shape} ({' or '.join(map(str, ndims))}-D), got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (e.g. torch.float32), got {x.dtype}")
    if x.shape[0] < min_rows:
        raise ValueError(
            f"{name} has {x.shape[0]} rows (examples); {why or 'this'} needs at least {min_rows}"
        )
    if x.ndim == 2 and x.shape[1] == 0:
        raise ValueError(f"{name} has no columns (shape {tuple(x.shape)}); give at least one")
    x = x.detach().cpu()
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{name} has {int(bad.sum())} non-finite values (NaN or inf), the first at index {first}: "
            f"{x[first].item()}; every value must be finite"
        )
    return x


def _same_rows(x: Tensor, y: Tensor, x_name: str, y_name: str) -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{x_name} has {x.shape[0]} rows but {y_name} has {y.shape[0]}; "
            "row i must be the same example in both"
        )


def _pair(x: Any, y: Any, x_name: str, y_name: str, min_rows: int, why: str) -> tuple[Tensor, Tensor]:
    x = _check_tensor(x, x_name, min_rows=min_rows, why=why)
    y = _check_tensor(y, y_name, min_rows=min_rows, why=why)
    _same_rows(x, y, x_name, y_name)
    return x, y


def _number(value: Any, what: str) -> float:
    """A statistic's value as a finite float."""
    try:
        out = float(value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"stat must return one number, got {type(value).__name__} for {what}") from err
    if not math.isfinite(out):
        raise ValueError(f"stat returned {out} for {what}; it must be finite")
    return out


def _check_groups(groups: Any, n: int) -> list[Tensor] | None:
    """Row positions of each group (in order of first appearance), or ``None`` without groups."""
    if groups is None:
        return None
    if isinstance(groups, (str, bytes)) or not isinstance(groups, (Sequence, np.ndarray, Tensor)):
        raise TypeError(f"groups must be a sequence of one label per row (n = {n}) or None, got {groups!r}")
    labels = groups.tolist() if isinstance(groups, (np.ndarray, Tensor)) else list(groups)
    if len(labels) != n:
        raise ValueError(f"groups must give one label per row: {n} rows, got {len(labels)} labels")
    positions: dict[Any, list[int]] = {}
    for row, label in enumerate(labels):
        try:
            positions.setdefault(label, []).append(row)
        except TypeError as err:
            raise TypeError(f"groups' labels must be hashable, got {label!r} at row {row}") from err
    if all(len(rows) == 1 for rows in positions.values()):
        raise ValueError(
            f"groups put every one of the {n} rows in a group of its own: a shuffle within groups "
            "would move nothing (give fewer labels than rows, e.g. each example's class)"
        )
    return [torch.tensor(rows) for rows in positions.values()]


def _perms(n: int, n_perm: int, seed: int, groups: list[Tensor] | None = None) -> list[Tensor]:
    """``n_perm`` seeded shuffles of ``n`` rows; with groups (from :func:`_check_groups`), rows move
    only within their group (one ``torch.randperm`` per group, in order). One group of every row gives
    the plain shuffles."""
    generator = torch.Generator().manual_seed(seed)
    if groups is None:
        return [torch.randperm(n, generator=generator) for _ in range(n_perm)]
    perms = []
    for _ in range(n_perm):
        perm = torch.arange(n)
        for rows in groups:
            perm[rows] = rows[torch.randperm(len(rows), generator=generator)]
        perms.append(perm)
    return perms


def _p_value(null: np.ndarray, observed: float) -> float:
    hits = int((null >= observed - _TIE * max(1.0, abs(observed))).sum())
    return (1 + hits) / (1 + null.size)


# -- CKA ----------------------------------------------------------------------------------------------
def _centred(x: Tensor) -> Tensor:
    x = x.double()
    return x - x.mean(0)


def _sq_cross(x: Tensor, y: Tensor) -> float:
    """``||x^T y||_F^2`` (= ``tr(K L)`` of the linear Gram matrices), by the cheaper of the two forms."""
    n = x.shape[0]
    if x.shape[1] * y.shape[1] <= n * n:
        return float((x.T @ y).square().sum())
    return float(((x @ x.T) * (y @ y.T)).sum())


def _hsic(x: Tensor, y: Tensor, debiased: bool) -> float:
    """HSIC of centred ``x``, ``y`` up to a factor shared by every pair (it cancels in CKA).

    Biased: ``tr(K H L H) = ||Yc^T Xc||_F^2``. Debiased (Song et al. 2012): with ``K~``, ``L~`` the Gram
    matrices with zeroed diagonals, ``[tr(K~ L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] /
    (n(n-3))``. The estimator is unchanged by centring; for centred columns ``K 1 = 0``, so
    ``K~ 1 = -diag(K)``, and no n x n matrix is needed.
    """
    cross = _sq_cross(x, y)
    if not debiased:
        return cross
    n = x.shape[0]
    kx, ky = x.square().sum(1), y.square().sum(1)
    diag = float(kx @ ky)
    return (cross - diag + float(kx.sum()) * float(ky.sum()) / ((n - 1) * (n - 2)) - 2 * diag / (n - 2)) / (
        n * (n - 3)
    )


def _self_hsic(x: Tensor, name: str, debiased: bool) -> float:
    value = _hsic(x, x, debiased)
    if value <= 0:
        if not debiased:
            raise ValueError(f"{name} is the same in every row (no variance); CKA is undefined")
        raise ValueError(
            f"the debiased HSIC of {name} with itself is {value:.3g} <= 0 ({name} has too little variance "
            f"over its {x.shape[0]} rows); debiased CKA is undefined, use debiased=False or more examples"
        )
    return value


def _check_debiased(debiased: Any) -> int:
    if not isinstance(debiased, bool):
        raise TypeError(f"debiased must be True or False, got {debiased!r}")
    return 4 if debiased else 2


def linear_cka(x: Tensor, y: Tensor, *, debiased: bool = False) -> float:
    """Linear CKA (Kornblith et al. 2019) of two representations of the same examples.

    With ``Xc``, ``Yc`` the column-centred matrices, CKA is ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F
    ||Yc^T Yc||_F)``: 1 when ``y`` is an orthogonal transform of ``x``, up to scale and offset,
    near 0 for unrelated data (the biased form is positive for finite n; see ``debiased``). It is not
    invariant to non-orthogonal invertible maps. Computed in float64, never forming an n x n matrix
    unless that is the smaller one.

    Args:
        x: ``[n, d1]`` representations in model A, row i the i-th example.
        y: ``[n, d2]`` representations in model B, the same examples in the same order.
        debiased: Use the unbiased HSIC estimator (Song et al. 2012; debiased CKA, Nguyen et al.
            2021) in place of the biased one: close to 0 for independent data at any n; needs n >= 4.

    Returns:
        CKA as a float (in [0, 1] when biased; the debiased value may be slightly negative).

    Raises:
        ValueError: Mismatched rows, too few rows, non-finite values, or a constant representation.

    Example:
        >>> import torch
        >>> x = torch.tensor([[1.0], [2.0], [3.0]])
        >>> y = torch.tensor([[1.0], [0.0], [0.0]])
        >>> round(linear_cka(x, y), 6)  # one column each: the squared correlation
        0.75
    """
    min_rows = _check_debiased(debiased)
    x, y = _pair(x, y, "x", "y", min_rows, "debiased CKA" if debiased else "CKA")
    xc, yc = _centred(x), _centred(y)
    denominator = math.sqrt(_self_hsic(xc, "x", debiased) * _self_hsic(yc, "y", debiased))
    return _hsic(xc, yc, debiased) / denominator


def cka_matrix(
    reps_a: Mapping[int, Tensor], reps_b: Mapping[int, Tensor], *, debiased: bool = False
) -> pd.DataFrame:
    """Linear CKA between every layer of model A and every layer of model B.

    Args:
        reps_a: ``{layer: [n, d_a]}`` of model A.
        reps_b: ``{layer: [n, d_b]}`` of model B, the same n examples in the same order.
        debiased: As in :func:`linear_cka`.

    Returns:
        A DataFrame, index ``layer_a`` (A's layers, in the mapping's order), columns ``layer_b``.

    Example:
        >>> import torch
        >>> x = torch.randn(20, 3, generator=torch.Generator().manual_seed(0))
        >>> table = cka_matrix({0: x}, {5: 2 * x, 6: x[:, :1]})
        >>> round(float(table.loc[0, 5]), 6), list(table.columns)
        (1.0, [5, 6])
    """
    min_rows = _check_debiased(debiased)
    why = "debiased CKA" if debiased else "CKA"
    checked: dict[str, dict[int, Tensor]] = {}
    for side, reps in (("reps_a", reps_a), ("reps_b", reps_b)):
        if not isinstance(reps, Mapping) or len(reps) == 0:
            raise ValueError(f"{side} must be a non-empty mapping {{layer: [n, d] tensor}}, got {reps!r}")
        checked[side] = {}
        for layer, rep in reps.items():
            if not is_int(layer):
                raise TypeError(f"{side} has the key {layer!r}; layers are ints")
            checked[side][int(layer)] = _check_tensor(rep, f"{side}[{layer}]", min_rows=min_rows, why=why)
    first_a = next(iter(checked["reps_a"]))
    for side, reps in checked.items():
        for layer, rep in reps.items():
            _same_rows(checked["reps_a"][first_a], rep, f"reps_a[{first_a}]", f"{side}[{layer}]")
    self_b = {
        layer: _self_hsic(_centred(rep), f"reps_b[{layer}]", debiased)
        for layer, rep in checked["reps_b"].items()
    }
    values = []
    for layer_a, rep_a in checked["reps_a"].items():
        xc = _centred(rep_a)  # centred again per pair for B, so only two float64 copies live at once
        self_a = _self_hsic(xc, f"reps_a[{layer_a}]", debiased)
        values.append(
            [
                _hsic(xc, _centred(rep_b), debiased) / math.sqrt(self_a * self_b[layer_b])
                for layer_b, rep_b in checked["reps_b"].items()
            ]
        )
    return pd.DataFrame(
        values,
        index=pd.Index(list(checked["reps_a"]), name="layer_a"),
        columns=pd.Index(list(checked["reps_b"]), name="layer_b"),
    )


# -- permutation null ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class NullResult:
    """A statistic against its null when the example correspondence is broken.

    Attributes:
        observed: The statistic on the data as given.
        null_mean: Its mean over the shuffles.
        null_q95: The 95th percentile of the shuffles (linear interpolation).
        p_value: ``(1 + #(null >= observed)) / (1 + n_perm)``, one-sided (large is significant).
        n_perm: Shuffles run.
    """

    observed: float
    null_mean: float
    null_q95: float
    p_value: float
    n_perm: int


def permutation_null(
    stat: Callable[[Tensor, Tensor], float],
    x: Tensor,
    y: Tensor,
    *,
    n_perm: int = 200,
    seed: int = 0,
    groups: Sequence[Any] | np.ndarray | Tensor | None = None,
) -> NullResult:
    """A statistic of paired representations against shuffles of which example is which.

    Each shuffle permutes the rows of ``y`` (the k-th permutation is the k-th ``torch.randperm(n)`` of
    a generator seeded with ``seed``), keeping each representation intact but breaking row i = same
    example. With ``groups`` (e.g. each example's class) rows are shuffled only within their group:
    the null then keeps what the labels alone explain (two models that both separate the classes
    stay alike under it), and a statistic above it needs agreement on individual examples.

    Args:
        stat: ``(x, y) -> number``, e.g. :func:`linear_cka`; larger means more alike.
        x: ``[n]`` or ``[n, d1]`` values of model A.
        y: ``[n]`` or ``[n, d2]`` values of model B, the same examples in the same order.
        n_perm: Shuffles, an int >= 1; the smallest possible p-value is ``1 / (n_perm + 1)``.
        seed: Seed of the shuffles, an int >= 0.
        groups: ``None`` (shuffle all rows), or one hashable label per row: rows move only within
            their label's group (groups are shuffled in order of first appearance, so one label for
            every row gives exactly the plain shuffles).

    Returns:
        A :class:`NullResult`.

    Example:
        >>> import torch
        >>> x = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
        >>> permutation_null(linear_cka, x, 2 * x + 1, n_perm=19).p_value
        0.05
    """
    if not callable(stat):
        raise TypeError(f"stat must be a callable (x, y) -> number, got {stat!r}")
    x = _check_tensor(x, "x", ndims=(1, 2), why="a permutation test")
    y = _check_tensor(y, "y", ndims=(1, 2), why="a permutation test")
    _same_rows(x, y, "x", "y")
    n_perm = _check_int(n_perm, "n_perm", 1)
    seed = _check_int(seed, "seed", 0)
    rows = _check_groups(groups, x.shape[0])
    observed = _number(stat(x, y), "the data as given")
    perms = _perms(x.shape[0], n_perm, seed, rows)
    null = np.array([_number(stat(x, y[perm]), f"shuffle {k}") for k, perm in enumerate(perms)])
    return NullResult(
        observed=observed,
        null_mean=float(null.mean()),
        null_q95=float(np.quantile(null, 0.95)),
        p_value=_p_value(null, observed),
        n_perm=n_perm,
    )


# -- class geometry -----------------------------------------------------------------------------------
def _check_classes(reps: Any, name: str, min_rows: int, why: str) -> dict[str, Tensor]:
    if not isinstance(reps, Mapping) or len(reps) == 0:
        raise ValueError(
            f"{name} must be a non-empty mapping {{class name: [n_class, d] tensor}}, got {reps!r}"
        )
    out: dict[str, Tensor] = {}
    width = None
    for cls, rep in reps.items():
        if not isinstance(cls, str):
            raise TypeError(f"{name} has the key {cls!r}; class names are strings")
        rep = _check_tensor(rep, f"{name}[{cls!r}]", min_rows=min_rows, why=why)
        if width is None:
            width = (cls, rep.shape[1])
        elif rep.shape[1] != width[1]:
            raise ValueError(
                f"{name}[{cls!r}] has {rep.shape[1]} columns but {name}[{width[0]!r}] has {width[1]}; "
                "every class must be read in the same space"
            )
        out[cls] = rep
    return out


def _centred_cosine(means: Tensor) -> Tensor:
    """``[..., K, d]`` class means -> ``[..., K, K]`` cosines after subtracting their mean (NaN rows
    where a centred mean vanishes)."""
    centred = means - means.mean(-2, keepdim=True)
    norms = centred.norm(dim=-1, keepdim=True)
    scale = means.norm(dim=-1, keepdim=True).amax(-2, keepdim=True)
    unit = torch.where(norms > 1e-10 * scale, centred / norms, torch.nan)
    return unit @ unit.transpose(-1, -2)


def class_similarity(reps: Mapping[str, Tensor]) -> tuple[list[str], Float[Tensor, "k k"]]:
    """The geometry of the classes: cosine similarities of their means, centred on the mean of means.

    Subtracting the grand mean of the class means (each class weighs the same, whatever its size)
    removes the offset every class shares, so the matrix measures how the classes sit relative to
    each other; it is unchanged when a constant vector is added to every row. With two classes the
    centred means are opposite (cosine -1).

    Args:
        reps: ``{class name: [n_class, d]}``, K >= 2 classes in one space (n_class >= 1).

    Returns:
        The class names (in the mapping's order) and the K x K cosine matrix (float64, ones on the
        diagonal).

    Raises:
        ValueError: Fewer than 2 classes, different widths, non-finite values, or a class whose mean
            is the grand mean (its cosine is undefined).

    Example:
        >>> import torch
        >>> rows = torch.tensor([[3.0, 1.0], [1.0, 3.0], [1.0, 1.0]])
        >>> names, sim = class_similarity({"a": rows[:1], "b": rows[1:2], "c": rows[2:]})
        >>> names, round(sim[0, 1].item(), 3)
        (['a', 'b', 'c'], -0.8)
    """
    checked = _check_classes(reps, "reps", 1, "a class mean")
    if len(checked) < 2:
        raise ValueError(
            f"reps has {len(checked)} class ({list(checked)}); class similarity needs at least 2"
        )
    means = torch.stack([rep.double().mean(0) for rep in checked.values()])
    sim = _centred_cosine(means)
    bad = [cls for cls, value in zip(checked, sim.diagonal(), strict=True) if not math.isfinite(float(value))]
    if bad:
        raise ValueError(
            f"the mean of class {bad[0]!r} equals the mean of the class means, so its cosine is undefined"
        )
    return list(checked), sim


def _upper(m: Tensor) -> np.ndarray:
    """``[..., K, K]`` -> ``[..., K(K-1)/2]``: the entries strictly above the diagonal, row by row."""
    k = m.shape[-1]
    i, j = torch.triu_indices(k, k, offset=1)
    return m[..., i, j].double().numpy()


def _strata_pairs(strata: Any, k: int) -> tuple[np.ndarray | None, list[list[int]]]:
    """The pairs (as a mask over :func:`_upper`'s entries) inside one stratum, and each stratum's
    class positions; ``(None, [[0..k-1]])`` without strata."""
    if strata is None:
        return None, [list(range(k))]
    if isinstance(strata, (str, bytes)) or not isinstance(strata, Sequence) or len(strata) != k:
        raise ValueError(
            f"strata must be a sequence of K = {k} group labels (one per class, in the classes' order), "
            f"got {strata!r}"
        )
    groups: dict[Any, list[int]] = {}
    for position, label in enumerate(strata):
        groups.setdefault(label, []).append(position)
    i, j = torch.triu_indices(k, k, offset=1)
    inside = np.array([strata[a] == strata[b] for a, b in zip(i.tolist(), j.tolist(), strict=True)])
    if inside.sum() < 3:
        raise ValueError(
            f"strata {list(strata)} leave {int(inside.sum())} pairs of classes inside a group; "
            "a correlation over them needs at least 3"
        )
    return inside, list(groups.values())


def _row_corr(a: np.ndarray, b: np.ndarray, method: str) -> np.ndarray:
    """Correlation of each row of ``a`` with the same row of ``b`` (broadcast); NaN for a constant row."""
    if method == "spearman":
        a, b = rankdata(a, axis=-1), rankdata(b, axis=-1)
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean(-1, keepdims=True)
    den = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    safe = np.where(den > 0, den, 1.0)
    return np.where(den > 0, (a * b).sum(-1) / safe, np.nan)


def _check_square(sim: Any, name: str) -> Tensor:
    sim = _check_tensor(sim, name, min_rows=0, why="")
    if sim.shape[0] != sim.shape[1]:
        raise ValueError(
            f"{name} must be a square K x K matrix (a row and a column per class), "
            f"got shape {tuple(sim.shape)}"
        )
    if sim.shape[0] < MIN_CLASSES:
        raise ValueError(
            f"{name} has {sim.shape[0]} classes; comparing class geometry needs at least {MIN_CLASSES} "
            f"(with K classes no permutation p-value is below 1/K!, and 3 classes give only 3 pairs)"
        )
    return sim.double()


@dataclass(frozen=True)
class MantelResult:
    """How alike two class similarity matrices are, with a Mantel permutation test.

    Attributes:
        r: Correlation of the entries above the diagonal.
        p_value: ``(1 + #(null >= r)) / (1 + n_perm)``, one-sided (large r is significant).
        null_q95: The 95th percentile of r under relabelled classes.
        n_classes: K.
        n_perm: Relabellings run.
        method: ``"spearman"`` or ``"pearson"``.
    """

    r: float
    p_value: float
    null_q95: float
    n_classes: int
    n_perm: int
    method: str


def similarity_correlation(
    sim_a: Tensor,
    sim_b: Tensor,
    *,
    n_perm: int = 1000,
    seed: int = 0,
    method: str = "spearman",
    strata: Sequence[Any] | None = None,
) -> MantelResult:
    """Correlation of two class similarity matrices (same classes, same order), with a Mantel test.

    Only the entries strictly above the diagonal are read (one per pair of classes). The null
    relabels the classes of ``sim_b``: rows and columns permuted together by the k-th
    ``torch.randperm(K)`` of a generator seeded with ``seed``, which keeps its geometry but breaks
    the class correspondence (pairs are not independent, so a plain correlation test would be wrong).

    Args:
        sim_a: K x K matrix of model A, e.g. from :func:`class_similarity`; K >= :data:`MIN_CLASSES`.
        sim_b: K x K matrix of model B, the same classes in the same order.
        n_perm: Relabellings, an int >= 1.
        seed: Seed of the relabellings, an int >= 0.
        method: ``"spearman"`` (rank; the default) or ``"pearson"``.
        strata: One group label per class (e.g. the class set each class comes from), or ``None``.
            With strata only the pairs of classes inside one group are correlated, and the null
            relabels classes within their group: the test then asks about the geometry *within*
            groups, which a block structure between groups (every model tells class sets apart)
            cannot carry. At least 3 such pairs are needed.

    Returns:
        A :class:`MantelResult`.

    Raises:
        ValueError: Shapes that are not the same K x K, K < 4, non-finite values, an unknown method,
            bad strata, or a matrix whose entries above the diagonal are all equal (no correlation).

    Example:
        >>> import torch
        >>> a = torch.tensor([[1.0, 0.5, 0.1, -0.2], [0.5, 1.0, 0.3, 0.0],
        ...                   [0.1, 0.3, 1.0, 0.7], [-0.2, 0.0, 0.7, 1.0]])
        >>> similarity_correlation(a, a, n_perm=99).r
        1.0
    """
    sim_a, sim_b = _check_square(sim_a, "sim_a"), _check_square(sim_b, "sim_b")
    if sim_a.shape != sim_b.shape:
        raise ValueError(
            f"sim_a is {tuple(sim_a.shape)} but sim_b is {tuple(sim_b.shape)}; both must be K x K over the "
            "same classes in the same order"
        )
    n_perm = _check_int(n_perm, "n_perm", 1)
    seed = _check_int(seed, "seed", 0)
    method = _check_method(method)
    k = sim_a.shape[0]
    inside, groups = _strata_pairs(strata, k)

    def upper(m: Tensor) -> np.ndarray:
        values = _upper(m)
        return values if inside is None else values[..., inside]

    upper_a, upper_b = upper(sim_a), upper(sim_b)
    for name, values in (("sim_a", upper_a), ("sim_b", upper_b)):
        if np.all(values == values[0]):
            raise ValueError(
                f"{name}'s entries above the diagonal are all {values[0]}; a correlation is undefined"
            )
    r = float(_row_corr(upper_a, upper_b, method))
    if inside is None:
        perms = torch.stack(_perms(k, n_perm, seed))
    else:  # relabel within each group: the k-th draw permutes every group's positions among themselves
        generator = torch.Generator().manual_seed(seed)
        perms = torch.arange(k).repeat(n_perm, 1)
        for g in groups:
            pos = torch.tensor(g)
            for row in range(n_perm):
                perms[row, pos] = pos[torch.randperm(len(g), generator=generator)]
    null = []
    step = max(1, _BLOCK // (k * k))
    for start in range(0, n_perm, step):
        chunk = perms[start : start + step]
        relabelled = sim_b[chunk[:, :, None], chunk[:, None, :]]
        null.append(np.nan_to_num(_row_corr(upper_a, upper(relabelled), method), nan=0.0))
    values = np.concatenate(null)
    return MantelResult(
        r=r,
        p_value=_p_value(values, r),
        null_q95=float(np.quantile(values, 0.95)),
        n_classes=k,
        n_perm=n_perm,
        method=method,
    )


def bootstrap_similarity_correlation(
    reps_a: Mapping[str, Tensor],
    reps_b: Mapping[str, Tensor],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    method: str = "spearman",
    confidence: float = 0.95,
    strata: Sequence[Any] | None = None,
) -> tuple[float, float, float]:
    """``(estimate, low, high)``: the correlation of two models' class geometries, with a percentile interval.

    The estimate correlates the entries above the diagonal of the two :func:`class_similarity`
    matrices. Each resample draws, within each class, n_class examples with replacement (a
    ``torch.Generator`` seeded with ``seed``), the same indices in both models since row i is the same
    example in both, and recomputes both matrices and their correlation.

    Args:
        reps_a: ``{class: [n_class, d_a]}`` of model A, K >= :data:`MIN_CLASSES` classes, n_class >= 2.
        reps_b: ``{class: [n_class, d_b]}`` of model B: the same classes in the same order, the same
            examples (so the same n_class).
        n_boot: Resamples, an int >= 100.
        seed: Seed of the resamples, an int >= 0.
        method: ``"spearman"`` (the default) or ``"pearson"``.
        confidence: Coverage of the interval, in (0, 1).
        strata: One group label per class, or ``None``: with strata only the pairs of classes
            inside one group are correlated (as in :func:`similarity_correlation`).

    Returns:
        The estimate, then the interval's ends (the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``
        quantiles of the resampled correlations).

    Raises:
        ValueError: Different classes or order, different n_class, fewer than 4 classes, too few
            examples, non-finite values, or a degenerate geometry (no correlation defined).
    """
    a = _check_classes(reps_a, "reps_a", 2, "a bootstrap")
    b = _check_classes(reps_b, "reps_b", 2, "a bootstrap")
    if list(a) != list(b):
        raise ValueError(
            f"reps_a has the classes {list(a)} but reps_b has {list(b)}; both need the same classes in the "
            "same order"
        )
    if len(a) < MIN_CLASSES:
        raise ValueError(
            f"reps_a has {len(a)} classes; comparing class geometry needs at least {MIN_CLASSES} "
            "(see tlsteer.universality.MIN_CLASSES)"
        )
    for cls in a:
        _same_rows(a[cls], b[cls], f"reps_a[{cls!r}]", f"reps_b[{cls!r}]")
    n_boot = _check_int(n_boot, "n_boot", 100)
    seed = _check_int(seed, "seed", 0)
    method = _check_method(method)
    if not _real(confidence) or not 0 < float(confidence) < 1:
        raise ValueError(f"confidence must be a number in (0, 1), e.g. 0.95, got {confidence!r}")

    inside, _ = _strata_pairs(strata, len(a))

    def upper(m: Tensor) -> np.ndarray:
        values = _upper(m)
        return values if inside is None else values[..., inside]

    def correlation(means_a: Tensor, means_b: Tensor) -> np.ndarray:
        return _row_corr(upper(_centred_cosine(means_a)), upper(_centred_cosine(means_b)), method)

    a64 = [rep.double() for rep in a.values()]
    b64 = [rep.double() for rep in b.values()]
    estimate = float(
        correlation(torch.stack([r.mean(0) for r in a64]), torch.stack([r.mean(0) for r in b64]))
    )
    if not math.isfinite(estimate):
        raise ValueError(
            "the class geometry is degenerate (a class mean equals the mean of the means, or all pairs are "
            "equally similar); the correlation is undefined"
        )
    generator = torch.Generator().manual_seed(seed)
    width = max(a64[0].shape[1], b64[0].shape[1], max(r.shape[0] for r in a64))
    step = max(1, _BLOCK // (len(a64) * width))
    stats = []
    for start in range(0, n_boot, step):
        size = min(step, n_boot - start)
        means_a, means_b = [], []
        for rep_a, rep_b in zip(a64, b64, strict=True):
            n = rep_a.shape[0]
            draws = torch.randint(n, (size, n), generator=generator)
            weights = torch.zeros(size, n, dtype=torch.float64).scatter_add_(
                1, draws, torch.ones(size, n, dtype=torch.float64)
            )
            weights /= n
            means_a.append(weights @ rep_a)
            means_b.append(weights @ rep_b)
        stats.append(correlation(torch.stack(means_a, 1), torch.stack(means_b, 1)))
    values = np.concatenate(stats)
    if not np.isfinite(values).all():
        raise ValueError(
            f"{int((~np.isfinite(values)).sum())} of {n_boot} resamples have a degenerate class geometry "
            "(a class mean at the mean of the means, or all pairs equally similar); "
            "give more examples per class"
        )
    tail = (1 - float(confidence)) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return estimate, float(low), float(high)


# -- single features ----------------------------------------------------------------------------------
def _check_features(features: Any, n_columns: int) -> list[int]:
    if isinstance(features, (Tensor, np.ndarray)):
        integer = (
            (not features.is_floating_point() and not features.is_complex() and features.dtype != torch.bool)
            if isinstance(features, Tensor)
            else np.issubdtype(features.dtype, np.integer)
        )
        if not integer:
            raise TypeError(f"features_a must hold integer column indices, got a {features.dtype} array")
        if features.ndim != 1:
            raise ValueError(
                f"features_a must be 1-D (a list of column indices), got shape {tuple(features.shape)}"
            )
        values = [int(f) for f in features.tolist()]
    elif isinstance(features, (str, bytes)) or not isinstance(features, Sequence):
        raise TypeError(
            f"features_a must be a sequence of column indices of acts_a, got {type(features).__name__}"
        )
    else:
        values = []
        for i, f in enumerate(features):
            if not is_int(f):
                raise TypeError(
                    f"features_a[{i}] is {f!r}, not an int; features are column indices of acts_a"
                )
            values.append(int(f))
    if not values:
        raise ValueError("features_a is empty; give at least one column index of acts_a")
    for f in values:
        if not 0 <= f < n_columns:
            raise ValueError(
                f"features_a has the index {f}, out of range for acts_a with {n_columns} columns "
                f"(valid: 0..{n_columns - 1})"
            )
    return values


def _standardise(x: Tensor) -> Tensor:
    """Columns centred and scaled to unit norm (float64), so a dot product is a Pearson correlation; a
    constant column (exactly zero once centred) stays zero, i.e. correlates 0 with everything."""
    x = x.double()
    x = x - x.mean(0)
    norm = x.norm(dim=0)
    return x / torch.where(norm > 0, norm, torch.ones_like(norm))


def _max_corr(queries: Tensor, acts_b: Tensor) -> tuple[Tensor, Tensor]:
    """For each standardised column of ``queries`` ``[n, q]``: its highest correlation with a column of
    ``acts_b`` and that column (the lowest index among ties), standardising ``acts_b`` block by block."""
    n, q = queries.shape
    width = max(1, _BLOCK // max(n, q))
    best = torch.full((q,), -math.inf, dtype=torch.float64)
    where = torch.zeros(q, dtype=torch.long)
    for start in range(0, acts_b.shape[1], width):
        value, index = (queries.T @ _standardise(acts_b[:, start : start + width])).max(dim=1)
        better = value > best
        best = torch.where(better, value, best)
        where = torch.where(better, index + start, where)
    return best.clamp(-1.0, 1.0), where


def _check_acts(acts_a: Any, acts_b: Any, features_a: Any) -> tuple[Tensor, Tensor, list[int]]:
    a, b = _pair(acts_a, acts_b, "acts_a", "acts_b", 2, "a correlation")
    return a, b, _check_features(features_a, a.shape[1])


def _matches(a: Tensor, b: Tensor, features: list[int]) -> pd.DataFrame:
    r, where = _max_corr(_standardise(a[:, features]), b)
    return pd.DataFrame({"feature_a": features, "feature_b": where.tolist(), "r": r.tolist()})


def best_matches(
    acts_a: Tensor, acts_b: Tensor, features_a: Sequence[int] | Tensor | np.ndarray
) -> pd.DataFrame:
    """Each chosen feature of model A and the feature of model B that correlates best with it.

    Correlation is Pearson over the n examples, signed (the highest, not the largest in absolute
    value). A constant column (e.g. a dead feature) correlates 0 with everything; so a feature whose
    every correlation is negative may match a dead feature of B at 0. Ties go to the lowest index.
    B's columns are standardised once, a block of columns at a time (memory is a few blocks of 32 MiB
    beside the inputs, for any width), and all of A's features are scored in one product per block.

    Args:
        acts_a: ``[n, F_a]`` feature activations of model A, row i the i-th example.
        acts_b: ``[n, F_b]`` feature activations of model B, the same examples in the same order.
        features_a: Column indices of ``acts_a`` (ints, 0..F_a-1; a list, or a 1-D integer tensor or array).

    Returns:
        A DataFrame with one row per entry of ``features_a``: ``feature_a``, ``feature_b``, ``r``.

    Example:
        >>> import torch
        >>> a = torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 1.0], [3.0, 0.0]])
        >>> b = torch.tensor([[5.0, 0.0, 1.0], [5.0, 2.0, 0.0], [5.0, 4.0, 1.0], [5.0, 6.0, 0.0]])
        >>> best_matches(a, b, [0, 1]).round(6).values.tolist()
        [[0.0, 1.0, 1.0], [1.0, 2.0, 1.0]]
    """
    return _matches(*_check_acts(acts_a, acts_b, features_a))


@dataclass(frozen=True, eq=False)
class CorrespondenceResult:
    """How many of A's features have a close match in B, against shuffled examples.

    Attributes:
        matches: The :func:`best_matches` table (``feature_a``, ``feature_b``, ``r``).
        share: The share of the features whose best r >= ``threshold``.
        null_share_mean: The mean of that share over the shuffles.
        null_share_q95: Its 95th percentile over the shuffles.
        null_r_mean: The mean best r over the features and the shuffles (well above 0 when B has many
            features: the maximum of many chance correlations).
        threshold: The r a match needs.
        n_perm: Shuffles run.
    """

    matches: pd.DataFrame
    share: float
    null_share_mean: float
    null_share_q95: float
    null_r_mean: float
    threshold: float
    n_perm: int


def correspondence(
    acts_a: Tensor,
    acts_b: Tensor,
    features_a: Sequence[int] | Tensor | np.ndarray,
    *,
    threshold: float = 0.5,
    n_perm: int = 100,
    seed: int = 0,
    groups: Sequence[Any] | np.ndarray | Tensor | None = None,
) -> CorrespondenceResult:
    """The share of A's features with a match in B (best r >= ``threshold``), against a shuffled baseline.

    The baseline reruns :func:`best_matches` with the rows of ``acts_b`` shuffled (the k-th shuffle is
    the k-th ``torch.randperm(n)`` of a generator seeded with ``seed``). With many candidate features
    the best correlation of unrelated features is well above 0, so the share only means something
    against this baseline. (Computed by permuting A's standardised columns by the inverse shuffle,
    which gives the same correlations, with all shuffles scored in a few passes over B.) With
    ``groups`` (e.g. each example's class) rows are shuffled only within their group: a feature of B
    that only tells the classes apart still matches under that null, so a share above it needs
    agreement on individual examples, beyond the labels the two models share.

    Args:
        acts_a: ``[n, F_a]`` feature activations of model A.
        acts_b: ``[n, F_b]`` feature activations of model B, the same examples in the same order.
        features_a: Column indices of ``acts_a``.
        threshold: The correlation a match needs, in [-1, 1].
        n_perm: Shuffles, an int >= 1.
        seed: Seed of the shuffles, an int >= 0.
        groups: ``None`` (shuffle all rows), or one hashable label per row (see
            :func:`permutation_null`).

    Returns:
        A :class:`CorrespondenceResult`.
    """
    a, b, features = _check_acts(acts_a, acts_b, features_a)
    if not _real(threshold) or not -1 <= float(threshold) <= 1:
        raise ValueError(f"threshold must be a correlation in [-1, 1], got {threshold!r}")
    threshold = float(threshold)
    n_perm = _check_int(n_perm, "n_perm", 1)
    seed = _check_int(seed, "seed", 0)
    rows = _check_groups(groups, a.shape[0])
    matches = _matches(a, b, features)
    queries = _standardise(a[:, features])
    n, m = queries.shape
    inverse = [torch.argsort(perm) for perm in _perms(n, n_perm, seed, rows)]
    group = max(1, _BLOCK // (n * m))
    null = []
    for start in range(0, n_perm, group):
        stacked = torch.cat([queries[inv] for inv in inverse[start : start + group]], dim=1)
        null.append(_max_corr(stacked, b)[0].reshape(-1, m))
    null_r = torch.cat(null).numpy()  # [n_perm, m]
    shares = (null_r >= threshold).mean(1)
    return CorrespondenceResult(
        matches=matches,
        share=float((matches["r"] >= threshold).mean()),
        null_share_mean=float(shares.mean()),
        null_share_q95=float(np.quantile(shares, 0.95)),
        null_r_mean=float(null_r.mean()),
        threshold=threshold,
        n_perm=n_perm,
    )


# -- linear maps --------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class LinearMap:
    """An affine map from model A's space to model B's: ``x -> (x - mean_a) @ weight + mean_b``.

    Attributes:
        weight: ``[d_a, d_b]`` (float64).
        mean_a: ``[d_a]``, the mean of A's fitting rows.
        mean_b: ``[d_b]``, the mean of B's fitting rows.
    """

    weight: Float[Tensor, "d_a d_b"]
    mean_a: Float[Tensor, " d_a"]
    mean_b: Float[Tensor, " d_b"]

    def __post_init__(self) -> None:
        w = self.weight
        if w.ndim != 2 or self.mean_a.shape != (w.shape[0],) or self.mean_b.shape != (w.shape[1],):
            raise ValueError(
                f"weight [d_a, d_b], mean_a [d_a] and mean_b [d_b] disagree: shapes {tuple(w.shape)}, "
                f"{tuple(self.mean_a.shape)}, {tuple(self.mean_b.shape)}"
            )

    def _input(self, x: Any, name: str) -> Tensor:
        x = _check_tensor(x, name, min_rows=0, ndims=(1, 2))
        if x.shape[-1] != self.weight.shape[0]:
            raise ValueError(
                f"{name} has {x.shape[-1]} columns but the map is from a space of {self.weight.shape[0]} "
                f"(give [{self.weight.shape[0]}] or [n, {self.weight.shape[0]}])"
            )
        return x

    def __call__(self, x: Tensor) -> Tensor:
        """Map points ``[d_a]`` or ``[n, d_a]`` of A to B (``[d_b]`` or ``[n, d_b]``, in ``x``'s dtype)."""
        x = self._input(x, "x")
        return ((x.double() - self.mean_a) @ self.weight + self.mean_b).to(x.dtype)

    def direction(self, v: Tensor) -> Tensor:
        """Map a direction (a difference of points, e.g. a steering vector) ``[d_a]`` or ``[n, d_a]``:
        ``v @ weight``, no means, so ``direction(x1 - x2) == self(x1) - self(x2)``."""
        v = self._input(v, "v")
        return (v.double() @ self.weight).to(v.dtype)

    def r2(self, x_a: Tensor, x_b: Tensor) -> float:
        """``1 - SSE / SST`` of the map on ``x_a [n, d_a]`` -> ``x_b [n, d_b]`` (n >= 2), SST around
        ``x_b``'s own column means, summed over all columns (1 is perfect; below 0 is worse than the
        means)."""
        x_a, x_b = _pair(x_a, x_b, "x_a", "x_b", 2, "R²")
        self._input(x_a, "x_a")
        if x_b.shape[1] != self.weight.shape[1]:
            raise ValueError(
                f"x_b has {x_b.shape[1]} columns but the map is to a space of {self.weight.shape[1]}"
            )
        target = x_b.double()
        sse = float((((x_a.double() - self.mean_a) @ self.weight + self.mean_b) - target).square().sum())
        sst = float((target - target.mean(0)).square().sum())
        if sst == 0:
            raise ValueError("x_b is the same in every row (no variance); R² is undefined")
        return 1 - sse / sst


def fit_linear_map(x_a: Tensor, x_b: Tensor, *, ridge: float = 1e-3) -> LinearMap:
    """Least-squares map from A's space to B's, fitted on paired examples, ridge-regularised.

    With ``Xc = x_a - mean_a`` and ``Yc = x_b - mean_b`` (column means), ``W`` minimises
    ``||Xc W - Yc||_F^2 + lam ||W||_F^2`` where ``lam = ridge * ||Xc||_F^2 / d_a``: ``ridge`` times
    ``trace(Xc^T Xc) / d_a``, the mean eigenvalue of the Gram matrix, so ``ridge`` does not depend on
    the scale of the activations. ``W = (Xc^T Xc + lam I)^-1 Xc^T Yc``, solved in the n x n form
    ``Xc^T (Xc Xc^T + lam I)^-1 Yc`` when n < d_a (the same matrix). ``ridge=0`` is ordinary least
    squares (the minimum-norm solution when n <= d_a or Xc is rank deficient).

    Args:
        x_a: ``[n, d_a]`` representations in model A, n >= 2.
        x_b: ``[n, d_b]`` representations in model B, the same examples in the same order.
        ridge: A number >= 0 (relative to the mean eigenvalue, see above).

    Returns:
        A :class:`LinearMap` (float64).

    Example:
        >>> import torch
        >>> x = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
        >>> m = fit_linear_map(x, 2 * x + 1, ridge=0.0)
        >>> round(m.r2(x, 2 * x + 1), 6), torch.allclose(m.weight, 2 * torch.eye(3).double(), atol=1e-5)
        (1.0, True)
    """
    a, b = _pair(x_a, x_b, "x_a", "x_b", 2, "a linear map")
    if not _real(ridge) or float(ridge) < 0:
        raise ValueError(f"ridge must be a number >= 0 (e.g. 1e-3), got {ridge!r}")
    a64, b64 = a.double(), b.double()
    mean_a, mean_b = a64.mean(0), b64.mean(0)
    xc, yc = a64 - mean_a, b64 - mean_b
    n, d_a = xc.shape
    scale = float(xc.square().sum()) / d_a
    if scale == 0:
        raise ValueError("x_a is the same in every row (no variance); there is no map to fit")
    lam = float(ridge) * scale
    if lam == 0:
        weight = torch.linalg.lstsq(xc, yc, driver="gelsd").solution
    elif n >= d_a:
        weight = torch.linalg.solve(xc.T @ xc + lam * torch.eye(d_a, dtype=torch.float64), xc.T @ yc)
    else:
        weight = xc.T @ torch.linalg.solve(xc @ xc.T + lam * torch.eye(n, dtype=torch.float64), yc)
    return LinearMap(weight=weight, mean_a=mean_a, mean_b=mean_b)
