"""Class profiles: what sets each class apart, what the classes share, how they relate, and directions.

A :class:`ClassProfile` holds every example's representation per class in one or two spaces:
``"raw"`` (the residual stream at a hook, ``d_model`` columns) and, from
:func:`tlsteer.sae.class_profile`, ``"feature"`` (an SAE's feature activations, ``d_sae``
columns). In either space a column is called a ``feature`` (for raw space, a residual dimension).

- :meth:`~ClassProfile.distinctive`: one-vs-rest columns ranked by difference of means,
  standardized effect (Cohen's d with the pooled standard deviation) or AUROC, each with its
  stability: the share of bootstrap resamples of the examples (within each class, with
  replacement) in which it stays in the top k. The top k are kept whatever their stability by
  default (a stability filter cost held-out recognition in ``benchmarks/distinctive_generalisation.py``);
  ``stable_only=True`` drops the columns below ``min_stability``.
- :meth:`~ClassProfile.shared`: feature-space columns active (nonzero) in at least a share of the
  examples of every chosen class, ranked by their smallest class mean, with stability.
- :meth:`~ClassProfile.similarity`: the K x K cosine matrix of class centroids.
- :meth:`~ClassProfile.direction` (mean of b minus mean of a) and
  :meth:`~ClassProfile.mean_centred` (a class mean minus the mean of all class means; Jorgensen
  et al. 2023) as core ``SteeringVector``\\ s at the hook (raw space here; the SAE module decodes
  feature-space ones through the dictionary's ``decode_change``).

The representations are kept per example (``n x d`` floats per space) because AUROC and the
bootstrap need them; class means are computed from them.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from tlsteer._types import check_batch_size, is_int
from tlsteer.classes import ClassDataset, class_reads
from tlsteer.errors import format_options
from tlsteer.read import Read
from tlsteer.vector import SteeringVector, VectorMetadata

__all__ = [
    "DISTINCTIVE_K",
    "DISTINCTIVE_STABLE_ONLY",
    "MIN_STABILITY",
    "N_BOOTSTRAP",
    "ORDINAL_METHODS",
    "RANKINGS",
    "SHARED_RANKINGS",
    "SPACES",
    "ClassProfile",
    "check_n_bootstrap",
    "raw_class_profile",
    "spearman",
]

SPACES: tuple[str, ...] = ("raw", "feature")
RANKINGS: tuple[str, ...] = ("effect", "mean_diff", "auroc")
ORDINAL_METHODS: tuple[str, ...] = ("lstsq", "centroid")
SHARED_RANKINGS: tuple[str, ...] = ("min_mean", "contrast")
DISTINCTIVE_K = 20
"""Default ``k`` of :meth:`ClassProfile.distinctive` (was 10; evidence: :data:`DISTINCTIVE_STABLE_ONLY`)."""
DISTINCTIVE_STABLE_ONLY = False
"""Whether :meth:`ClassProfile.distinctive` drops unstable columns by default (it did, at 0.5, before).

Chosen by ``benchmarks/distinctive_generalisation.py`` (``benchmarks/results/
distinctive_generalisation.json``): profiles of the training split of every built-in class set
at both shipped SAEs (layers 6 and 12), each held-out example given to the class whose distinctive
features it activates most (:func:`tlsteer.recognition.recognise`, standardized score). Over a
grid of layer x stability filter (off, 0.3, 0.5, 0.8) x k (5, 10, 20) x resamples (50, 100), the
mean validation accuracy over the four sets was highest at layer 12 with a filter at 0.3 and k = 20
(0.853); the simplest configuration within 0.01 of it, and the default since, is no filter and
k = 20 at layer 6 (validation 0.844, test 0.782, chance 0.25 to 0.33). The old default (filter at
0.5, k = 10, 50 resamples, layer 6) reached 0.726 validation and 0.676 test, and left fewer than
k columns for some class in every set (emotions: 4, 6 and 0). On average over the grid the filter
only cost: off 0.805, 0.3 0.796, 0.5 0.762, 0.8 0.614 (validation); k = 20 beat 10 and 5; 100
resamples did no better than 50 (0.725 against 0.723).
"""
MIN_STABILITY = 0.3
"""Default threshold of the stability filter of ``distinctive`` when it is on (was 0.5): of the
thresholds tried, 0.3 cost held-out recognition least (see :data:`DISTINCTIVE_STABLE_ONLY`).
``shared`` keeps 0.5, untested."""
N_BOOTSTRAP = 50
"""Default resamples of a profile's stability estimate (100 did no better in held-out recognition)."""
_EPS = 1e-8
_AUROC_CHUNK = 256


