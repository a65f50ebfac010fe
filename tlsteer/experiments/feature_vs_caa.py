"""One call that compares feature steering with raw CAA on a dataset, at matched side effects.

:func:`feature_vs_caa` takes a model, an SAE, a dataset and a
:class:`~tlsteer.experiments.comparison_config.ComparisonConfig` (the methods, the KL budgets, the
prompts, seeds and split). The dataset is a :class:`~tlsteer.ClassDataset` (steer toward each
class; generations judged by the set's K-class judge: :mod:`tlsteer.experiments.class_task`), an
:class:`~tlsteer.experiments.ab_task.ABTask` (CAA contrast pairs and held-out A/B items) or an
:class:`~tlsteer.experiments.analogy_task.AnalogyTask`. Every method is built from the dataset's
training data at the SAE's hook (:func:`~tlsteer.experiments.methods.build_methods`), calibrated
to each KL budget on neutral text, and scored on test data with bootstrap intervals
(:mod:`tlsteer.experiments.cells`). The answer is a
:class:`~tlsteer.experiments.comparison_result.ComparisonResult` (cells keyed by ``(method,
budget)``; ``to_frame()``, ``to_markdown()``, ``plot()``, ``save()``); with ``out_dir`` it is
written there with its figures. Progress goes to the logger ``tlsteer.experiments.feature_vs_caa``
at level INFO.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from transformer_lens import HookedTransformer

from tlsteer.classes import ClassDataset
from tlsteer.codebook.codebook import Codebook
from tlsteer.data import ABItem, load_heldout_prompts, load_neutral_text
from tlsteer.dictionary import check_feature_dictionary
from tlsteer.errors import format_options
from tlsteer.eval.judge import Embedder
from tlsteer.eval.sweeps import residual_norms
from tlsteer.experiments.ab_task import ABTask, run_ab_task
from tlsteer.experiments.analogy_task import AnalogyTask, contrast_from_analogy, run_analogy_task
from tlsteer.experiments.cells import Cell, CellKey, ReplySetting, calibrate_method
from tlsteer.experiments.class_task import ClassCellsSetup, run_class_task
from tlsteer.experiments.comparison_config import ComparisonConfig
from tlsteer.experiments.comparison_result import ComparisonResult, DatasetKind
from tlsteer.experiments.contrasts import contrast_from_pairs, contrast_from_profile
from tlsteer.experiments.executor import Executor, InProcess
from tlsteer.experiments.methods import CODE_METHODS, METHODS, build_methods
from tlsteer.sae.adapter import SAELike, check_sae
from tlsteer.sae.classes import class_profile
from tlsteer.sae.selection import feature_stats

__all__ = ["applicable_methods", "builtin_instructions", "feature_vs_caa"]

LOG = logging.getLogger(__name__)

GENERATION = {"temperature": 0.7, "batch_size": 32, "max_rows": 128}
"""How a class set's cells generate, in process and in every worker alike (sampling temperature,
rows per generation batch, rows per perplexity pass)."""


def builtin_instructions() -> dict[str, Any]:
    """The prompting baseline's instructions: per built-in class set, per class; per CAA behaviour."""
    data = json.loads((resources.files("tlsteer") / "datasets" / "instructions.json").read_text())
    data.pop("description", None)
    return data


def _inapplicable(
    dataset: Any, instructions: Mapping[str, str] | None, codebook: Any = None
) -> dict[str, str]:
    """``{method: why it does not apply to dataset}``."""
    why = {}
    if codebook is None:
        for m in CODE_METHODS:
            why[m] = (
                "it steers by codebook codes; pass codebook= (a tlsteer.codebook.Codebook at the SAE's hook)"
            )
    if not isinstance(dataset, ClassDataset):
        why["mean_centred"] = "it has two sides (positive and negative), not K class means"
    if isinstance(dataset, ClassDataset) and instructions is None:
        why["prompting"] = "it has no built-in instructions; pass instructions={class: text}"
    elif not isinstance(dataset, ClassDataset) and dataset.instruction is None:
        why["prompting"] = f"it has no instruction; give one ({type(dataset).__name__}(..., instruction=...))"
    return why


def _describe(dataset: Any) -> str:
    return f"{type(dataset).__name__} {dataset.name!r}"


