"""Sweeps over layers and multipliers: residual norms, A/B sweeps, competition, calibration.

:func:`sweep_items` scores every A/B item at every ``(layer, multiplier)`` and returns one row per
item; :func:`summarize_sweep` (and :func:`sweep`, which does both) reduces that to one row per
``(layer, multiplier)``. Multipliers are absolute, or with ``relative=True`` in units of the
residual norm at the hook divided by the vector's norm there (:func:`residual_norms`).
:func:`tlsteer.eval.diagnostics.steerability` reads per-item slopes off a :func:`sweep_items` frame;
:func:`compete` applies two vectors together, and :func:`calibrate_multiplier` picks the largest
multiplier whose KL on neutral text stays under a budget.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformer_lens import HookedTransformer

from tlsteer._types import check_batch_size, parse_hook_name, resolve_layers, validate_hook_name
from tlsteer.data import ABItem
from tlsteer.errors import format_options
from tlsteer.eval.ab import ABResult, OutsideAB, ab_eval, check_ab_items, kl_on_neutral, question_end
from tlsteer.eval.cached import cached_ab_scores
from tlsteer.hooks import check_direction
from tlsteer.operators import check_multiplier
from tlsteer.positions import Positions
from tlsteer.steering import Steering
from tlsteer.tokens import left_pad, tokenize_prompts
from tlsteer.vector import SteeringVector

__all__ = [
    "ITEM_COLUMNS",
    "SUMMARY_COLUMNS",
    "calibrate_multiplier",
    "compete",
    "residual_norms",
    "summarize_sweep",
    "sweep",
    "sweep_items",
    "to_json",
]

ITEM_COLUMNS: tuple[str, ...] = (
    "layer",
    "hook",
    "multiplier",
    "multiplier_abs",
    "item",
    "p_matching",
    "letter_mass",
    "logit_diff",
)
"""Columns of :func:`sweep_items`: one row per item, layer and multiplier."""

SUMMARY_COLUMNS: tuple[str, ...] = (
    "layer",
    "hook",
    "multiplier",
    "multiplier_abs",
    "p_matching",
    "n_matching",
    "letter_mass",
    "logit_diff",
)
"""Columns of :func:`sweep`: one row per layer and multiplier (means over items)."""


def _check_multipliers(multipliers: Sequence[float | int], name: str = "multipliers") -> list[float]:
    if isinstance(multipliers, (str, bytes)) or not multipliers:
        raise ValueError(f"{name} must be a non-empty list of numbers, got {multipliers!r}")
    out = []
    for m in multipliers:
        try:
            out.append(check_multiplier(m))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name} must be finite numbers, got {m!r} in {list(multipliers)!r}") from err
    return out


def check_direction_values(vector: SteeringVector) -> None:
    """Every direction of ``vector`` finite (a vector built by hand may not be)."""
    for name, direction in vector.directions.items():
        check_direction(name, direction)


def residual_norms(
    model: HookedTransformer,
    prompts: Sequence[str],
    hooks: Sequence[str],
    batch_size: int = 8,
) -> dict[str, float]:
    """Mean L2 norm of the activation at each hook over every token but the first of each prompt.

    The first position (often BOS) carries a norm far from the rest and is left out; the mean is
    pooled over all remaining positions of all prompts (a longer prompt weighs more).

    Example:
        >>> residual_norms(model, neutral, ["blocks.6.hook_resid_post"])  # doctest: +SKIP
        {'blocks.6.hook_resid_post': 41.7}
    """
    check_batch_size(batch_size)
    if isinstance(prompts, str) or not prompts:
        raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    if isinstance(hooks, str) or not hooks:
        raise ValueError(f"hooks must be a non-empty list of hook names, got {hooks!r}")
    for name in hooks:
        validate_hook_name(model, name)
    stop_at = max(parse_hook_name(name)[0] for name in hooks) + 1
    token_ids = tokenize_prompts(model, prompts)
    if max(len(ids) for ids in token_ids) < 2:
        raise ValueError("every prompt has a single token; residual norms skip the first position")
    totals = dict.fromkeys(hooks, 0.0)
    count = 0
    for start in range(0, len(token_ids), batch_size):
        batch = token_ids[start : start + batch_size]
        tokens, mask = left_pad(model, batch)
        width = tokens.shape[1]
        keep = mask.bool()
        for row, ids in enumerate(batch):
            keep[row, width - len(ids)] = False  # the first real token
        with torch.no_grad():
            _, cache = model.run_with_cache(
                tokens, attention_mask=mask, names_filter=list(hooks), stop_at_layer=stop_at, return_type=None
            )
        for name in hooks:
            totals[name] += float(cache[name][keep].double().norm(dim=-1).sum())
        count += int(keep.sum())
    return {name: total / count for name, total in totals.items()}


def _layer_hook(vector: SteeringVector, layer: int) -> str:
    matches = [name for name in vector.hooks if parse_hook_name(name)[0] == layer]
    if len(matches) != 1:
        raise KeyError(
            f"layer {layer} matches {len(matches)} hooks of this vector ({matches}); a sweep needs "
            f"exactly one hook per layer; vector layers: {vector.layers}"
        )
    return matches[0]


def _scale(vector: SteeringVector, hook: str, relative: bool, norms: Mapping[str, float] | None) -> float:
    """The absolute multiplier per unit of the sweep's multiplier at ``hook``."""
    if not relative:
        return 1.0
    if norms is None:
        raise ValueError(
            "relative=True needs the residual norms: pass norms=residual_norms(model, neutral_prompts, "
            f"[{hook!r}])"
        )
    if hook not in norms:
        raise KeyError(f"hook {hook!r} not in norms; norms has {format_options(norms)}")
    vec_norm = float(vector.directions[hook].norm())
    if vec_norm == 0:
        raise ValueError(f"direction at {hook!r} is zero; relative multipliers need a non-zero vector")
    return float(norms[hook]) / vec_norm


