"""What one feature-vs-CAA comparison run gives back: :class:`ComparisonResult`.

A result holds the dataset's name and kind (``"class_set"``, ``"ab"``, ``"analogy"``), the
:class:`~tlsteer.experiments.comparison_config.ComparisonConfig` it ran with (its ``methods`` the
list that ran), what the run measured before scoring (the hook, the residual norm there, how many
neutral texts), its :class:`~tlsteer.experiments.cells.Cell`\\ s keyed by ``(method, budget)``,
what its dataset kind adds (a class set's classes, targets, example generations, judge accuracy
and clamped features; an A/B task's pair and item counts; an analogy task's ``k`` and split), and
its wall time. Read it as a table (:meth:`~ComparisonResult.to_frame`,
:meth:`~ComparisonResult.to_markdown`), draw it (:meth:`~ComparisonResult.plot`), or write it
(:meth:`~ComparisonResult.save`; :meth:`~ComparisonResult.load` reads it back, equal).

The JSON is the schema of ``benchmarks/results/feature_vs_caa_<dataset>.json``: ``"dataset"``,
``"settings"`` (the config's values and the measured ones), ``"cells"`` keyed ``"<method>@<budget>"``
(``"unsteered"`` and ``"prompting"`` alone), the kind's own keys, ``"seconds"``. An A/B task's
cells call their success ``"p_matching"``. Files written before a setting was recorded (the
committed results record neither ``methods``, ``split_seed``, ``n_prompts``, ``targets`` nor
``ks``) load with the config's defaults for it, listed in :attr:`ComparisonResult.unrecorded`, and
are written back without it, so such a file survives a load and a save byte for byte.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from matplotlib.figure import Figure

from tlsteer.experiments.cells import Cell, CellKey, Interval
from tlsteer.experiments.comparison_config import ComparisonConfig
from tlsteer.experiments.comparison_plots import comparison_markdown, plot_comparison, plot_transfer_grid

__all__ = ["KINDS", "ComparisonResult", "DatasetKind"]

DatasetKind = Literal["class_set", "ab", "analogy"]
KINDS: tuple[DatasetKind, ...] = ("class_set", "ab", "analogy")
"""``"class_set"``: a :class:`~tlsteer.ClassDataset`; ``"ab"``: an
:class:`~tlsteer.experiments.ab_task.ABTask`; ``"analogy"``: an
:class:`~tlsteer.experiments.analogy_task.AnalogyTask`."""

CONFIG_FIELDS = tuple(f.name for f in fields(ComparisonConfig))
SETTINGS = (
    "hook",
    "methods",
    "budgets",
    "residual_norm",
    "seeds",
    "max_new_tokens",
    "n_neutral",
    "n_resamples",
    "split_seed",
    "n_prompts",
    "targets",
    "ks",
    "calibration",
    "n_calibration_prompts",
    "n_random",
)
"""The keys of a result's ``"settings"``, in the order it writes them: the config's and the measured
``hook``, ``residual_norm`` and ``n_neutral``."""

_CELL_FIELDS: dict[str, tuple[str, ...]] = {
    "class_set": (
        "success",
        "selectivity",
        "transfer",
        "n_generations",
        "perplexity",
        "mmlu",
        "mmlu_change",
        "kl_mean",
        "kl_p95",
        "strength",
        "reached",
        "success_fluent",
        "cosine",
        "outcomes",
    ),
    "ab": (
        "success",
        "mmlu",
        "strength",
        "kl_mean",
        "kl_p95",
        "reached",
        "mmlu_change",
        "cosine",
        "outcomes",
    ),
    "analogy": (
        "success",
        "top1",
        "n_test_pairs",
        "strength",
        "kl_mean",
        "kl_p95",
        "reached",
        "cosine",
        "outcomes",
    ),
}
"""Each kind's cell fields, in the order its JSON holds them."""
_CALIBRATION = ("strength", "kl_mean", "kl_p95", "reached")
_INTERVALS = ("success", "mmlu", "selectivity", "perplexity", "top1", "success_fluent")
_EXTRAS: dict[str, tuple[str, ...]] = {
    "class_set": (
        "classes",
        "targets",
        "cells",
        "examples",
        "judge_held_out_accuracy",
        "judge_flagged",
        "features",
    ),
    "ab": ("cells", "n_train_pairs", "n_test_items"),
    "analogy": ("cells", "k", "n_shots", "n_train_pairs", "n_test_pairs"),
}
"""Each kind's top-level keys between ``"settings"`` and ``"seconds"``, in order."""