def applicable_methods(
    dataset: Any, instructions: Mapping[str, str] | None = None, codebook: Any = None
) -> tuple[str, ...]:
    """The method families of :data:`~tlsteer.experiments.methods.METHODS` that apply to ``dataset``.

    ``mean_centred`` needs a class set (K class means); ``prompting`` needs an instruction (a class
    set's ``instructions`` or its built-in ones; an ABTask's or AnalogyTask's own); ``codes_add``
    and ``codes_bottleneck`` need a ``codebook``. This is the default method list of
    :func:`feature_vs_caa`.

    Example:
        >>> applicable_methods(ABTask("toy", pairs, items))  # doctest: +SKIP
        ('caa', 'feature_full', 'feature_topk', 'feature_output', 'single_feature', 'clamp', ...)
    """
    _check_dataset(dataset)
    if isinstance(dataset, ClassDataset) and instructions is None:
        instructions = builtin_instructions().get(dataset.name)
    why = _inapplicable(dataset, instructions, codebook)
    return tuple(m for m in METHODS if m not in why)


def _check_dataset(dataset: Any) -> None:
    if not isinstance(dataset, (ClassDataset, ABTask, AnalogyTask)):
        raise TypeError(
            f"dataset must be a ClassDataset, an ABTask or an AnalogyTask, got {type(dataset).__name__}"
        )


def _check_methods(
    methods: tuple[str, ...] | None,
    dataset: Any,
    instructions: Mapping[str, str] | None,
    codebook: Any = None,
) -> tuple[str, ...]:
    """The config's methods (``None``: every one that applies), each applicable to ``dataset``."""
    why = _inapplicable(dataset, instructions, codebook)
    valid = tuple(m for m in METHODS if m not in why)
    if methods is None:
        return valid
    for m in methods:
        if m in why:
            options = f"valid for {_describe(dataset)}: {format_options(valid, len(valid))}"
            raise ValueError(f"method {m!r} does not apply to {_describe(dataset)}: {why[m]}; {options}")
    return methods


def _check_class_only(dataset: Any, **given: Any) -> None:
    """Refuse what only a class set reads, when given for another dataset."""
    for name, value in given.items():
        if value is not None and not isinstance(dataset, ClassDataset):
            raise ValueError(f"{name} applies to a ClassDataset only, not to {_describe(dataset)}")


def _kind(dataset: Any) -> DatasetKind:
    if isinstance(dataset, ClassDataset):
        return "class_set"
    return "analogy" if isinstance(dataset, AnalogyTask) else "ab"


