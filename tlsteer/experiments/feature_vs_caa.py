"""One call that compares feature steering with raw CAA on a dataset, at matched side effects.

:func:`feature_vs_caa` takes a model, an SAE, a dataset and a method list. The dataset is a
:class:`~tlsteer.ClassDataset` (steer toward each class; generations judged by the set's K-class
judge: :mod:`tlsteer.experiments.class_task`), an :class:`~tlsteer.experiments.ab_task.ABTask`
(CAA contrast pairs and held-out A/B items) or an
:class:`~tlsteer.experiments.analogy_task.AnalogyTask`. Every method is built from the dataset's
training data at the SAE's hook (:func:`~tlsteer.experiments.methods.build_methods`), calibrated
to each KL budget on neutral text, and scored on test data with bootstrap intervals
(:mod:`tlsteer.experiments.cells`). The result is a JSON-ready dict; with ``out_dir`` it is
written there with its figures (:mod:`tlsteer.experiments.comparison_plots`). Progress goes to the
logger ``tlsteer.experiments.feature_vs_caa`` at level INFO.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from transformer_lens import HookedTransformer

from tlsteer._types import is_int
from tlsteer.classes import ClassDataset
from tlsteer.data import ABItem, load_neutral_text, load_open_prompts
from tlsteer.errors import closest, format_options
from tlsteer.eval.judge import Embedder
from tlsteer.eval.sweeps import residual_norms
from tlsteer.experiments.ab_task import ABTask, run_ab_task
from tlsteer.experiments.analogy_task import AnalogyTask, contrast_from_analogy, run_analogy_task
from tlsteer.experiments.cells import calibrate_method
from tlsteer.experiments.class_task import run_class_task
from tlsteer.experiments.contrasts import contrast_from_pairs, contrast_from_profile
from tlsteer.experiments.methods import METHODS, build_methods
from tlsteer.sae.adapter import SAELike, check_sae
from tlsteer.sae.classes import class_profile
from tlsteer.sae.selection import feature_stats

__all__ = ["applicable_methods", "builtin_instructions", "feature_vs_caa"]

LOG = logging.getLogger(__name__)


def builtin_instructions() -> dict[str, Any]:
    """The prompting baseline's instructions: per built-in class set, per class; per CAA behaviour."""
    data = json.loads((resources.files("tlsteer") / "datasets" / "instructions.json").read_text())
    data.pop("description", None)
    return data


def _inapplicable(dataset: Any, instructions: Mapping[str, str] | None) -> dict[str, str]:
    """``{method: why it does not apply to dataset}``."""
    why = {}
    if not isinstance(dataset, ClassDataset):
        why["mean_centred"] = "it has two sides (positive and negative), not K class means"
    if isinstance(dataset, ClassDataset) and instructions is None:
        why["prompting"] = "it has no built-in instructions; pass instructions={class: text}"
    elif not isinstance(dataset, ClassDataset) and dataset.instruction is None:
        why["prompting"] = f"it has no instruction; give one ({type(dataset).__name__}(..., instruction=...))"
    return why


def _describe(dataset: Any) -> str:
    return f"{type(dataset).__name__} {dataset.name!r}"