def sweep_items(
    model: HookedTransformer,
    items: Sequence[ABItem],
    vector: SteeringVector,
    layers: int | Sequence[int],
    multipliers: Sequence[float | int],
    *,
    relative: bool = False,
    norms: Mapping[str, float] | None = None,
    batch_size: int = 16,
    positions: Positions | None = None,
    engine: str = "cached",
    attention: str = "auto",
    outside_ab: OutsideAB = "error",
    check_model: bool = True,
) -> pd.DataFrame:
    """Score every A/B item with the vector's direction at each layer alone, at each multiplier.

    Args:
        model: A ``HookedTransformer`` with a tokenizer.
        items: CAA A/B items (see :func:`tlsteer.data.load_ab_items`).
        vector: A vector with one hook at each swept layer.
        layers: Layers to sweep, one at a time (negatives count from the end).
        multipliers: Multipliers to sweep.
        relative: Read multipliers in units of ``norms[hook] / |vector[hook]|``; the multiplier
            actually applied is in the ``multiplier_abs`` column.
        norms: Mean residual norm per hook, from :func:`residual_norms`; needed when ``relative``.
        batch_size: Items per forward pass.
        positions: Where to steer (default: CAA's :func:`~tlsteer.eval.ab.question_end`).
        engine: ``"cached"`` runs each batch's unsteered prefix once and all settings' steered
            suffixes together (:mod:`tlsteer.eval.cached`); ``"full"`` runs a full forward per
            setting. Both give the same scores up to float error; positions other than the
            question end need ``"full"``.
        check_model: Refuse a vector made for another model.
        attention: How the cached engine runs the suffix rows: ``"auto"``, ``"shared"`` or
            ``"repeat"`` (see :mod:`tlsteer.eval.cached`).

    Returns:
        A DataFrame with :data:`ITEM_COLUMNS`; ``item`` is the index into ``items``.

    Example:
        >>> df = sweep_items(model, items, vec, layers=[4, 6], multipliers=[-2, 0, 2])  # doctest: +SKIP
    """
    mults = _check_multipliers(multipliers)
    check_ab_items(items, outside_ab)
    check_direction_values(vector)
    layer_list = resolve_layers(model, layers if isinstance(layers, int) else list(layers))
    if engine not in ("cached", "full"):
        raise ValueError(f"engine must be 'cached' or 'full', got {engine!r}")
    where = question_end(model) if positions is None else positions
    if engine == "cached" and where != question_end(model):
        raise ValueError(
            f"the cached engine steers from the end of the question; positions={where.describe()} "
            "needs engine='full'"
        )
    grid = []  # (layer, hook, multiplier, applied)
    for layer in layer_list:
        hook = _layer_hook(vector, layer)
        scale = _scale(vector, hook, relative, norms)
        grid += [(layer, hook, m, m * scale) for m in mults]
    steerings = [
        Steering.from_vector(
            SteeringVector({hook: vector.directions[hook]}, vector.metadata), applied, positions=where
        )
        if applied != 0
        else Steering()
        for _, hook, _, applied in grid
    ]
    run = {"batch_size": batch_size, "outside_ab": outside_ab, "check_model": check_model}
    if engine == "cached":
        all_scores = cached_ab_scores(model, items, steerings, attention=attention, **run)
    else:
        all_scores = []
        baseline: ABResult | None = None
        for steering in steerings:
            if steering.is_unsteered:
                if baseline is None:
                    baseline = ab_eval(model, items, **run)
                all_scores.append(list(baseline.scores))
            else:
                all_scores.append(list(ab_eval(model, items, steering, **run).scores))
    rows = []
    for (layer, hook, m, applied), scores in zip(grid, all_scores, strict=True):
        for i, score in enumerate(scores):
            rows.append((layer, hook, m, applied, i, score.p_matching, score.letter_mass, score.logit_diff))
    return pd.DataFrame(rows, columns=list(ITEM_COLUMNS))