def _stats(inside: Tensor, outside: Tensor, frequencies: bool = True) -> dict[str, Tensor]:
    """Per column: means, difference, Cohen's d (pooled sd), and (``frequencies``) the share nonzero."""
    m_in, m_out = inside.mean(0), outside.mean(0)
    n_in, n_out = inside.shape[0], outside.shape[0]
    var_in = inside.var(0, unbiased=True) if n_in > 1 else torch.zeros_like(m_in)
    var_out = outside.var(0, unbiased=True) if n_out > 1 else torch.zeros_like(m_out)
    pooled = (((n_in - 1) * var_in + (n_out - 1) * var_out) / max(n_in + n_out - 2, 1)).sqrt()
    diff = m_in - m_out
    out = {"mean_in": m_in, "mean_out": m_out, "mean_diff": diff, "effect": diff / pooled.clamp(min=_EPS)}
    if frequencies:
        out["frequency_in"] = (inside != 0).float().mean(0)
        out["frequency_out"] = (outside != 0).float().mean(0)
    return out


def _top(primary: Tensor, secondary: Tensor, k: int) -> Tensor:
    """The ``k`` best columns by ``primary``, ties broken by ``secondary`` (both higher first)."""
    order = secondary.argsort(descending=True, stable=True)
    return order[primary[order].argsort(descending=True, stable=True)][:k]


_TIE_BREAK = {"effect": "mean_diff", "mean_diff": "effect", "auroc": "effect"}


