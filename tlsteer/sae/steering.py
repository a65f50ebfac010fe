"""Steering in feature space: edit chosen features of a dictionary at its hook, keep everything else.

The dictionary is an SAE or any :class:`~tlsteer.dictionary.FeatureDictionary`. With
``f = dictionary.encode(h)`` at the steered positions, the activation becomes
``h' = h + decode(f_edited) - decode(f)``: the reconstruction error ``h - decode(f)`` is kept,
and the features not chosen keep their contribution exactly, because the change is computed
through the dictionary's one decoding path, ``decode_change((f_edited - f)[ids], ids)``
(``(f_edited - f)[ids] @ W_dec[ids]`` for a plain SAE: no bias enters; a zero change is exactly
zero). Modes: ``add`` (``f[ids] += values``), ``scale`` (``f[ids] *= values``), ``clamp``
(``f[ids] = values``). A :class:`~tlsteer.sae.FeatureVector` steers by adding
``multiplier * values`` in feature space.

:func:`feature_edit` is a core :data:`~tlsteer.hooks.Edit` (activation -> delta);
:func:`feature_steering` wraps it as a :class:`~tlsteer.Steering`, so it steers everything that
takes one (``.apply(model)``, ``.patch(model)``, :func:`tlsteer.generate`, A/B scoring, the sweep
engine), with the core's absolute positions under the KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from tlsteer.dictionary import FeatureDictionary, check_feature_ids
from tlsteer.errors import format_options
from tlsteer.operators import check_multiplier
from tlsteer.positions import Positions
from tlsteer.sae.adapter import as_feature_dictionary, check_feature_values
from tlsteer.sae.features import FeatureVector
from tlsteer.steering import Steering

__all__ = ["MODES", "FeatureEdit", "Mode", "feature_edit", "feature_steering"]

Mode = Literal["add", "scale", "clamp"]
MODES: tuple[str, ...] = get_args(Mode)


@dataclass(eq=False)
class FeatureEdit:
    """The edit of some features of a dictionary at its hook (an :data:`~tlsteer.hooks.Edit`)."""

    hook_name: str
    mode: str
    ids: Tensor
    values: Tensor
    dictionary: FeatureDictionary = field(repr=False)
    constant: Tensor | None = field(default=None, repr=False)
    _cast: dict = field(default_factory=dict, repr=False)

    def __call__(self, act: Tensor) -> Tensor:
        if self.constant is not None:  # add: the change does not depend on f
            key = (act.device, act.dtype)
            if key not in self._cast:
                self._cast[key] = self.constant.to(device=act.device, dtype=act.dtype)
            return self._cast[key].expand_as(act)
        features = self.dictionary.encode(act)
        current = features[..., self.ids.to(features.device)]
        values = self.values.to(device=current.device, dtype=current.dtype)
        df = current * (values - 1.0) if self.mode == "scale" else values - current
        return self.dictionary.decode_change(df, self.ids).to(device=act.device, dtype=act.dtype)


def feature_edit(
    dictionary: object,
    features: Any,
    mode: str = "add",
    *,
    values: Any = None,
    multiplier: Any = 1.0,
    hook_name: str | None = None,
) -> FeatureEdit:
    """The edit ``h -> h + decode(f_edited) - decode(f)`` of chosen features (see the module docstring).

    Args:
        dictionary: A sae-lens SAE or a :class:`~tlsteer.dictionary.FeatureDictionary`.
        features: A feature id, a list of ids, or a :class:`~tlsteer.sae.FeatureVector` (added in
            feature space as ``multiplier * values``; mode ``"add"``, no ``values``).
        mode: ``"add"``, ``"scale"`` or ``"clamp"``.
        values: One number for every feature, or one per feature (finite).
        multiplier: Scales a FeatureVector.
        hook_name: Where an SAE reads, if its metadata does not say.

    Example:
        >>> edit = feature_edit(sae, [12, 40], "clamp", values=[5.0, 0.0])  # doctest: +SKIP
        >>> hook = sae_hook_name(sae)  # doctest: +SKIP
        >>> steering = Steering.from_edits([(hook, edit)], positions=Positions.last())  # doctest: +SKIP
        >>> with steering.apply(model):  # doctest: +SKIP
        ...     out = model.generate(tokens, max_new_tokens=20)
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {format_options(MODES)}")
    if isinstance(features, FeatureVector):  # its own hook, unless hook_name says otherwise
        hook_name = features.hook_name if hook_name is None else hook_name
    found = as_feature_dictionary(dictionary, hook_name)
    hook = found.hook_name
    scale = check_multiplier(multiplier)
    if isinstance(features, FeatureVector):
        if mode != "add" or values is not None:
            raise ValueError(
                "a FeatureVector is added in feature space (mode='add') and scaled by multiplier=; "
                f"got mode={mode!r}, values={values!r}"
            )
        if hook != features.hook_name:
            raise ValueError(f"the FeatureVector is at {features.hook_name!r}, not at hook_name={hook!r}")
        features.check_dictionary(found)
        ids = features.features
        vals = scale * features.values[ids]
    else:
        if scale != 1.0:
            raise ValueError("multiplier= scales a FeatureVector; with feature ids give values= instead")
        if values is None:
            raise ValueError(f"mode={mode!r} needs values= (one number, or one per feature)")
        ids = check_feature_ids(features, found.width)
        vals = check_feature_values(values, len(ids))
    index = torch.tensor(ids, dtype=torch.long)
    constant = None
    if mode == "add":
        with torch.no_grad():
            constant = found.decode_change(vals[None], index)[0].detach()
    return FeatureEdit(hook, mode, index, vals, found, constant)


def _hook_and_edit(
    model: HookedTransformer,
    dictionary: object,
    features: Any,
    mode: Any,
    values: Any,
    multiplier: Any,
    hook_name: Any,
) -> tuple[str, FeatureEdit]:
    if isinstance(features, FeatureVector) and hook_name is None:
        hook_name = features.hook_name
    found = as_feature_dictionary(dictionary, hook_name, model)
    edit = feature_edit(
        found, features, mode, values=values, multiplier=multiplier, hook_name=found.hook_name
    )
    return found.hook_name, edit


def feature_steering(
    model: HookedTransformer,
    dictionary: object,
    features: Any,
    mode: str = "add",
    *,
    values: Any = None,
    multiplier: Any = 1.0,
    positions: Positions | None = None,
    hook_name: str | None = None,
) -> Steering:
    """A :class:`~tlsteer.Steering` that edits a dictionary's features at its hook (see :func:`feature_edit`).

    Example:
        >>> s = feature_steering(model, sae, [7], "clamp", 8.0, positions=Positions.last())  # doctest: +SKIP
        >>> with s.apply(model):  # doctest: +SKIP
        ...     out = model.generate(tokens, max_new_tokens=20)
    """
    hook, edit = _hook_and_edit(model, dictionary, features, mode, values, multiplier, hook_name)
    made_for = features.model_name if isinstance(features, FeatureVector) else ""
    return Steering.from_edits(
        [(hook, edit)], positions=Positions.all() if positions is None else positions, model_name=made_for
    )
