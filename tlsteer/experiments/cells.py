"""A cell of the comparison: one method at one side-effect budget on one task.

Every method of :mod:`tlsteer.experiments.methods` is built from the same contrast at the same
hook; its strength is set by calibration, not by hand: the strength at which its mean per-token KL
divergence from the unsteered model on neutral text reaches the budget (:func:`calibrate_method`,
bisection in log strength; prompting has no strength and is measured as it is). The neutral text
is never a test prompt. :func:`cell_steerings` turns the calibrations into one :class:`Steering`
per cell, which a task scores on its test data (:mod:`tlsteer.experiments.class_task`,
:mod:`tlsteer.experiments.ab_task`, :mod:`tlsteer.experiments.analogy_task`) into a :class:`Cell`;
every rate comes with a 95% interval (:class:`Interval`): a seeded bootstrap over the sampled
unit (:func:`interval`), or on an analogy task, whose rates are shares of test pairs, the exact
binomial (Clopper-Pearson) one.

A cell is keyed by :data:`CellKey`, ``(method, budget)``: ``("caa", 0.5)``; ``budget`` is ``None``
for ``"unsteered"`` and for a method without a strength (``"prompting"``, measured once).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from transformer_lens import HookedTransformer

from tlsteer.decode import generate_tokens
from tlsteer.eval.budget import bootstrap_ci, calibrate_to_kl, kl_stats, reply_kl_stats
from tlsteer.experiments.methods import Method
from tlsteer.positions import Positions
from tlsteer.steering import Steering

__all__ = [
    "UNSTEERED",
    "Cell",
    "CellKey",
    "Interval",
    "ReplySetting",
    "calibrate_method",
    "calibration_fields",
    "cell_steerings",
    "interval",
]

CellKey = tuple[str, float | None]
"""``(method, budget)``: a cell's key; ``budget`` is ``None`` for ``"unsteered"`` and ``"prompting"``."""

UNSTEERED: CellKey = ("unsteered", None)
"""The key of the unsteered cell (the model as it is, scored on the same test data)."""


@dataclass(frozen=True)
class Interval:
    """A rate and its 95% interval over the sampled unit (prompts, items, pairs): a seeded
    bootstrap, or exact binomial (Clopper-Pearson) for an analogy task's shares.

    ``str(interval)`` is ``"0.42 [0.32, 0.51]"``, as the comparison's tables print it.
    """

    value: float
    low: float
    high: float

    def __post_init__(self) -> None:
        for name in ("value", "low", "high"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"Interval.{name} must be a number, got {v!r}")
            object.__setattr__(self, name, float(v))

    def __str__(self) -> str:
        return f"{self.value:.2f} [{self.low:.2f}, {self.high:.2f}]"

    def to_dict(self) -> dict[str, float]:
        """``{"value", "low", "high"}``, as the comparison's JSON holds it."""
        return {"value": self.value, "low": self.low, "high": self.high}

    @classmethod
    def from_dict(cls, data: Any) -> Interval:
        """From ``{"value", "low", "high"}``; a missing key or another shape is refused, naming it."""
        if not isinstance(data, Mapping) or set(data) != {"value", "low", "high"}:
            raise ValueError(f"an interval is {{'value', 'low', 'high'}}, got {data!r:.120}")
        bad = [
            k
            for k in ("value", "low", "high")
            if isinstance(data[k], bool) or not isinstance(data[k], (int, float))
        ]
        if bad:
            raise TypeError(f"interval {bad[0]!r} must be a number, got {data[bad[0]]!r}")
        return cls(float(data["value"]), float(data["low"]), float(data["high"]))