def _key_label(key: CellKey) -> str:
    method, budget = key
    return method if budget is None else f"{method}@{budget}"


def _parse_label(label: Any) -> CellKey:
    if not isinstance(label, str) or not label:
        raise ValueError(f"a cell key is '<method>@<budget>' or a method's name, got {label!r}")
    method, at, budget = label.partition("@")
    if not at:
        return (method, None)
    try:
        return (method, float(budget))
    except ValueError:
        raise ValueError(f"cell key {label!r}: the budget {budget!r} is not a number") from None


def _cell_to_dict(cell: Cell, kind: DatasetKind) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _CELL_FIELDS[kind]:
        value = getattr(cell, name)
        if name in _CALIBRATION and cell.method != "unsteered":
            pass  # a calibrated cell writes all four, a strength of None (prompting) too
        elif value is None:
            continue
        if isinstance(value, Interval):
            value = value.to_dict()
        elif isinstance(value, tuple):
            value = list(value)
        elif name == "transfer":
            value = {t: dict(row) for t, row in value.items()}
        out["p_matching" if kind == "ab" and name == "success" else name] = value
    return out


def _cell_from_dict(key: CellKey, data: Any, kind: DatasetKind) -> Cell:
    if not isinstance(data, Mapping):
        raise ValueError(f"cell {_key_label(key)!r} must be a JSON object, got {data!r:.80}")
    success = "p_matching" if kind == "ab" else "success"
    keys = (success, *_CELL_FIELDS[kind][1:])
    unknown = [k for k in data if k not in keys]
    if unknown or data.get(success) is None:
        what = f"unknown key {unknown[0]!r}" if unknown else f"no {success!r}"
        raise ValueError(
            f"cell {_key_label(key)!r} of a {kind} result has {what}; its keys: "
            f"{', '.join(repr(n) for n in keys)}"
        )
    data = {("success" if k == success else k): v for k, v in data.items()}
    values: dict[str, Any] = {}
    for name, value in data.items():
        if name in _INTERVALS and value is not None:
            value = Interval.from_dict(value)
        elif name == "strength" and isinstance(value, list):
            value = tuple(None if s is None else float(s) for s in value)
        elif name == "outcomes" and isinstance(value, list):
            value = tuple(float(v) for v in value)
        elif name in ("strength", "kl_mean", "kl_p95", "mmlu_change", "cosine") and isinstance(value, int):
            value = float(value)
        values[name] = value
    return Cell(key[0], key[1], **values)


def _tuples(value: Any) -> Any:
    """Lists (JSON's sequences) as tuples, at any depth; mappings as plain dicts."""
    if isinstance(value, Mapping):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return tuple(_tuples(v) for v in value)
    return value