def feature_vs_caa(
    model: HookedTransformer,
    sae: SAELike,
    dataset: Any,
    config: Any = None,
    *,
    neutral: Sequence[str] | None = None,
    mmlu: Sequence[ABItem] | None = None,
    instructions: Mapping[str, str] | None = None,
    prompts: Sequence[str] | None = None,
    calibration_prompts: Sequence[str] | None = None,
    embedder: Embedder | None = None,
    hook_name: str | None = None,
    out_dir: str | Path | None = None,
    plan: Any = None,
    executor: Executor | None = None,
    model_loader: Callable[[], HookedTransformer] | None = None,
    codebook: Codebook | None = None,
) -> ComparisonResult:
    """Compare steering methods on one dataset at matched KL budgets (see the module docstring).

    The settings come in one :class:`~tlsteer.experiments.comparison_config.ComparisonConfig`
    (methods, budgets, prompts and seeds, the split, the bootstrap); the data and the objects the
    run uses are the keyword arguments.

    Args:
        model, sae: The model and an SAE that fits it; everything happens at the SAE's hook.
        dataset: A :class:`~tlsteer.ClassDataset` (its training split builds the vectors), an
            :class:`~tlsteer.experiments.ab_task.ABTask`, or an
            :class:`~tlsteer.experiments.analogy_task.AnalogyTask` (top-k accuracy of the whole
            answer among the domain's answers, exact binomial intervals; no MMLU).
        config: A :class:`~tlsteer.experiments.comparison_config.ComparisonConfig` (default:
            ``ComparisonConfig()``: every method that applies, budgets 0.1 and 0.5). A method that
            does not apply to the dataset (``mean_centred`` to an ABTask or AnalogyTask, which have
            two sides; ``prompting`` without an instruction) is refused with an error naming the
            valid ones, and so are ``targets`` and a ``split_seed`` other than 0 for a dataset
            that is not a class set.
        neutral: Neutral texts for calibration, residual norm and feature statistics (default:
            the built-in ones, :func:`~tlsteer.load_neutral_text`).
        mmlu: A/B items whose accuracy is a side effect at each cell's strength (not for an
            AnalogyTask).
        instructions: For a class set, ``{class: instruction}`` of the prompting baseline
            (default: the built-in ones for a built-in set); an ABTask or AnalogyTask carries its own.
        prompts: For a class set, the test prompts to generate from (default: the built-in
            held-out test prompts, :func:`~tlsteer.data.load_heldout_prompts`; the first
            ``config.n_prompts`` of them, every target steered toward on each).
        calibration_prompts: For a class set with ``config.calibration == "reply"``, the user
            messages the KL is calibrated on (default: the built-in held-out calibration
            prompts; the first ``config.n_calibration_prompts``); they must not be test prompts.
        embedder: For a class set, the sentence embedder of its judge
            (:func:`tlsteer.eval.judge.class_judge`; default: all-MiniLM-L6-v2).
        hook_name: Where the SAE reads, if its metadata does not say.
        out_dir: Write ``feature_vs_caa_<name>.json`` (``result.save``) and its figures
            (``result.plot``: ``feature_vs_caa_<name>.png``, and for a class set
            ``feature_vs_caa_<name>_transfer.png``) there.
        plan: The pre-registered :class:`~tlsteer.experiments.plan.AnalysisPlan` the run answers;
            its path and hash are recorded in the result (``result.plan``).
        executor: For a class set, where its cells are generated and judged
            (:mod:`tlsteer.experiments.executor`: ``InProcess()``, the default, or
            ``RayExecutor(num_workers=...)``); the result does not depend on it.
        model_loader: With an executor whose workers are other processes, a picklable
            zero-argument callable that loads ``model`` in each worker (e.g.
            ``functools.partial(tlsteer.load_model)``); each worker also trains the set's judge.
        codebook: A :class:`~tlsteer.codebook.Codebook` at the SAE's hook, for the codebook arm
            (``codes_add``, ``codes_bottleneck``): the same contrast is read through it.

    Returns:
        A :class:`~tlsteer.experiments.comparison_result.ComparisonResult`: its cells keyed by
        ``(method, budget)``, its config (with the methods that ran), and what its dataset adds.

    Each stage is logged with its elapsed time at level INFO (logger
    ``tlsteer.experiments.feature_vs_caa``; ``logging.getLogger("tlsteer").setLevel("INFO")``
    with a handler shows it).

    Example:
        >>> config = ComparisonConfig(budgets=[0.5], targets=["formal", "pirate"])
        >>> styles = load_class_dataset("speaking_styles")  # doctest: +SKIP
        >>> result = feature_vs_caa(model, sae, styles, config)  # doctest: +SKIP
        >>> result.cells["caa", 0.5].success  # doctest: +SKIP
        Interval(value=0.44, low=0.19, high=0.69)
    """
    start = time.perf_counter()

    def log(message: str) -> None:
        LOG.info("[%7.1f s] %s", time.perf_counter() - start, message)

    _check_dataset(dataset)
    if config is None:
        config = ComparisonConfig()
    if not isinstance(config, ComparisonConfig):
        raise TypeError(
            f"config must be a ComparisonConfig (e.g. ComparisonConfig(budgets=[0.5])), got "
            f"{type(config).__name__} {config!r:.80}"
        )
    _check_class_only(
        dataset,
        **{
            "instructions=": instructions,
            "prompts=": prompts,
            "embedder=": embedder,
            "config.targets": config.targets,
            "calibration_prompts=": calibration_prompts,
        },
    )
    if config.split_seed != 0 and not isinstance(dataset, ClassDataset):
        own = (
            "carries its own seed (AnalogyTask(seed=...))"
            if isinstance(dataset, AnalogyTask)
            else "has no split"
        )
        raise ValueError(f"split_seed applies to a ClassDataset only; {_describe(dataset)} {own}")
    if mmlu is not None and isinstance(dataset, AnalogyTask):
        raise ValueError(f"mmlu= does not apply to AnalogyTask {dataset.name!r} (top-k accuracy only)")
    if isinstance(dataset, ClassDataset) and instructions is None:
        instructions = builtin_instructions().get(dataset.name)
    config = replace(config, methods=_check_methods(config.methods, dataset, instructions, codebook))
    methods, budgets = list(config.methods), list(config.budgets)
    hook = check_sae(model, sae, hook_name)
    if codebook is not None:
        if not isinstance(codebook, Codebook):
            raise TypeError(f"codebook must be a tlsteer.codebook.Codebook, got {type(codebook).__name__}")
        check_feature_dictionary(codebook, model)
        if codebook.hook_name != hook:
            raise ValueError(
                f"the codebook reads {codebook.hook_name!r} but the SAE reads {hook!r}; give both at one hook"
            )
    neutral = list(neutral or load_neutral_text())
    scale = float(residual_norms(model, neutral, [hook])[hook])
    stats = feature_stats(model, sae, neutral, hook_name=hook)
    extras: dict[str, Any]
    if isinstance(dataset, ClassDataset):
        cells, extras = _class_set(
            model,
            sae,
            hook,
            dataset,
            config,
            instructions=instructions,
            prompts=prompts,
            neutral=neutral,
            mmlu=mmlu,
            scale=scale,
            stats=stats,
            log=log,
            embedder=embedder,
            calibration_prompts=calibration_prompts,
            executor=executor,
            model_loader=model_loader,
            codebook=codebook,
        )
    else:
        code_reps = None
        if isinstance(dataset, AnalogyTask):
            reps = contrast_from_analogy(model, sae, dataset, hook)
            if codebook is not None:
                code_reps = contrast_from_analogy(model, codebook, dataset, hook)
        else:
            reps = contrast_from_pairs(model, sae, dataset.train_pairs, hook)
            if codebook is not None:
                code_reps = contrast_from_pairs(model, codebook, dataset.train_pairs, hook)
        built = build_methods(
            model,
            sae,
            hook,
            reps,
            scale,
            stats,
            instruction=dataset.instruction,
            methods=methods,
            ks=config.ks,
            codebook=codebook,
            code_reps=code_reps,
        )
        log(f"{dataset.name}: {len(built)} methods built")
        calibrations = {n: calibrate_method(model, m, neutral, budgets) for n, m in built.items()}
        log(f"{dataset.name}: calibrated")
        if isinstance(dataset, AnalogyTask):
            cells = run_analogy_task(model, built, calibrations, dataset)  # exact intervals
            train, test = dataset.parts()
            extras = {  # every cell scores every test pair once, in this order (its outcomes)
                "k": int(dataset.k),
                "n_shots": int(dataset.n_shots),
                "n_train_pairs": len(train),
                "n_test_pairs": len(test),
                "units": tuple(("", i) for i in range(len(test))),
            }
        else:
            cells = run_ab_task(
                model, built, calibrations, dataset.test_items, n_resamples=config.n_resamples, mmlu=mmlu
            )
            extras = {"n_train_pairs": len(dataset.train_pairs), "n_test_items": len(dataset.test_items)}
    result = ComparisonResult(
        dataset=dataset.name,
        kind=_kind(dataset),
        config=config,
        hook=hook,
        residual_norm=scale,
        n_neutral=len(neutral),
        cells=cells,
        seconds=round(time.perf_counter() - start, 1),
        plan=None if plan is None else plan.record(),
        **extras,
    )
    log(f"{dataset.name}: done")
    if out_dir is not None:
        out = Path(out_dir)
        result.save(out / f"feature_vs_caa_{dataset.name}.json")
        result.plot(out / f"feature_vs_caa_{dataset.name}.png")
    return result