@dataclass(frozen=True)
class Cell:
    """One method at one budget on one dataset: its success with an interval, and its side effects.

    Every cell has ``success``: on a class set, the share of generations the judge assigns to the
    target; on an A/B task, p(matching) on the held-out items; on an analogy task, top-k accuracy
    of the whole answer among the domain's answers (each test pair's candidates ranked by summed
    log-probability, :mod:`tlsteer.experiments.analogy_task`). A calibrated cell (every one but
    ``"unsteered"``) has the calibration's ``strength`` (the multiplier: in units of the residual
    norm for a vector, of each feature's typical activation for a clamp; ``None`` for prompting;
    on a class set one per target), the mean and 95th percentile of its KL on neutral text
    (``kl_mean``, ``kl_p95``) and whether it ``reached`` the budget (within 10% for prompting,
    which is measured as it is). The other fields are ``None`` where the dataset kind does not
    measure them.

    Attributes:
        method: The method's name (``"caa"``, ``"feature_top8"``, ``"unsteered"``, ...).
        budget: The KL budget it was calibrated to (nats); ``None`` for unsteered and prompting.
        success: The success rate and its interval.
        kl_mean, kl_p95, strength, reached: The calibration (``None`` for unsteered).
        mmlu, mmlu_change: MMLU accuracy at the cell's strength and its change from unsteered
            (when MMLU items were given).
        selectivity, perplexity, transfer, n_generations: Class sets: the target's gain over
            unsteered minus the largest gain of another class; the perplexity of the generations
            under the unsteered model; ``{target: {class: share judged as it}}``; generations scored.
        top1, n_test_pairs: Analogy tasks: rank-1 accuracy of the whole answer among the
            domain's answers (``success`` is top-k among them; both with exact binomial
            intervals); test pairs scored (the length of ``outcomes``).
        outcomes: The success of each scored unit (a generation, an A/B item, a test pair), in
            the order of the result's ``units`` and the same for every cell of a run, so two
            cells are compared pair by pair (:mod:`tlsteer.experiments.verdict`); ``None`` in
            files written before they were kept.
        success_fluent: Class sets: the success among the generations the judge did not call
            degenerate (``None`` where the judge has no such outcome).
        cosine: The cosine of the method's vector with CAA's at the hook (mean over targets;
            ``None`` for a method without a vector: unsteered, prompting, clamp).
    """

    method: str
    budget: float | None
    success: Interval
    kl_mean: float | None = None
    kl_p95: float | None = None
    strength: float | tuple[float | None, ...] | None = None
    reached: bool | None = None
    mmlu: Interval | None = None
    mmlu_change: float | None = None
    selectivity: Interval | None = None
    perplexity: Interval | None = None
    transfer: Mapping[str, Mapping[str, float]] | None = field(default=None, repr=False)
    n_generations: int | None = None
    top1: Interval | None = None
    n_test_pairs: int | None = None
    outcomes: tuple[float, ...] | None = field(default=None, repr=False)
    success_fluent: Interval | None = None
    cosine: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.method, str) or not self.method:
            raise ValueError(f"a cell's method must be a non-empty name, got {self.method!r}")
        if self.budget is not None and not (isinstance(self.budget, float) and 0 < self.budget < math.inf):
            raise ValueError(
                f"cell {self.method!r}: budget must be a finite float > 0 or None, got {self.budget!r}"
            )
        calibration = {k: getattr(self, k) for k in ("kl_mean", "kl_p95", "reached")}
        if self.method == "unsteered":
            given = [k for k, v in {**calibration, "strength": self.strength}.items() if v is not None]
            if self.budget is not None or given:
                raise ValueError(
                    f"the unsteered cell has no budget and no calibration, got budget={self.budget!r} "
                    f"and {given}"
                )
        elif any(v is None for v in calibration.values()):
            missing = [k for k, v in calibration.items() if v is None]
            raise ValueError(f"cell {self.label!r} is calibrated: it needs {missing}")
        if self.transfer is not None:
            object.__setattr__(self, "transfer", {t: dict(row) for t, row in self.transfer.items()})
        if self.outcomes is not None:
            values = tuple(float(v) for v in self.outcomes)
            if not values or not all(math.isfinite(v) for v in values):
                raise ValueError(f"cell {self.label!r}: outcomes must be finite numbers, one per unit")
            object.__setattr__(self, "outcomes", values)

    @property
    def key(self) -> CellKey:
        """``(method, budget)``, its key in a result's cells."""
        return (self.method, self.budget)

    @property
    def label(self) -> str:
        """``"caa@0.5"``, or the method alone without a budget (``"prompting"``, ``"unsteered"``)."""
        return self.method if self.budget is None else f"{self.method}@{self.budget}"


@dataclass(frozen=True)
class ReplySetting:
    """Calibration where a class set's test steers: user messages in the chat turn, fixed replies.

    ``replies`` are the unsteered model's own sampled replies to ``prompts`` (made once by
    :meth:`sample`, with the test's temperature and length); a method's KL is measured over them,
    steered from the prompt's last token on, with an instruction inside the user turn
    (:func:`~tlsteer.eval.budget.reply_kl_stats`). The prompts must be disjoint from the test's.
    """

    prompts: tuple[str, ...]
    replies: tuple[tuple[int, ...], ...] = field(repr=False)
    _kl_cache: dict = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def kl_cache(self, model: HookedTransformer) -> dict:
        """What every measurement on this setting shares, kept between methods: the unsteered
        prompts' KV cache and log-probabilities on ``model`` (made again after any of its
        parameters changes, as an in-place weight edit does)."""
        stamp = (id(model), tuple((p.data_ptr(), p._version) for p in model.parameters()))
        if self._kl_cache.get("stamp") != stamp:
            self._kl_cache.clear()
            self._kl_cache["stamp"] = stamp
        return self._kl_cache

    def __getstate__(self) -> dict:  # a worker gets the setting, not this process's cache
        return {"prompts": self.prompts, "replies": self.replies, "_kl_cache": {}}

    def __setstate__(self, state: dict) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, value)

    def __post_init__(self) -> None:
        if not self.prompts or len(self.prompts) != len(self.replies):
            raise ValueError(
                f"a reply setting needs one reply per prompt, got {len(self.prompts)} prompts and "
                f"{len(self.replies)} replies"
            )
        empty = [i for i, r in enumerate(self.replies) if not r]
        if empty:
            raise ValueError(f"reply {empty[0]} is empty; sample longer replies")

    @classmethod
    def sample(
        cls,
        model: HookedTransformer,
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        temperature: float = 0.7,
        seed: int = 0,
        batch_size: int = 32,
    ) -> ReplySetting:
        """The unsteered model's sampled replies to ``prompts`` (row ``i`` seeded ``seed + i``)."""
        out = generate_tokens(
            model,
            list(prompts),
            Steering(),
            max_new_tokens=max_new_tokens,
            do_sample=True,
            temperature=temperature,
            seed=[seed + i for i in range(len(prompts))],
            chat=True,
            batch_size=batch_size,
        )
        return cls(tuple(prompts), tuple(tuple(int(t) for t in n) for n in out.new_tokens))


