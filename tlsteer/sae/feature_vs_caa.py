"""One call that compares feature steering with raw CAA on a dataset, at matched side effects.

:func:`feature_vs_caa` takes a model, an SAE, a dataset and a method list. The dataset is a
:class:`~tlsteer.ClassDataset` (steer toward each class; generations judged by the set's K-class
judge) or an :class:`ABTask` (CAA contrast pairs and held-out A/B items). Every method is built
from the dataset's training data at the SAE's hook (:func:`~tlsteer.sae.methods.build_methods`),
calibrated to each KL budget on neutral text, and scored on test data with bootstrap intervals
(:mod:`tlsteer.sae.compare`). The result is a JSON-ready dict; with ``out_dir`` it is written
there with its figures (:mod:`tlsteer.eval.compare_plots`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from transformer_lens import HookedTransformer

from tlsteer.classes import ClassDataset
from tlsteer.data import ABItem, ContrastPair, load_neutral_text, load_open_prompts
from tlsteer.eval.sweeps import residual_norms
from tlsteer.sae.adapter import SAELike, check_sae
from tlsteer.sae.analogy_task import AnalogyTask, contrast_from_analogy, run_analogy_task
from tlsteer.sae.class_task import run_class_task
from tlsteer.sae.classes import class_profile
from tlsteer.sae.compare import (
    calibrate_method,
    contrast_from_pairs,
    contrast_from_profile,
    run_ab_task,
)
from tlsteer.sae.methods import METHODS, build_methods
from tlsteer.sae.selection import feature_stats

__all__ = ["ABTask", "builtin_instructions", "feature_vs_caa"]

LOG = logging.getLogger("tlsteer")


@dataclass(frozen=True)
class ABTask:
    """A CAA behaviour: training contrast pairs, held-out A/B items and a prompting instruction."""

    name: str
    train_pairs: Sequence[ContrastPair]
    test_items: Sequence[ABItem]
    instruction: str | None = None

    def __post_init__(self) -> None:
        if len(self.train_pairs) < 2 or len(self.test_items) < 2:
            raise ValueError(
                f"{self.name}: needs at least 2 training pairs and 2 test items, "
                f"got {len(self.train_pairs)} and {len(self.test_items)}"
            )


def builtin_instructions() -> dict[str, Any]:
    """The prompting baseline's instructions: per built-in class set, per class; per CAA behaviour."""
    data = json.loads((resources.files("tlsteer") / "datasets" / "instructions.json").read_text())
    data.pop("description", None)
    return data