def _lists(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    return value


@dataclass(frozen=True)
class ComparisonResult:
    """One comparison run on one dataset (see the module docstring).

    Attributes:
        dataset: The dataset's name (``"speaking_styles"``, ``"refusal"``, ``"analogy_country_capital"``).
        kind: ``"class_set"``, ``"ab"`` or ``"analogy"`` (:data:`KINDS`).
        config: The settings it ran with; ``config.methods`` is the list that ran.
        hook: The SAE's hook, where every method acts.
        residual_norm: The mean residual norm at the hook on the neutral texts (the unit of a
            vector method's strength).
        n_neutral: Neutral texts used for calibration, the residual norm and feature statistics.
        cells: ``{(method, budget): Cell}``, unsteered first; ``budget`` is ``None`` for
            ``"unsteered"`` and ``"prompting"``.
        seconds: Wall time of the run.
        classes, targets: Class sets: the classes, and those steered toward.
        examples: Class sets: per steered cell, the first two generations toward each target.
        judge_held_out_accuracy, judge_flagged: Class sets: the judge's held-out accuracy, and
            whether it was flagged as too weak to trust.
        features: Class sets: per target, the features a method picked (``{"clamp": (...)}``).
        n_train_pairs: A/B and analogy tasks: training pairs the methods were built from.
        n_test_items: A/B tasks: held-out A/B items scored.
        k, n_shots, n_test_pairs: Analogy tasks: success is top-``k``; demonstrations per
            few-shot prompt; test pairs scored.
        units: The scored units, ``(stratum, cluster)`` per unit in the order of every cell's
            ``outcomes``: on a class set ``(target, prompt index)`` (every target on every prompt),
            on an A/B or analogy task ``("", item or pair index)``. A paired bootstrap resamples
            clusters and keeps every stratum's size (:mod:`tlsteer.experiments.verdict`). Empty in
            files written before units were kept.
        plan: The pre-registered analysis plan the run answered, ``{"path", "sha256"}``
            (:mod:`tlsteer.experiments.plan`), or ``None``.
        unrecorded: Config fields the file it was loaded from did not record: they hold the
            config's defaults, and :meth:`save` leaves them out again (empty for a run).

    Example:
        >>> result = feature_vs_caa(model, sae, styles, ComparisonConfig(budgets=[0.5]))  # doctest: +SKIP
        >>> result.cells["caa", 0.5].success  # doctest: +SKIP
        Interval(value=0.42, low=0.32, high=0.51)
        >>> result.to_frame()  # doctest: +SKIP
        >>> result.save("feature_vs_caa_speaking_styles.json")  # doctest: +SKIP
        >>> ComparisonResult.load("feature_vs_caa_speaking_styles.json") == result  # doctest: +SKIP
        True
    """

    dataset: str
    kind: DatasetKind
    config: ComparisonConfig
    hook: str
    residual_norm: float
    n_neutral: int
    cells: Mapping[CellKey, Cell] = field(repr=False)
    seconds: float
    classes: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    examples: Mapping[CellKey, Mapping[str, tuple[str, ...]]] = field(default_factory=dict, repr=False)
    judge_held_out_accuracy: float | None = None
    judge_flagged: bool | None = None
    features: Mapping[str, Mapping[str, tuple[int, ...]]] = field(default_factory=dict, repr=False)
    n_train_pairs: int | None = None
    n_test_items: int | None = None
    k: int | None = None
    n_shots: int | None = None
    n_test_pairs: int | None = None
    units: tuple[tuple[str, int], ...] = field(default=(), repr=False)
    plan: Mapping[str, str] | None = None
    unrecorded: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {list(KINDS)}, got {self.kind!r}")
        if not isinstance(self.config, ComparisonConfig):
            raise TypeError(f"config must be a ComparisonConfig, got {type(self.config).__name__}")
        if not self.cells:
            raise ValueError(f"{self.dataset}: a result needs at least one cell")
        for key, cell in self.cells.items():
            if key != cell.key:
                raise ValueError(
                    f"{self.dataset}: cell {cell.label!r} is filed under {key!r}, not {cell.key!r}"
                )
        unknown = sorted(set(self.unrecorded) - set(CONFIG_FIELDS))
        if unknown:
            raise ValueError(
                f"unrecorded names {unknown[0]!r}, not a ComparisonConfig field of {list(CONFIG_FIELDS)}"
            )
        required = {
            "class_set": ("judge_held_out_accuracy", "judge_flagged"),
            "ab": ("n_train_pairs", "n_test_items"),
            "analogy": ("k", "n_shots", "n_train_pairs", "n_test_pairs"),
        }[self.kind]
        missing = [name for name in required if getattr(self, name) is None]
        if self.kind == "class_set" and not (self.classes and self.targets):
            missing = ["classes", "targets", *missing]
        if missing:
            raise ValueError(f"{self.dataset}: a {self.kind} result needs {missing}")
        object.__setattr__(self, "cells", dict(self.cells))
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "examples", {k: _tuples(v) for k, v in self.examples.items()})
        object.__setattr__(self, "features", _tuples(self.features))
        object.__setattr__(self, "unrecorded", frozenset(self.unrecorded))
        units = tuple((str(s), int(c)) for s, c in self.units)
        object.__setattr__(self, "units", units)
        if self.plan is not None:
            object.__setattr__(self, "plan", dict(self.plan))
        for cell in self.cells.values():
            if cell.outcomes is not None and len(cell.outcomes) != len(units):
                raise ValueError(
                    f"{self.dataset}: cell {cell.label!r} has {len(cell.outcomes)} outcomes for "
                    f"{len(units)} units; every cell scores every unit once"
                )

    @property
    def budgets(self) -> tuple[float, ...]:
        """The KL budgets of the config, in its order."""
        return self.config.budgets

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods that have a cell, in the cells' order (``"unsteered"`` first)."""
        return tuple(dict.fromkeys(method for method, _ in self.cells))

    def cell(self, method: str, budget: float | None = None) -> Cell:
        """The cell of ``method`` at ``budget`` (``None``: a method without one); an error lists the cells.

        A method without a strength (``"prompting"``) is measured once: asked at a budget, its one
        cell is returned.
        """
        for key in ((method, budget), (method, None)):
            if key in self.cells:
                return self.cells[key]
        raise KeyError(
            f"no cell {_key_label((method, budget))!r} in {self.dataset!r}; cells: "
            f"{', '.join(repr(c.label) for c in self.cells.values())}"
        )

    # ---- tables ----------------------------------------------------------------------------------

    def to_frame(self) -> pd.DataFrame:
        """One row per cell: ``dataset``, ``method``, ``budget`` (NaN where none), ``success`` with
        ``low`` and ``high``, ``kl_mean`` and ``kl_p95`` (0 for unsteered, the reference),
        ``strength`` and ``reached``; then each measure any cell holds (``mmlu``, ``selectivity``,
        ``perplexity``, ``top1`` with their ``_low`` and ``_high``; ``mmlu_change``,
        ``n_generations``, ``n_test_pairs``).

        Example:
            >>> result.to_frame().query("budget == 0.5")[["method", "success", "kl_mean"]]  # doctest: +SKIP
        """
        columns = [
            "dataset",
            "method",
            "budget",
            "success",
            "low",
            "high",
            "kl_mean",
            "kl_p95",
            "strength",
            "reached",
        ]
        extra = ["mmlu", "mmlu_change", "selectivity", "perplexity", "top1"]
        rows = []
        for cell in self.cells.values():
            row: dict[str, Any] = {
                "dataset": self.dataset,
                "method": cell.method,
                "budget": math.nan if cell.budget is None else cell.budget,
                "success": cell.success.value,
                "low": cell.success.low,
                "high": cell.success.high,
                "kl_mean": 0.0 if cell.kl_mean is None else cell.kl_mean,
                "kl_p95": 0.0 if cell.kl_p95 is None else cell.kl_p95,
                "strength": cell.strength,
                "reached": cell.reached,
            }
            for name in extra:
                value = getattr(cell, name)
                if isinstance(value, Interval):
                    row |= {name: value.value, f"{name}_low": value.low, f"{name}_high": value.high}
                elif value is not None:
                    row[name] = value
            for name in ("n_generations", "n_test_pairs"):
                if getattr(cell, name) is not None:
                    row[name] = getattr(cell, name)
            rows.append(row)
        present = dict.fromkeys(name for row in rows for name in row)
        return pd.DataFrame(rows, columns=columns + [c for c in present if c not in columns])

    def to_markdown(self) -> str:
        """This result's tables in markdown: success at each budget, MMLU, and for a class set its
        selectivity, perplexity and KL at the largest budget
        (:func:`~tlsteer.experiments.comparison_plots.comparison_markdown`, one dataset)."""
        return comparison_markdown([self])

    # ---- figures ---------------------------------------------------------------------------------

    def plot(self, path: str | Path | None = None) -> Figure:
        """Success against mean KL per method, and bars at each budget
        (:func:`~tlsteer.experiments.comparison_plots.plot_comparison`).

        With ``path``, the figure is written there and, for a class set, its transfer matrices
        beside it (``<stem>_transfer<suffix>``: :meth:`plot_transfer`), as the benchmark writes them.
        """
        fig = plot_comparison(self, path=path)
        if path is not None and self.kind == "class_set":
            path = Path(path)
            self.plot_transfer(path=path.with_name(f"{path.stem}_transfer{path.suffix}"))
        return fig

    def plot_transfer(
        self, methods: Any = None, budget: float | None = None, path: str | Path | None = None
    ) -> Figure:
        """A class set's transfer matrices side by side, at ``budget`` (default: the largest)
        (:func:`~tlsteer.experiments.comparison_plots.plot_transfer_grid`)."""
        return plot_transfer_grid(self, methods=methods, budget=budget, path=path)

    # ---- JSON ------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The JSON object :meth:`save` writes (the schema of the committed results)."""
        config = self.config
        known = {
            "hook": self.hook,
            "residual_norm": self.residual_norm,
            "n_neutral": self.n_neutral,
            **{name: _lists(getattr(config, name)) for name in CONFIG_FIELDS},
        }
        settings = {name: known[name] for name in SETTINGS if name not in self.unrecorded}
        own = {
            "classes": list(self.classes),
            "targets": list(self.targets),
            "cells": {_key_label(key): _cell_to_dict(cell, self.kind) for key, cell in self.cells.items()},
            "examples": {_key_label(key): _lists(v) for key, v in self.examples.items()},
            "features": _lists(self.features),
        }
        out: dict[str, Any] = {"dataset": self.dataset, "settings": settings}
        for name in _EXTRAS[self.kind]:
            out[name] = own[name] if name in own else getattr(self, name)
        if self.units:
            out["units"] = [list(u) for u in self.units]
        if self.plan is not None:
            out["plan"] = dict(self.plan)
        out["seconds"] = self.seconds
        return out

    @classmethod
    def from_dict(cls, data: Any) -> ComparisonResult:
        """A result from its JSON object (:meth:`to_dict`, or a committed results file).

        The kind is read from the keys: ``"classes"`` (a class set), ``"k"`` (an analogy task),
        else an A/B task. A key that is missing or unknown is refused, naming it.
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"a comparison result is a JSON object, got {type(data).__name__}")
        if "cells" not in data and "datasets" in data:
            raise ValueError(
                "this is a summary of several datasets (its 'datasets' name them), not one comparison; "
                "load each feature_vs_caa_<dataset>.json"
            )
        kind: DatasetKind = "class_set" if "classes" in data else "analogy" if "k" in data else "ab"
        expected = ("dataset", "settings", *_EXTRAS[kind], "seconds")
        missing = [k for k in expected if k not in data]
        unknown = [k for k in data if k not in (*expected, "units", "plan")]
        if missing or unknown:
            what = f"no {missing[0]!r}" if missing else f"an unknown key {unknown[0]!r}"
            raise ValueError(f"a {kind} comparison result has {what}; its keys: {list(expected)}")
        settings = data["settings"]
        if not isinstance(settings, Mapping):
            raise ValueError(f"'settings' must be a JSON object, got {settings!r:.80}")
        stray = [k for k in settings if k not in SETTINGS]
        absent = [k for k in ("hook", "residual_norm", "n_neutral") if k not in settings]
        if stray or absent:
            what = f"an unknown setting {stray[0]!r}" if stray else f"no {absent[0]!r}"
            raise ValueError(f"'settings' has {what}; settings: {list(SETTINGS)}")
        config = ComparisonConfig(**{k: settings[k] for k in CONFIG_FIELDS if k in settings})
        cells = {}
        for label, cell in data["cells"].items():
            key = _parse_label(label)
            cells[key] = _cell_from_dict(key, cell, kind)
        extras: dict[str, Any] = {}
        for name in _EXTRAS[kind]:
            if name == "cells":
                continue
            value = data[name]
            if name == "examples":
                value = {_parse_label(label): v for label, v in value.items()}
            elif name == "judge_held_out_accuracy":
                value = float(value)
            extras[name] = value
        return cls(
            dataset=data["dataset"],
            kind=kind,
            config=config,
            hook=settings["hook"],
            residual_norm=float(settings["residual_norm"]),
            n_neutral=settings["n_neutral"],
            cells=cells,
            seconds=float(data["seconds"]),
            unrecorded=frozenset(k for k in CONFIG_FIELDS if k not in settings),
            units=tuple((str(s), int(c)) for s, c in data.get("units", ())),
            plan=data.get("plan"),
            **_tuples(extras),
        )

    def save(self, path: str | Path) -> Path:
        """Write the result as indented JSON (:meth:`to_dict`) to ``path``; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> ComparisonResult:
        """Read a result that :meth:`save` wrote, or a committed ``feature_vs_caa_<dataset>.json``.

        Example:
            >>> ComparisonResult.load("benchmarks/results/feature_vs_caa_refusal.json").kind  # doctest: +SKIP
            'ab'
        """
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (TypeError, ValueError) as err:  # the file's name in front of what is wrong with it
            raise (TypeError if isinstance(err, TypeError) else ValueError)(f"{path}: {err}") from None