def _class_set(
    model: HookedTransformer,
    sae: SAELike,
    hook: str,
    dataset: ClassDataset,
    config: ComparisonConfig,
    *,
    instructions: Mapping[str, str] | None,
    prompts: Sequence[str] | None,
    neutral: list[str],
    mmlu: Sequence[ABItem] | None,
    scale: float,
    stats: Any,
    log: Any,
    embedder: Embedder | None,
    calibration_prompts: Sequence[str] | None = None,
    executor: Executor | None = None,
    model_loader: Callable[[], HookedTransformer] | None = None,
    codebook: Codebook | None = None,
) -> tuple[dict[CellKey, Cell], dict[str, Any]]:
    """A class set's cells, and what a class-set result adds (classes, targets, judge, features)."""
    methods = list(config.methods or ())
    targets = list(dataset.classes) if config.targets is None else list(config.targets)
    unknown = [t for t in targets if t not in dataset.classes]
    if unknown:
        raise ValueError(
            f"targets must be classes of {dataset.name!r}, got {unknown[0]!r}; classes: "
            f"{format_options(dataset.classes, len(dataset.classes))}"
        )
    missing = [c for c in targets if "prompting" in methods and c not in (instructions or {})]
    if missing:
        raise ValueError(f"no instruction for class {missing[0]!r}")
    n_prompts = config.n_prompts
    pool = list(prompts) if prompts is not None else load_heldout_prompts("test")
    if n_prompts > len(pool):
        raise ValueError(f"n_prompts={n_prompts} asks for more test prompts than the {len(pool)} given")
    pool = pool[:n_prompts]
    from tlsteer.eval.judge import class_judge

    train, _, _ = dataset.split(seed=config.split_seed)
    profile = class_profile(model, sae, train, n_bootstrap=0, hook_name=hook)
    code_profile = (
        None if codebook is None else class_profile(model, codebook, train, n_bootstrap=0, hook_name=hook)
    )
    judge = class_judge(dataset, embedder)
    log(f"{dataset.name}: profile and judge (held-out accuracy {judge.held_out_accuracy:.3f})")
    setting: Any = neutral
    if config.calibration == "reply":
        calibration_prompts = list(calibration_prompts or ())
        if not calibration_prompts:
            calibration_prompts = load_heldout_prompts("calibration")
        calibration_prompts = calibration_prompts[: config.n_calibration_prompts]
        overlap = sorted(set(calibration_prompts) & set(pool))
        if overlap:
            raise ValueError(
                f"calibration prompts must be disjoint from the test prompts; both hold {overlap[0]!r}"
            )
        setting = ReplySetting.sample(
            model,
            calibration_prompts,
            max_new_tokens=config.max_new_tokens,
            temperature=GENERATION["temperature"],
            seed=10_000,
        )
        log(f"{dataset.name}: {len(calibration_prompts)} calibration replies sampled")
    built, calibrations = {}, {}
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
            ks=config.ks,
            n_random=config.n_random,
            seed=1000 * (i + 1),
            codebook=codebook,
            code_reps=None if code_profile is None else contrast_from_profile(code_profile, c),
        )
        calibrations[c] = {
            n: calibrate_method(model, m, setting, list(config.budgets)) for n, m in built[c].items()
        }
        log(f"{dataset.name}: {c}: {len(built[c])} methods built and calibrated")
    setup = None
    if executor is not None and not isinstance(executor, InProcess):
        if model_loader is None:
            raise ValueError(
                f"{type(executor).__name__} runs cells in other processes: pass model_loader=, a picklable "
                "callable that loads the model there (e.g. functools.partial(tlsteer.load_model))"
            )
        setup = ClassCellsSetup(
            model_loader,
            partial(class_judge, dataset, embedder),
            tuple(pool),
            tuple((t, tuple(range(len(pool)))) for t in targets),
            tuple(config.seeds),
            config.max_new_tokens,
            GENERATION["temperature"],
            GENERATION["batch_size"],
            GENERATION["max_rows"],
        )
    with torch.no_grad():
        cells, examples, units = run_class_task(
            model,
            judge,
            built,
            calibrations,
            pool,
            seeds=config.seeds,
            max_new_tokens=config.max_new_tokens,
            n_resamples=config.n_resamples,
            **GENERATION,
            mmlu=mmlu,
            executor=executor,
            setup=setup,
        )
    extras = {
        "units": units,
        "classes": tuple(judge.classes),
        "targets": tuple(targets),
        "examples": examples,
        "judge_held_out_accuracy": float(judge.held_out_accuracy),
        "judge_flagged": bool(judge.flagged),
        "features": {
            c: {"clamp": tuple(int(f) for f in built[c]["clamp"].features)}
            for c in targets
            if "clamp" in built[c]
        },
    }
    return cells, extras
