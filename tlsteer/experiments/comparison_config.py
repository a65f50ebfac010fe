"""The settings of one feature-vs-CAA comparison run: :class:`ComparisonConfig`.

A config holds what a run is asked to do, as plain values that a results file records (its
``"settings"``): the methods, the KL budgets, how many prompts and seeds, the split, the bootstrap.
The data and the objects a run uses (the model, the SAE, the dataset, neutral texts, MMLU items,
instructions, open prompts, the judge's embedder) are arguments of
:func:`~tlsteer.experiments.feature_vs_caa.feature_vs_caa`, not settings. Every value is checked
when the config is made, each error naming the bad value and what would be valid; whether a method
or a setting applies to a dataset is checked when the run starts, since only then is the dataset
known.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tlsteer._types import is_int
from tlsteer.errors import closest, format_options
from tlsteer.experiments.methods import METHODS

__all__ = ["ComparisonConfig"]


def _sequence(name: str, value: Any, what: str) -> tuple[Any, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a list of {what}, got {value!r}")
    if not value:
        raise ValueError(f"{name} is empty; give at least one of {what}")
    return tuple(value)


def _distinct(name: str, values: tuple[Any, ...]) -> None:
    repeated = [v for i, v in enumerate(values) if v in values[:i]]
    if repeated:
        raise ValueError(f"{name} repeats {repeated[0]!r}: {list(values)}")


def _check_methods(methods: Any) -> tuple[str, ...] | None:
    if methods is None:
        return None
    valid = f"valid: {format_options(METHODS, len(METHODS))}"
    if isinstance(methods, (str, bytes)) or not isinstance(methods, Sequence):
        raise TypeError(f"methods must be a list of method names, got {methods!r}; {valid}")
    if not methods:
        raise ValueError(f"methods is empty; leave it None for every method that applies, or pick of {valid}")
    for m in methods:
        if m not in METHODS:
            near = closest(str(m), METHODS)
            hint = f" (closest: {near[0]!r})" if near else ""
            raise ValueError(f"unknown method {m!r}{hint}; {valid}")
    methods = tuple(methods)
    _distinct("methods", methods)
    return methods


def _check_int(name: str, value: Any, minimum: int | None) -> int:
    if not is_int(value) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise ValueError(f"{name} must be an int{bound}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class ComparisonConfig:
    """What one comparison run does (see the module docstring); frozen, checked when made.

    Attributes:
        methods: Method families of :data:`~tlsteer.experiments.methods.METHODS`; ``None`` (the
            default) runs every one that applies to the dataset
            (:func:`~tlsteer.experiments.feature_vs_caa.applicable_methods`). A run refuses a
            method that does not apply (``mean_centred`` without classes, ``prompting`` without an
            instruction), naming those that do. A result holds the list that ran.
        budgets: Mean per-token KL budgets on neutral text (nats), each finite and > 0; every
            method with a strength is calibrated to each.
        n_prompts: Class sets: test prompts; every target is steered toward on every one of them
            (the paired design: the same (target, prompt) units for every method).
        targets: Class sets: the classes to steer toward (``None``: all); each is still built
            against all the other classes and judged among all of them.
        seeds: Class sets: one sampled generation per prompt, target and seed.
        split_seed: Class sets: the seed of the train/validation/test split
            (:meth:`~tlsteer.ClassDataset.split`); an AnalogyTask carries its own seed and an
            ABTask has no split, so for them it must stay 0.
        max_new_tokens: Class sets: tokens generated per prompt.
        n_resamples: Bootstrap resamples of every interval (>= 100).
        ks: The ``k`` of each ``feature_top<k>`` method (the ``feature_topk`` family) and of
            each ``caa_proj_top<k>`` (the ``caa_projected`` family).
        calibration: Class sets: where the KL budget is met. ``"reply"`` (the default): in the
            test's own setting, ``n_calibration_prompts`` user messages (disjoint from the test
            prompts) in the chat turn, steered from the last prompt token on, KL over the
            unsteered model's sampled replies (:class:`~tlsteer.experiments.cells.ReplySetting`);
            ``"neutral"``: every position of neutral text (the runs before the verdict plan).
            Other datasets calibrate on neutral text.
        n_calibration_prompts: Class sets, ``calibration="reply"``: calibration prompts.
        n_random: Class sets: random directions per target (``random.<j>``, spread over the
            test prompts; 1 gives the single method ``random``). A/B and analogy tasks use one
            random direction.

    ``n_prompts``, ``targets``, ``seeds`` and ``max_new_tokens`` are read by class sets only (a
    run on another dataset refuses ``targets``); all are recorded in a result's settings.

    Example:
        >>> config = ComparisonConfig(methods=["caa", "feature_full", "prompting"], budgets=[0.5])
        >>> config.budgets, config.seeds
        ((0.5,), (0,))
        >>> ComparisonConfig(budgets=[0.5, -1])
        Traceback (most recent call last):
        ...
        ValueError: budgets must be finite numbers > 0 (mean KL in nats), got [0.5, -1]
    """

    # checked (and normalized to tuples) in __post_init__, so annotated loosely for runtime checkers
    methods: Any = None  # tuple[str, ...] | None
    budgets: Any = (0.1, 0.5)  # tuple[float, ...]
    n_prompts: Any = 32  # int
    targets: Any = None  # tuple[str, ...] | None
    seeds: Any = (0,)  # tuple[int, ...]
    split_seed: Any = 0  # int
    max_new_tokens: Any = 24  # int
    n_resamples: Any = 1000  # int
    ks: Any = (8, 32)  # tuple[int, ...]
    calibration: Any = "reply"  # "reply" | "neutral"
    n_calibration_prompts: Any = 32  # int
    n_random: Any = 8  # int

    def __post_init__(self) -> None:
        budgets = _sequence("budgets", self.budgets, "KL budgets (nats), e.g. [0.1, 0.5]")
        if any(
            isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 < b < math.inf for b in budgets
        ):
            raise ValueError(f"budgets must be finite numbers > 0 (mean KL in nats), got {list(budgets)}")
        budgets = tuple(float(b) for b in budgets)
        _distinct("budgets", budgets)
        targets = self.targets
        if targets is not None:
            targets = _sequence("targets", targets, "class names")
            bad = [t for t in targets if not isinstance(t, str) or not t.strip()]
            if bad:
                raise ValueError(f"targets must be class names, got {bad[0]!r} in {list(targets)}")
            _distinct("targets", targets)
        seeds = _sequence("seeds", self.seeds, "int seeds, e.g. [0, 1, 2]")
        bad_seed = [s for s in seeds if not is_int(s) or s < 0]
        if bad_seed:
            raise ValueError(f"seeds must be ints >= 0, got {bad_seed[0]!r} in {list(seeds)}")
        seeds = tuple(int(s) for s in seeds)
        _distinct("seeds", seeds)
        ks = _sequence("ks", self.ks, "ints >= 1 (the k of each feature_top<k> method)")
        bad_k = [k for k in ks if not is_int(k) or k < 1]
        if bad_k:
            raise ValueError(
                f"ks must be ints >= 1 (the k of each feature_top<k>), got {bad_k[0]!r} in {list(ks)}"
            )
        ks = tuple(int(k) for k in ks)
        _distinct("ks", ks)
        if not is_int(self.split_seed):
            raise TypeError(f"split_seed must be an int, got {self.split_seed!r}")
        values = {
            "methods": _check_methods(self.methods),
            "budgets": budgets,
            "n_prompts": _check_int("n_prompts", self.n_prompts, 1),
            "targets": targets,
            "seeds": seeds,
            "split_seed": int(self.split_seed),
            "max_new_tokens": _check_int("max_new_tokens", self.max_new_tokens, 1),
            "n_resamples": _check_int("n_resamples", self.n_resamples, 100),
            "ks": ks,
            "calibration": self.calibration,
            "n_calibration_prompts": _check_int("n_calibration_prompts", self.n_calibration_prompts, 1),
            "n_random": _check_int("n_random", self.n_random, 1),
        }
        if self.calibration not in ("reply", "neutral"):
            raise ValueError(f"calibration must be 'reply' or 'neutral', got {self.calibration!r}")
        for name, value in values.items():
            object.__setattr__(self, name, value)