def feature_vs_caa(
    model: HookedTransformer,
    sae: SAELike,
    dataset: Any,
    methods: Sequence[str] = METHODS,
    budgets: Sequence[float] = (0.1, 0.5),
    instructions: Mapping[str, str] | None = None,
    prompts: Sequence[str] | None = None,
    n_prompts: int = 32,
    targets: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    max_new_tokens: int = 24,
    neutral: Sequence[str] | None = None,
    mmlu: Sequence[ABItem] | None = None,
    n_resamples: int = 1000,
    ks: Sequence[int] = (8, 32),
    out_dir: str | Path | None = None,
    hook_name: str | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Compare steering methods on one dataset at matched KL budgets (see the module docstring).

    Args:
        model, sae: The model and an SAE that fits it; everything happens at the SAE's hook.
        dataset: A :class:`~tlsteer.ClassDataset` (its training split builds the vectors), an
            :class:`ABTask`, or an :class:`~tlsteer.sae.analogy_task.AnalogyTask` (top-k accuracy
            of the answer's first token; no MMLU).
        methods: Method families of :data:`~tlsteer.sae.methods.METHODS` (``mean_centred`` is
            dropped for an ABTask, which has only two sides).
        budgets: Mean per-token KL budgets (nats) on neutral text.
        instructions: For a class set, ``{class: instruction}`` (default: the built-in ones for a
            built-in set); an ABTask carries its own.
        prompts: Open prompts for class-set generations (default: the built-in open prompts,
            the second half; ``n_prompts`` of them, split evenly across the targets).
        targets: For a class set, the classes to steer toward (default: all; each is still
            built against all the other classes and judged among all of them).
        seeds: One sampled generation per prompt per seed.
        neutral: Neutral texts for calibration, residual norm and feature statistics.
        mmlu: A/B items whose accuracy is a side effect at each cell's strength.
        ks: The ``k`` of the ``feature_top<k>`` methods.
        out_dir: Write ``feature_vs_caa_<name>.json`` and figures there.
        verbose: Log each stage with its elapsed time (logger ``tlsteer``, level WARNING, so
            that it shows without logging set up).

    Example:
        >>> result = feature_vs_caa(model, sae, load_class_dataset("speaking_styles"))  # doctest: +SKIP
        >>> result["cells"]["caa@0.1"]["success"]  # doctest: +SKIP
    """
    start = time.perf_counter()

    def log(message: str) -> None:
        if verbose:
            LOG.warning("[%7.1f s] %s", time.perf_counter() - start, message)

    if not isinstance(dataset, (ClassDataset, ABTask, AnalogyTask)):
        raise TypeError(
            f"dataset must be a ClassDataset, an ABTask or an AnalogyTask, got {type(dataset).__name__}"
        )
    hook = check_sae(model, sae, hook_name)
    neutral = list(neutral or load_neutral_text())
    budgets = [float(b) for b in budgets]
    if not budgets or any(not (b > 0 and b < float("inf")) for b in budgets):
        raise ValueError(f"budgets must be finite numbers > 0, got {list(budgets)}")
    scale = residual_norms(model, neutral, [hook])[hook]
    stats = feature_stats(model, sae, neutral, hook_name=hook)
    settings = {
        "hook": hook,
        "budgets": budgets,
        "residual_norm": scale,
        "seeds": list(seeds),
        "max_new_tokens": max_new_tokens,
        "n_neutral": len(neutral),
        "n_resamples": n_resamples,
    }
    if isinstance(dataset, ClassDataset):
        result = _class_set(
            model,
            sae,
            hook,
            dataset,
            methods,
            budgets,
            instructions,
            prompts,
            n_prompts,
            targets,
            seeds,
            max_new_tokens,
            neutral,
            mmlu,
            n_resamples,
            ks,
            scale,
            stats,
            log,
        )
        name = dataset.name
    elif isinstance(dataset, AnalogyTask):
        chosen = [m for m in methods if m != "mean_centred" and (m != "prompting" or dataset.instruction)]
        reps = contrast_from_analogy(model, sae, dataset, hook)
        built = build_methods(model, sae, hook, reps, scale, stats, dataset.instruction, chosen, ks)
        log(f"{dataset.name}: {len(built)} methods built")
        calibrations = {n: calibrate_method(model, m, neutral, budgets) for n, m in built.items()}
        log(f"{dataset.name}: calibrated")
        result = run_analogy_task(model, built, calibrations, dataset, n_resamples)
        name = dataset.name
    else:
        chosen = [m for m in methods if m != "mean_centred"]
        reps = contrast_from_pairs(model, sae, dataset.train_pairs, hook)
        built = build_methods(
            model,
            sae,
            hook,
            reps,
            scale,
            stats,
            dataset.instruction,
            [m for m in chosen if m != "prompting" or dataset.instruction],
            ks,
        )
        log(f"{dataset.name}: {len(built)} methods built")
        calibrations = {n: calibrate_method(model, m, neutral, budgets) for n, m in built.items()}
        log(f"{dataset.name}: calibrated")
        result = run_ab_task(model, built, calibrations, dataset.test_items, n_resamples, mmlu)
        result["n_train_pairs"], result["n_test_items"] = len(dataset.train_pairs), len(dataset.test_items)
        name = dataset.name
    result = {
        "dataset": name,
        "settings": settings,
        **result,
        "seconds": round(time.perf_counter() - start, 1),
    }
    if out_dir is not None:
        from tlsteer.eval.compare_plots import plot_comparison, plot_transfer_grid

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"feature_vs_caa_{name}.json").write_text(json.dumps(result, indent=1) + "\n")
        plot_comparison(result, path=out / f"feature_vs_caa_{name}.png")
        if "classes" in result:
            plot_transfer_grid(result, path=out / f"feature_vs_caa_{name}_transfer.png")
    return result


def _class_set(
    model,
    sae,
    hook,
    dataset,
    methods,
    budgets,
    instructions,
    prompts,
    n_prompts,
    targets,
    seeds,
    max_new_tokens,
    neutral,
    mmlu,
    n_resamples,
    ks,
    scale,
    stats,
    log,
) -> dict[str, Any]:
    targets = list(dataset.classes) if targets is None else list(targets)
    unknown = [t for t in targets if t not in dataset.classes]
    if unknown or not targets or len(set(targets)) < len(targets):
        raise ValueError(f"targets must be distinct classes of {list(dataset.classes)}, got {targets}")
    if instructions is None and "prompting" in methods:
        instructions = builtin_instructions().get(dataset.name)
        if instructions is None:
            raise ValueError(
                f"{dataset.name!r} has no built-in instructions: pass instructions={{class: text}}"
            )
    missing = [c for c in targets if "prompting" in methods and c not in instructions]
    if missing:
        raise ValueError(f"no instruction for class {missing[0]!r}")
    pool = list(prompts) if prompts is not None else load_open_prompts()[32:]
    per_class = n_prompts // len(targets)
    if per_class < 1 or per_class * len(targets) > len(pool):
        raise ValueError(
            f"n_prompts={n_prompts} must give each of {len(targets)} targets at least 1 prompt "
            f"from {len(pool)} prompts"
        )
    from tlsteer.eval.judge import class_judge

    train, _, _ = dataset.split(seed=0)
    profile = class_profile(model, sae, train, n_bootstrap=0, hook_name=hook)
    judge = class_judge(dataset)
    log(f"{dataset.name}: profile and judge (held-out accuracy {judge.held_out_accuracy:.3f})")
    built, calibrations, by_class = {}, {}, {}
    for i, c in enumerate(targets):
        reps = contrast_from_profile(profile, c)
        built[c] = build_methods(
            model, sae, hook, reps, scale, stats, (instructions or {}).get(c), methods, ks
        )
        calibrations[c] = {n: calibrate_method(model, m, neutral, budgets) for n, m in built[c].items()}
        by_class[c] = pool[i * per_class : (i + 1) * per_class]
        log(f"{dataset.name}: {c}: {len(built[c])} methods built and calibrated")
    with torch.no_grad():
        result = run_class_task(
            model,
            judge,
            built,
            calibrations,
            by_class,
            seeds,
            max_new_tokens,
            n_resamples=n_resamples,
            mmlu=mmlu,
        )
    result["judge_held_out_accuracy"] = judge.held_out_accuracy
    result["judge_flagged"] = judge.flagged
    result["features"] = {
        c: {"clamp": list(built[c]["clamp"].features)} for c in targets if "clamp" in built[c]
    }
    return result