def applicable_methods(dataset: Any, instructions: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The method families of :data:`~tlsteer.experiments.methods.METHODS` that apply to ``dataset``.

    ``mean_centred`` needs a class set (K class means); ``prompting`` needs an instruction (a class
    set's ``instructions`` or its built-in ones; an ABTask's or AnalogyTask's own). This is the
    default method list of :func:`feature_vs_caa`.

    Example:
        >>> applicable_methods(ABTask("toy", pairs, items))  # doctest: +SKIP
        ('caa', 'feature_full', 'feature_topk', 'feature_output', 'single_feature', 'clamp', ...)
    """
    _check_dataset(dataset)
    if isinstance(dataset, ClassDataset) and instructions is None:
        instructions = builtin_instructions().get(dataset.name)
    why = _inapplicable(dataset, instructions)
    return tuple(m for m in METHODS if m not in why)


def _check_dataset(dataset: Any) -> None:
    if not isinstance(dataset, (ClassDataset, ABTask, AnalogyTask)):
        raise TypeError(
            f"dataset must be a ClassDataset, an ABTask or an AnalogyTask, got {type(dataset).__name__}"
        )


def _check_methods(methods: Any, dataset: Any, instructions: Mapping[str, str] | None) -> list[str]:
    """The requested methods, each known and applicable to ``dataset``, else an error naming it."""
    why = _inapplicable(dataset, instructions)
    valid = [m for m in METHODS if m not in why]
    if methods is None:
        return valid
    options = f"valid for {_describe(dataset)}: {format_options(valid, len(valid))}"
    if isinstance(methods, (str, bytes)) or not isinstance(methods, Sequence):
        raise TypeError(f"methods must be a list of method names, got {methods!r}; {options}")
    if not methods:
        raise ValueError(f"methods is empty; {options}")
    for m in methods:
        if m not in METHODS:
            near = closest(str(m), METHODS)
            hint = f" (closest: {near[0]!r})" if near else ""
            raise ValueError(f"unknown method {m!r}{hint}; {options}")
        if m in why:
            raise ValueError(f"method {m!r} does not apply to {_describe(dataset)}: {why[m]}; {options}")
    return list(dict.fromkeys(methods))


def _check_class_only(dataset: Any, **given: Any) -> None:
    """Refuse arguments that only a class set reads, when given for another dataset."""
    for name, value in given.items():
        if value is not None and not isinstance(dataset, ClassDataset):
            raise ValueError(f"{name}= applies to a ClassDataset only, not to {_describe(dataset)}")


def feature_vs_caa(
    model: HookedTransformer,
    sae: SAELike,
    dataset: Any,
    *,
    methods: Sequence[str] | None = None,
    budgets: Sequence[float] = (0.1, 0.5),
    instructions: Mapping[str, str] | None = None,
    prompts: Sequence[str] | None = None,
    n_prompts: int = 32,
    targets: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    split_seed: int = 0,
    max_new_tokens: int = 24,
    neutral: Sequence[str] | None = None,
    mmlu: Sequence[ABItem] | None = None,
    n_resamples: int = 1000,
    ks: Sequence[int] = (8, 32),
    out_dir: str | Path | None = None,
    hook_name: str | None = None,
    embedder: Embedder | None = None,
) -> dict[str, Any]:
    """Compare steering methods on one dataset at matched KL budgets (see the module docstring).

    Args:
        model, sae: The model and an SAE that fits it; everything happens at the SAE's hook.
        dataset: A :class:`~tlsteer.ClassDataset` (its training split builds the vectors), an
            :class:`~tlsteer.experiments.ab_task.ABTask`, or an
            :class:`~tlsteer.experiments.analogy_task.AnalogyTask` (top-k accuracy of the answer's
            first token; no MMLU).
        methods: Method families of :data:`~tlsteer.experiments.methods.METHODS` (default: every
            one that applies to the dataset, :func:`applicable_methods`). A method that is unknown
            or does not apply (``mean_centred`` to an ABTask or AnalogyTask, which have two sides;
            ``prompting`` without an instruction) is refused with an error naming the valid ones.
        budgets: Mean per-token KL budgets (nats) on neutral text.
        instructions: For a class set, ``{class: instruction}`` (default: the built-in ones for a
            built-in set); an ABTask or AnalogyTask carries its own.
        prompts: Open prompts for class-set generations (default: the built-in open prompts,
            the second half; ``n_prompts`` of them, split evenly across the targets).
        targets: For a class set, the classes to steer toward (default: all; each is still
            built against all the other classes and judged among all of them).
        seeds: One sampled generation per prompt per seed.
        split_seed: For a class set, the seed of its train/validation/test split
            (:meth:`~tlsteer.ClassDataset.split`); the training split builds the methods. An
            AnalogyTask carries its own seed; an ABTask has no split.
        neutral: Neutral texts for calibration, residual norm and feature statistics.
        mmlu: A/B items whose accuracy is a side effect at each cell's strength (not for an
            AnalogyTask).
        ks: The ``k`` of the ``feature_top<k>`` methods.
        out_dir: Write ``feature_vs_caa_<name>.json`` and figures there.
        hook_name: Where the SAE reads, if its metadata does not say.
        embedder: For a class set, the sentence embedder of its judge
            (:func:`tlsteer.eval.judge.class_judge`; default: all-MiniLM-L6-v2).

    Each stage is logged with its elapsed time at level INFO (logger
    ``tlsteer.experiments.feature_vs_caa``; ``logging.getLogger("tlsteer").setLevel("INFO")``
    with a handler shows it).

    Example:
        >>> result = feature_vs_caa(model, sae, load_class_dataset("speaking_styles"))  # doctest: +SKIP
        >>> result["cells"]["caa@0.1"]["success"]  # doctest: +SKIP
    """
    start = time.perf_counter()

    def log(message: str) -> None:
        LOG.info("[%7.1f s] %s", time.perf_counter() - start, message)

    _check_dataset(dataset)
    _check_class_only(dataset, instructions=instructions, prompts=prompts, targets=targets, embedder=embedder)
    if not is_int(split_seed):
        raise TypeError(f"split_seed must be an int, got {split_seed!r}")
    if split_seed != 0 and not isinstance(dataset, ClassDataset):
        own = (
            "carries its own seed (AnalogyTask(seed=...))"
            if isinstance(dataset, AnalogyTask)
            else "has no split"
        )
        raise ValueError(
            f"split_seed applies to a ClassDataset only; {type(dataset).__name__} {dataset.name!r} {own}"
        )
    if mmlu is not None and isinstance(dataset, AnalogyTask):
        raise ValueError(f"mmlu= does not apply to AnalogyTask {dataset.name!r} (top-k accuracy only)")
    if isinstance(dataset, ClassDataset) and instructions is None:
        instructions = builtin_instructions().get(dataset.name)
    methods = _check_methods(methods, dataset, instructions)
    hook = check_sae(model, sae, hook_name)
    neutral = list(neutral or load_neutral_text())
    budgets = [float(b) for b in budgets]
    if not budgets or any(not (b > 0 and b < float("inf")) for b in budgets):
        raise ValueError(f"budgets must be finite numbers > 0, got {list(budgets)}")
    scale = residual_norms(model, neutral, [hook])[hook]
    stats = feature_stats(model, sae, neutral, hook_name=hook)
    settings = {
        "hook": hook,
        "methods": methods,
        "budgets": budgets,
        "residual_norm": scale,
        "seeds": list(seeds),
        "max_new_tokens": max_new_tokens,
        "n_neutral": len(neutral),
        "n_resamples": n_resamples,
    }
    common = {"scale": scale, "stats": stats, "ks": ks}
    if isinstance(dataset, ClassDataset):
        settings["split_seed"] = int(split_seed)
        result = _class_set(
            model,
            sae,
            hook,
            dataset,
            methods,
            budgets,
            instructions=instructions,
            prompts=prompts,
            n_prompts=n_prompts,
            targets=targets,
            seeds=seeds,
            split_seed=int(split_seed),
            max_new_tokens=max_new_tokens,
            neutral=neutral,
            mmlu=mmlu,
            n_resamples=n_resamples,
            log=log,
            embedder=embedder,
            **common,
        )
    else:
        if isinstance(dataset, AnalogyTask):
            reps = contrast_from_analogy(model, sae, dataset, hook)
        else:
            reps = contrast_from_pairs(model, sae, dataset.train_pairs, hook)
        built = build_methods(
            model, sae, hook, reps, scale, stats, instruction=dataset.instruction, methods=methods, ks=ks
        )
        log(f"{dataset.name}: {len(built)} methods built")
        calibrations = {n: calibrate_method(model, m, neutral, budgets) for n, m in built.items()}
        log(f"{dataset.name}: calibrated")
        if isinstance(dataset, AnalogyTask):
            result = run_analogy_task(model, built, calibrations, dataset, n_resamples=n_resamples)
        else:
            result = run_ab_task(
                model, built, calibrations, dataset.test_items, n_resamples=n_resamples, mmlu=mmlu
            )
            result["n_train_pairs"] = len(dataset.train_pairs)
            result["n_test_items"] = len(dataset.test_items)
    name = dataset.name
    result = {
        "dataset": name,
        "settings": settings,
        **result,
        "seconds": round(time.perf_counter() - start, 1),
    }
    log(f"{name}: done")
    if out_dir is not None:
        from tlsteer.experiments.comparison_plots import plot_comparison, plot_transfer_grid

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"feature_vs_caa_{name}.json").write_text(json.dumps(result, indent=1) + "\n")
        plot_comparison(result, path=out / f"feature_vs_caa_{name}.png")
        if "classes" in result:
            plot_transfer_grid(result, path=out / f"feature_vs_caa_{name}_transfer.png")
    return result


def _class_set(
    model: HookedTransformer,
    sae: SAELike,
    hook: str,
    dataset: ClassDataset,
    methods: list[str],
    budgets: list[float],
    *,
    instructions: Mapping[str, str] | None,
    prompts: Sequence[str] | None,
    n_prompts: int,
    targets: Sequence[str] | None,
    seeds: Sequence[int],
    split_seed: int,
    max_new_tokens: int,
    neutral: list[str],
    mmlu: Sequence[ABItem] | None,
    n_resamples: int,
    scale: float,
    stats: Any,
    ks: Sequence[int],
    log: Any,
    embedder: Embedder | None,
) -> dict[str, Any]:
    targets = list(dataset.classes) if targets is None else list(targets)
    unknown = [t for t in targets if t not in dataset.classes]
    if unknown or not targets or len(set(targets)) < len(targets):
        raise ValueError(f"targets must be distinct classes of {list(dataset.classes)}, got {targets}")
    missing = [c for c in targets if "prompting" in methods and c not in (instructions or {})]
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

    train, _, _ = dataset.split(seed=split_seed)
    profile = class_profile(model, sae, train, n_bootstrap=0, hook_name=hook)
    judge = class_judge(dataset, embedder)
    log(f"{dataset.name}: profile and judge (held-out accuracy {judge.held_out_accuracy:.3f})")
    built, calibrations, by_class = {}, {}, {}
    for i, c in enumerate(targets):
        reps = contrast_from_profile(profile, c)
        built[c] = build_methods(
            model,
            sae,
            hook,
            reps,
            scale,
            stats,
            instruction=(instructions or {}).get(c),
            methods=methods,
            ks=ks,
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
            seeds=seeds,
            max_new_tokens=max_new_tokens,
            n_resamples=n_resamples,
            mmlu=mmlu,
        )
    result["judge_held_out_accuracy"] = judge.held_out_accuracy
    result["judge_flagged"] = judge.flagged
    result["features"] = {
        c: {"clamp": list(built[c]["clamp"].features)} for c in targets if "clamp" in built[c]
    }
    return result