def summarize_sweep(per_item: pd.DataFrame) -> pd.DataFrame:
    """One row per ``(layer, multiplier)`` of a :func:`sweep_items` frame, with :data:`SUMMARY_COLUMNS`.

    ``p_matching`` and ``letter_mass`` are means over items, ``n_matching`` counts items with
    ``p_matching > 0.5``, ``logit_diff`` is the mean over items where it is defined (as in
    :class:`tlsteer.eval.ab.ABResult`).
    """
    missing = [c for c in ITEM_COLUMNS if c not in per_item.columns]
    if missing:
        raise KeyError(
            f"per-item sweep frame lacks columns {missing}; expected {list(ITEM_COLUMNS)} "
            "(the output of sweep_items)"
        )
    frame = per_item.assign(matching=per_item["p_matching"] > 0.5)
    grouped = frame.groupby(["layer", "hook", "multiplier", "multiplier_abs"], sort=False)
    out = grouped.agg(
        p_matching=("p_matching", "mean"),
        n_matching=("matching", "sum"),
        letter_mass=("letter_mass", "mean"),
        logit_diff=("logit_diff", "mean"),
    ).reset_index()
    out["n_matching"] = out["n_matching"].astype(int)
    return out[list(SUMMARY_COLUMNS)]


def sweep(
    model: HookedTransformer,
    items: Sequence[ABItem],
    vector: SteeringVector,
    layers: int | Sequence[int],
    multipliers: Sequence[float | int],
    *,
    relative: bool = False,
    norms: Mapping[str, float] | None = None,
    **kwargs: Any,
) -> pd.DataFrame:
    """A layer x multiplier sweep of A/B scores, one row per pair (:data:`SUMMARY_COLUMNS`).

    Takes the arguments of :func:`sweep_items` (``batch_size``, ``positions``, ``engine``, ...);
    keep that function's output instead when per-item results are wanted (for
    :func:`steerability`).

    Example:
        >>> norms = residual_norms(model, neutral, vec.hooks)  # doctest: +SKIP
        >>> df = sweep(model, items, vec, [4, 6], [-1, 0, 1], relative=True, norms=norms)  # doctest: +SKIP
    """
    per_item = sweep_items(
        model, items, vector, layers, multipliers, relative=relative, norms=norms, **kwargs
    )
    return summarize_sweep(per_item)