def _kl(
    model: HookedTransformer, steering: Steering, neutral: Any, batch_size: int, cache: Any = None
) -> Any:
    if isinstance(neutral, ReplySetting):
        return reply_kl_stats(
            model,
            steering,
            prompts=list(neutral.prompts),
            replies=[list(r) for r in neutral.replies],
            batch_size=batch_size,
            cache=cache,
        )
    # steered and measured from position 1 on (position 0 is an attention sink)
    return kl_stats(
        model,
        steering.at(Positions.start_at(1)),
        prompts=list(neutral),
        measure_from=1,
        batch_size=batch_size,
        cache=cache,
    )


def calibrate_method(
    model: HookedTransformer,
    method: Method,
    neutral: Any,
    budgets: Sequence[float],
    *,
    high: float = 4.0,
    batch_size: int = 32,
) -> dict[float, dict[str, Any]]:
    """Per budget: the strength whose mean KL on ``neutral`` meets it, and the KL stats there.

    ``neutral`` is a list of neutral texts (steered and measured at every position from 1 on) or
    a :class:`ReplySetting` (the chat turn, steered from the prompt's last token on, measured over
    fixed replies: the setting a class set's generations are tested in).

    Evaluations are shared between budgets, and each search starts from a guess (secant steps of
    :func:`~tlsteer.eval.budget.calibrate_to_kl`). Prompting has no strength: its KL is measured once
    and reported for every budget (``reached`` says whether it is within 10% of the budget).
    """
    shared = neutral.kl_cache(model) if isinstance(neutral, ReplySetting) else {}
    if not method.has_strength:
        stats = _kl(model, method.at(None), neutral, batch_size, shared)
        return {
            b: {
                "strength": None,
                "kl_mean": stats.mean,
                "kl_p95": stats.p95,
                "reached": abs(stats.mean / b - 1) <= 0.1,
            }
            for b in budgets
        }
    memo: dict[float, Any] = {}
    clean = shared

    def stats_at(strength: float) -> Any:
        if strength not in memo:
            memo[strength] = _kl(model, method.at(strength), neutral, batch_size, clean)
        return memo[strength]

    high = high * 10 if method.kind == "clamp" else high
    # a first guess near where methods land (a quarter of the residual norm, or 2.5 typical
    # activations), then the previous budget's strength scaled as if KL grew as its square
    start, previous = (2.5 if method.kind == "clamp" else 0.25), None
    out = {}
    for b in sorted(budgets):
        if previous is not None and previous[1] > 0:
            start = previous[1] * (b / previous[0]) ** 0.5
        cal = calibrate_to_kl(lambda s: stats_at(s).mean, b, high=high, start=start)
        previous = (b, cal.strength)
        stats = stats_at(cal.strength)
        out[b] = {
            "strength": cal.strength,
            "kl_mean": stats.mean,
            "kl_p95": stats.p95,
            "reached": cal.reached,
        }
    return out


def interval(values: Any, n_resamples: int, statistic: Any = np.mean) -> Interval:
    """A cell's rate: the statistic of ``values`` and its seeded 95% bootstrap interval."""
    est, low, high = bootstrap_ci(
        np.asarray(values, dtype=float), n_resamples=n_resamples, statistic=statistic
    )
    return Interval(float(est), float(low), float(high))


def cell_steerings(
    methods: Mapping[str, Method], calibrations: Mapping[str, Mapping[float, Mapping[str, Any]]]
) -> dict[CellKey, tuple[Steering, Mapping[str, Any]]]:
    """``{(method, budget): (steering, calibration)}``; a method without a strength (prompting) is
    measured once, under ``(method, None)``, with its first budget's calibration."""
    cells: dict[CellKey, tuple[Steering, Mapping[str, Any]]] = {}
    for name, method in methods.items():
        for b, cal in calibrations[name].items():
            key = (name, float(b)) if method.has_strength else (name, None)
            if key not in cells:
                cells[key] = (method.at(cal["strength"]) if method.has_strength else method.at(None), cal)
    return cells


def calibration_fields(cal: Mapping[str, Any]) -> dict[str, Any]:
    """A calibration (:func:`calibrate_method`'s per-budget dict) as a :class:`Cell`'s fields."""
    strength = cal["strength"]
    return {
        "strength": None if strength is None else float(strength),
        "kl_mean": float(cal["kl_mean"]),
        "kl_p95": float(cal["kl_p95"]),
        "reached": bool(cal["reached"]),
    }