def _ranks(values: Tensor) -> Tensor:
    """Ranks from 0, ties given their average rank."""
    unique, inverse, counts = torch.unique(values, return_inverse=True, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    return (starts.double() + (counts.double() - 1) / 2)[inverse]


def spearman(x: Any, y: Any) -> float:
    """Spearman's rank correlation of two equal-length sequences (ties averaged; NaN if one is constant).

    Example:
        >>> spearman([1, 2, 3, 4], [10, 20, 20, 40])
        0.9486832980505138
    """
    a, b = (
        torch.as_tensor(x, dtype=torch.float64).flatten(),
        torch.as_tensor(y, dtype=torch.float64).flatten(),
    )
    if a.shape != b.shape or a.numel() < 2:
        raise ValueError(f"need two sequences of the same length >= 2, got {a.numel()} and {b.numel()}")
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(ra.norm() * rb.norm())
    return float((ra @ rb) / denom) if denom > 0 else float("nan")


def auroc(inside: Tensor, outside: Tensor) -> Tensor:
    """Per column, P(a random inside value > a random outside value) + P(equal) / 2."""
    out = torch.empty(inside.shape[1])
    for lo in range(0, inside.shape[1], _AUROC_CHUNK):
        a, b = inside[:, None, lo : lo + _AUROC_CHUNK], outside[None, :, lo : lo + _AUROC_CHUNK]
        out[lo : lo + _AUROC_CHUNK] = ((a > b).float() + 0.5 * (a == b).float()).mean((0, 1))
    return out


@dataclass(frozen=True, eq=False)
class ClassProfile:
    """Per-example representations of each class in each space (see the module docstring)."""

    dataset_name: str
    classes: tuple[str, ...]
    hook_name: str
    reps: Mapping[str, Mapping[str, Tensor]] = field(repr=False)
    ordinal: bool = False
    model_name: str = ""
    n_bootstrap: int = N_BOOTSTRAP
    """Resamples for the stability column; 0 means none (then ``stable_only=True`` is refused)."""
    seed: int = 0

    def __post_init__(self) -> None:
        check_n_bootstrap(self.n_bootstrap)

    @classmethod
    def from_representations(
        cls,
        raw: Mapping[str, Tensor] | None,
        hook_name: str,
        features: Mapping[str, Tensor] | None = None,
        classes: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> ClassProfile:
        """From ``{class: [n_class, d]}`` tensors (raw and/or feature space)."""
        reps = {}
        for space, given in (("raw", raw), ("feature", features)):
            if given is None:
                continue
            names = tuple(classes or given)
            rows = {}
            for c in names:
                if c not in given:
                    raise ValueError(f"{space} representations have no class {c!r}")
                t = torch.as_tensor(given[c]).detach().float().cpu()
                if t.ndim != 2 or t.shape[0] < 2:
                    raise ValueError(f"{space}[{c!r}] must be [n >= 2, d], got shape {tuple(t.shape)}")
                if not bool(torch.isfinite(t).all()):
                    raise ValueError(f"{space}[{c!r}] has non-finite values")
                rows[c] = t
            reps[space] = rows
        if not reps:
            raise ValueError("give raw or feature representations")
        names = tuple(classes or next(iter(reps.values())))
        kwargs.setdefault("dataset_name", "classes")
        return cls(classes=names, hook_name=hook_name, reps=reps, **kwargs)

    # -- helpers ----------------------------------------------------------------------------
    def _space(self, space: Any) -> Mapping[str, Tensor]:
        if space not in SPACES:
            raise ValueError(f"unknown space {space!r}; valid: {format_options(SPACES)}")
        if space not in self.reps:
            raise ValueError(f"this profile has no {space!r} space (it has {list(self.reps)})")
        return self.reps[space]

    def check_class(self, name: Any) -> str:
        if name not in self.classes:
            raise ValueError(f"unknown class {name!r}; classes: {format_options(self.classes)}")
        return name

    def _check_k(self, k: Any) -> int:
        if not is_int(k) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        return int(k)

    def _check_stability(self, stable_only: Any, min_stability: Any, what: str) -> None:
        """Refuse a bad threshold, and a stability filter that cannot be applied (no resamples)."""
        if not (isinstance(min_stability, numbers.Real) and 0 <= float(min_stability) <= 1):  # NaN too
            raise ValueError(f"min_stability must be a number in [0, 1], got {min_stability!r}")
        if not stable_only:
            return
        if self.n_bootstrap == 0:
            raise ValueError(
                f"{what} with stable_only=True needs a stability estimate, but this profile was built "
                "with n_bootstrap=0 (no resamples), so every row would be dropped; build it with "
                f"n_bootstrap >= 1 (default {N_BOOTSTRAP}), or pass stable_only=False"
            )

    def _stability(self, hits: Tensor) -> Tensor:
        """The share of resamples that hit each column; NaN when there were none."""
        return hits / self.n_bootstrap if self.n_bootstrap else torch.full_like(hits, float("nan"))

    def _resampled(self, rows: Mapping[str, Tensor], gen: torch.Generator) -> dict[str, Tensor]:
        return {c: t[torch.randint(t.shape[0], (t.shape[0],), generator=gen)] for c, t in rows.items()}

    # -- summaries --------------------------------------------------------------------------
    def sizes(self) -> dict[str, int]:
        return {c: int(t.shape[0]) for c, t in next(iter(self.reps.values())).items()}

    def means(self, space: str = "raw") -> Tensor:
        """``[K, d]``: the class centroids, in class order."""
        rows = self._space(space)
        return torch.stack([rows[c].mean(0) for c in self.classes])

    def similarity(self, space: str = "raw", centred: bool = False) -> pd.DataFrame:
        """K x K cosine similarities of the class centroids (``centred``: after removing their mean)."""
        means = self.means(space)
        if centred:
            means = means - means.mean(0)
        unit = means / means.norm(dim=-1, keepdim=True).clamp(min=_EPS)
        return pd.DataFrame((unit @ unit.T).numpy(), index=list(self.classes), columns=list(self.classes))

    def _top(
        self, rows: Mapping[str, Tensor], name: str, rank_by: str, k: int, frequencies: bool = True
    ) -> tuple[Tensor, dict]:
        inside = rows[name]
        outside = torch.cat([rows[c] for c in self.classes if c != name])
        stats = _stats(inside, outside, frequencies)
        if rank_by == "auroc":
            stats["auroc"] = auroc(inside, outside)
        return _top(stats[rank_by], stats[_TIE_BREAK[rank_by]], k), stats

    def distinctive(
        self,
        name: str,
        k: int = DISTINCTIVE_K,
        space: str = "feature",
        rank_by: str = "effect",
        stable_only: bool = DISTINCTIVE_STABLE_ONLY,
        min_stability: float = MIN_STABILITY,
    ) -> pd.DataFrame:
        """The ``k`` columns that most set class ``name`` above the rest, best first.

        Columns: ``feature``, ``mean_in``, ``mean_out``, ``mean_diff``, ``effect``, ``auroc``,
        ``frequency_in``, ``frequency_out``, ``stability``. Ties are broken by the effect size (by the
        difference of means when ranking by effect). With ``stable_only`` the rows whose
        stability is below ``min_stability`` are dropped (the table may then be shorter than k);
        a profile built with ``n_bootstrap=0`` has no stability (NaN) and refuses ``stable_only=True``.

        The defaults (k = 20, no stability filter; 0.3 when the filter is on) are those under which
        the distinctive columns of the built-in class sets best recognised held-out examples (see
        :data:`DISTINCTIVE_STABLE_ONLY`): the filter kept fewer than k columns for some class of
        every set and cost held-out accuracy (0.726 against 0.844 validation, over four sets).
        """
        rows = self._space(space)
        name, k = self.check_class(name), self._check_k(k)
        if rank_by not in RANKINGS:
            raise ValueError(f"unknown rank_by {rank_by!r}; valid: {format_options(RANKINGS)}")
        self._check_stability(stable_only, min_stability, "distinctive")
        d = rows[name].shape[1]
        k = min(k, d)
        top, stats = self._top(rows, name, rank_by, k)
        if "auroc" not in stats:
            stats["auroc"] = auroc(rows[name], torch.cat([rows[c] for c in self.classes if c != name]))
        gen = torch.Generator().manual_seed(self.seed)
        hits = torch.zeros(d)
        for _ in range(self.n_bootstrap):
            hits[self._top(self._resampled(rows, gen), name, rank_by, k, frequencies=False)[0]] += 1
        stats["stability"] = self._stability(hits)
        table = pd.DataFrame({"feature": top.tolist(), **{key: v[top].tolist() for key, v in stats.items()}})
        if stable_only:
            table = table[table.stability >= min_stability].reset_index(drop=True)
        return table

    def shared(
        self,
        k: int = 10,
        classes: Sequence[str] | None = None,
        min_frequency: float = 0.5,
        stable_only: bool = True,
        min_stability: float = 0.5,
        rank_by: str = "min_mean",
    ) -> pd.DataFrame:
        """Feature-space columns active in at least ``min_frequency`` of every chosen class's examples.

        ``rank_by="min_mean"`` ranks by the smallest class mean over the chosen classes (default:
        all), which favours features that are always on; ``"contrast"`` ranks by that smallest
        mean minus the largest mean over the other classes: what the chosen group shares and the
        rest lacks (e.g. the attitude shared by "enjoy animals" and "enjoy food"; it needs at
        least one class outside the group). Columns: ``feature``, ``min_mean``, ``min_frequency``,
        ``max_rest_mean`` (with other classes), ``mean_<class>`` for each chosen class, and
        ``stability`` (share of bootstrap resamples where it is still shared and in the top k).
        """
        rows = self._space("feature")
        chosen = list(self.classes if classes is None else [self.check_class(c) for c in classes])
        if len(set(chosen)) < len(chosen) or not chosen:
            raise ValueError(f"classes must be distinct class names, got {classes!r}")
        k = self._check_k(k)
        rest = [c for c in self.classes if c not in chosen]
        if rank_by not in SHARED_RANKINGS:
            raise ValueError(f"unknown rank_by {rank_by!r}; valid: {format_options(SHARED_RANKINGS)}")
        if rank_by == "contrast" and not rest:
            raise ValueError("rank_by='contrast' needs a group smaller than all classes: pass classes=[...]")
        self._check_stability(stable_only, min_stability, "shared")

        def score(sample: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
            freq = torch.stack([(sample[c] != 0).float().mean(0) for c in chosen]).min(0).values
            low = torch.stack([sample[c].mean(0) for c in chosen]).min(0).values
            value = low
            if rank_by == "contrast":
                value = low - torch.stack([sample[c].mean(0) for c in rest]).max(0).values
            return torch.where(freq >= min_frequency, value, float("-inf")), low, freq

        ranked, low, freq = score(rows)
        n_ok = int(torch.isfinite(ranked).sum())
        top = ranked.topk(min(k, n_ok)).indices if n_ok else torch.zeros(0, dtype=torch.long)
        gen = torch.Generator().manual_seed(self.seed)
        hits = torch.zeros(ranked.shape[0])
        for _ in range(self.n_bootstrap):
            again = score(self._resampled(rows, gen))[0]
            kept = again.topk(min(k, int(torch.isfinite(again).sum()))).indices
            hits[kept] += 1
        table = pd.DataFrame(
            {
                "feature": top.tolist(),
                "min_mean": low[top].tolist(),
                "min_frequency": freq[top].tolist(),
                **(
                    {
                        "max_rest_mean": torch.stack([rows[c].mean(0) for c in rest])
                        .max(0)
                        .values[top]
                        .tolist()
                    }
                    if rest
                    else {}
                ),
                **{f"mean_{c}": rows[c].mean(0)[top].tolist() for c in chosen},
                "stability": self._stability(hits)[top].tolist(),
            }
        )
        if stable_only:
            table = table[table.stability >= min_stability].reset_index(drop=True)
        return table

    # -- directions -------------------------------------------------------------------------
    def _vector(self, direction: Tensor, note: str) -> SteeringVector:
        meta = VectorMetadata(model_name=self.model_name, aggregator="class_means", note=note)
        return SteeringVector({self.hook_name: direction.clone()}, meta)

    def raw_direction(self, a: str, b: str) -> Tensor:
        rows = self._space("raw")
        return rows[self.check_class(b)].mean(0) - rows[self.check_class(a)].mean(0)

    def direction(self, a: str, b: str, space: str = "raw") -> SteeringVector:
        """From class ``a`` to class ``b`` (mean of b minus mean of a) at the hook."""
        if space != "raw":
            self._space(space)
            raise ValueError("a feature-space direction needs the SAE: use tlsteer.sae.class_profile")
        return self._vector(self.raw_direction(a, b), f"{self.dataset_name}: {a} -> {b}")

    def ordinal_weights(self, method: str = "lstsq", space: str = "raw", ridge: float = 1.0) -> Tensor:
        """``[d]``: the direction along an ordinal set's levels, in a space.

        ``"lstsq"``: the ridge least-squares fit of the level (0 for the lowest class) on the
        centred representations (``ridge`` times the mean squared row norm); ``"centroid"``: the
        mean of the highest level minus the mean of the lowest.
        """
        if not self.ordinal:
            raise ValueError(f"{self.dataset_name!r} is not ordinal; its classes have no order")
        if method not in ORDINAL_METHODS:
            raise ValueError(f"unknown method {method!r}; valid: {format_options(ORDINAL_METHODS)}")
        if not ridge > 0:
            raise ValueError(f"ridge must be > 0, got {ridge!r}")
        return _ordinal_fit(self._space(space), self.classes, method, float(ridge))

    def ordinal_spearman(self, weights: Tensor, space: str = "raw") -> float:
        """Spearman correlation of every example's projection on ``weights`` with its level.

        Call it on a profile of held-out examples with weights fit on the training profile.
        """
        rows = self._space(space)
        proj = torch.cat([rows[c] @ weights.float() for c in self.classes])
        levels = torch.cat([torch.full((rows[c].shape[0],), float(i)) for i, c in enumerate(self.classes)])
        return spearman(proj, levels)

    def ordinal_direction(self, method: str = "lstsq", ridge: float = 1.0) -> SteeringVector:
        """The raw-space ordinal direction (see :meth:`ordinal_weights`) as a SteeringVector."""
        weights = self.ordinal_weights(method, "raw", ridge)
        return self._vector(weights, f"{self.dataset_name}: ordinal direction ({method})")

    def mean_centred(self, name: str, space: str = "raw") -> SteeringVector:
        """Class ``name``'s mean minus the mean of all class means, at the hook."""
        if space != "raw":
            self._space(space)
            raise ValueError("a feature-space vector needs the SAE: use tlsteer.sae.class_profile")
        means = self.means("raw")
        centred = means[self.classes.index(self.check_class(name))] - means.mean(0)
        return self._vector(centred, f"{self.dataset_name}: {name} mean-centred")


def _ordinal_fit(rows: Mapping[str, Tensor], classes: Sequence[str], method: str, ridge: float) -> Tensor:
    if method == "centroid":
        return rows[classes[-1]].mean(0) - rows[classes[0]].mean(0)
    x = torch.cat([rows[c] for c in classes]).double()
    y = torch.cat([torch.full((rows[c].shape[0],), float(i)) for i, c in enumerate(classes)]).double()
    x, y = x - x.mean(0), y - y.mean()
    gram = x.T @ x + ridge * torch.eye(x.shape[1], dtype=x.dtype) * (x.pow(2).sum() / x.shape[0])
    return torch.linalg.solve(gram, x.T @ y).float()


def check_n_bootstrap(n_bootstrap: Any) -> int:
    """``n_bootstrap`` as an int >= 0 (0: no stability estimate), else a ``ValueError``."""
    if not is_int(n_bootstrap) or n_bootstrap < 0:
        raise ValueError(
            f"n_bootstrap must be an int >= 0 (resamples for the stability column; 0 means no "
            f"stability, so distinctive() and shared() then need stable_only=False), got {n_bootstrap!r}"
        )
    return int(n_bootstrap)


def raw_class_profile(
    model: HookedTransformer,
    dataset: ClassDataset,
    hook: str,
    *,
    read: Read | None = None,
    batch_size: int = 8,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = 0,
) -> ClassProfile:
    """A raw-space :class:`ClassProfile` of ``dataset`` at ``hook`` (no SAE needed).

    With ``n_bootstrap=0`` it has no stability, and ``distinctive`` needs ``stable_only=False``.

    Example:
        >>> styles = load_class_dataset("speaking_styles")  # doctest: +SKIP
        >>> profile = raw_class_profile(model, styles, "blocks.6.hook_resid_post")  # doctest: +SKIP
        >>> profile.direction("formal", "pirate").apply(model, 4.0)  # doctest: +SKIP
    """
    if not isinstance(dataset, ClassDataset):
        raise TypeError(f"dataset must be a ClassDataset, got {type(dataset).__name__}")
    check_n_bootstrap(n_bootstrap)
    batch_size = check_batch_size(batch_size)
    raw = class_reads(model, dataset, hook, read=read, batch_size=batch_size)
    return ClassProfile(
        dataset.name,
        dataset.classes,
        hook,
        {"raw": raw},
        dataset.ordinal,
        model.cfg.model_name or "",
        int(n_bootstrap),
        seed,
    )