def _json_value(value: object) -> object:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def to_json(frame: pd.DataFrame, path: str | Path | None = None) -> str:
    """A sweep frame as a JSON list of row objects (NaN becomes ``null``); written to ``path`` if given."""
    records = [{str(k): _json_value(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]
    text = json.dumps(records, indent=1)
    if path is not None:
        Path(path).write_text(text + "\n")
    return text


def compete(
    model: HookedTransformer,
    items: Sequence[ABItem],
    vec_a: SteeringVector,
    vec_b: SteeringVector,
    multipliers_a: Sequence[float | int],
    multipliers_b: Sequence[float | int],
    *,
    batch_size: int = 16,
    positions: Positions | None = None,
    check_model: bool = True,
) -> pd.DataFrame:
    """A/B scores with two vectors applied together, for every pair of multipliers.

    ``p_matching`` is with respect to the items' matching answer, whichever vector pushes
    towards it. Both act at ``positions`` (default: CAA's :func:`~tlsteer.eval.ab.question_end`).

    Returns:
        A DataFrame with ``multiplier_a``, ``multiplier_b``, ``p_matching``, ``n_matching``,
        ``letter_mass`` and ``logit_diff``, one row per pair.

    Example:
        >>> compete(model, items, honesty, sycophancy, [0, 2, 4], [0, 2, 4])  # doctest: +SKIP
    """
    mults_a = _check_multipliers(multipliers_a, "multipliers_a")
    mults_b = _check_multipliers(multipliers_b, "multipliers_b")
    where = question_end(model) if positions is None else positions
    rows = []
    for ma in mults_a:
        for mb in mults_b:
            both = Steering.from_vectors([(vec_a, ma), (vec_b, mb)], positions=where)
            result = ab_eval(model, items, both, batch_size=batch_size, check_model=check_model)
            rows.append((ma, mb, result.p_matching, result.n_matching, result.letter_mass, result.logit_diff))
    columns = ["multiplier_a", "multiplier_b", "p_matching", "n_matching", "letter_mass", "logit_diff"]
    return pd.DataFrame(rows, columns=columns)


def calibrate_multiplier(
    model: HookedTransformer,
    vector: SteeringVector,
    layers: int | Sequence[int],
    neutral_prompts: Sequence[str],
    target_kl: float | int,
    candidates: Sequence[float | int],
    *,
    positions: Positions | None = None,
    measure_from: int = 0,
    batch_size: int = 8,
    check_model: bool = True,
) -> dict[int, float | None]:
    """Per layer, the largest candidate multiplier whose mean KL on neutral text is <= ``target_kl``.

    The vector's direction at each layer is applied alone at ``positions`` (default: every
    position), and the KL measured from ``measure_from`` on (see
    :func:`tlsteer.eval.ab.kl_on_neutral`).
    Candidates are tried from the largest down; a layer where none stays within budget maps to
    ``None``. Candidates must be positive: to calibrate steering the other way, pass ``-vector``.

    Example:
        >>> calibrate_multiplier(model, vec, [4, 6], neutral, 0.1, [1, 2, 4, 8])  # doctest: +SKIP
        {4: 4.0, 6: 2.0}
    """
    if isinstance(target_kl, bool) or not math.isfinite(target_kl) or target_kl < 0:
        raise ValueError(f"target_kl must be a finite number >= 0, got {target_kl!r}")
    mults = _check_multipliers(candidates, "candidates")
    if min(mults) <= 0:
        raise ValueError(
            f"candidates must be positive, got {list(candidates)!r}; to calibrate steering the other "
            "way, calibrate -vector"
        )
    out: dict[int, float | None] = {}
    for layer in resolve_layers(model, layers if isinstance(layers, int) else list(layers)):
        hook = _layer_hook(vector, layer)
        single = SteeringVector({hook: vector.directions[hook]}, vector.metadata)
        out[layer] = None
        for m in sorted(set(mults), reverse=True):
            steering = single.steering(m, positions=Positions.all() if positions is None else positions)
            kl = kl_on_neutral(
                model,
                steering,
                neutral_prompts,
                measure_from=measure_from,
                batch_size=batch_size,
                check_model=check_model,
            )
            if kl <= target_kl:
                out[layer] = m
                break
    return out
