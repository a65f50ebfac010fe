"""Steering in feature space: edit chosen SAE features at the SAE's hook, keep everything else.

With ``f = sae.encode(h)`` at the steered positions, the activation becomes
``h' = h + decode(f_edited) - decode(f)``: the SAE's error ``h - decode(f)`` is kept, and the
features not chosen keep their contribution exactly, because the change is computed as
``(f_edited - f)[ids] @ W_dec[ids]`` (no bias enters; a zero change is exactly zero). Modes:
``add`` (``f[ids] += values``), ``scale`` (``f[ids] *= values``), ``clamp`` (``f[ids] = values``).
A :class:`~tlsteer.sae.FeatureVector` steers by adding ``multiplier * values`` in feature space.

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

from tlsteer.errors import format_options
from tlsteer.operators import check_multiplier
from tlsteer.positions import Positions
from tlsteer.sae.adapter import (
    DecoderChange,
    SAELike,
    check_feature_ids,
    check_feature_values,
    check_sae,
    decoder_change,
    sae_dims,
    sae_hook_name,
)
from tlsteer.sae.features import FeatureVector
from tlsteer.steering import Steering

__all__ = ["MODES", "FeatureEdit", "Mode", "feature_edit", "feature_steering"]

Mode = Literal["add", "scale", "clamp"]
MODES: tuple[str, ...] = get_args(Mode)


@dataclass(eq=False)
class FeatureEdit:
    """The edit of some SAE features at the SAE's hook (an :data:`~tlsteer.hooks.Edit`)."""

    hook_name: str
    mode: str
    ids: Tensor
    values: Tensor
    change: DecoderChange = field(repr=False)
    constant: Tensor | None = field(default=None, repr=False)
    _cast: dict = field(default_factory=dict, repr=False)

    def __call__(self, act: Tensor) -> Tensor:
        if self.constant is not None:  # add: the change does not depend on f
            key = (act.device, act.dtype)
            if key not in self._cast:
                self._cast[key] = self.constant.to(device=act.device, dtype=act.dtype)
            return self._cast[key].expand_as(act)
        sae = self.change.sae
        device = sae.W_dec.device
        current = sae.encode(act.to(device))[..., self.ids.to(device)]
        values = self.values.to(device=device, dtype=current.dtype)
        df = current * (values - 1.0) if self.mode == "scale" else values - current
        return self.change.of_ids(df, self.ids.to(device)).to(device=act.device, dtype=act.dtype)


def feature_edit(
    sae: SAELike,
    features: Any,
    mode: str = "add",
    *,
    values: Any = None,
    multiplier: Any = 1.0,
    hook_name: str | None = None,
) -> FeatureEdit:
    """The edit ``h -> h + decode(f_edited) - decode(f)`` of chosen features (see the module docstring).

    Args:
        sae: A sae-lens SAE.
        features: A feature id, a list of ids, or a :class:`~tlsteer.sae.FeatureVector` (added in
            feature space as ``multiplier * values``; mode ``"add"``, no ``values``).
        mode: ``"add"``, ``"scale"`` or ``"clamp"``.
        values: One number for every feature, or one per feature (finite).
        multiplier: Scales a FeatureVector.
        hook_name: Where the SAE reads, if its metadata does not say.

    Example:
        >>> edit = feature_edit(sae, [12, 40], "clamp", values=[5.0, 0.0])  # doctest: +SKIP
        >>> hook = sae_hook_name(sae)  # doctest: +SKIP
        >>> steering = Steering.from_edits([(hook, edit)], positions=Positions.last())  # doctest: +SKIP
        >>> with steering.apply(model):  # doctest: +SKIP
        ...     out = model.generate(tokens, max_new_tokens=20)
    """
    _, d_sae = sae_dims(sae)
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {format_options(MODES)}")
    if isinstance(features, FeatureVector):  # its own hook, unless hook_name says otherwise
        hook_name = features.hook_name if hook_name is None else hook_name
    hook = sae_hook_name(sae, hook_name)
    scale = check_multiplier(multiplier)
    if isinstance(features, FeatureVector):
        if mode != "add" or values is not None:
            raise ValueError(
                "a FeatureVector is added in feature space (mode='add') and scaled by multiplier=; "
                f"got mode={mode!r}, values={values!r}"
            )
        features.check_sae(sae)
        if hook != features.hook_name:
            raise ValueError(f"the FeatureVector is at {features.hook_name!r}, not at hook_name={hook!r}")
        ids = features.features
        vals = scale * features.values[ids]
    else:
        if scale != 1.0:
            raise ValueError("multiplier= scales a FeatureVector; with feature ids give values= instead")
        if values is None:
            raise ValueError(f"mode={mode!r} needs values= (one number, or one per feature)")
        ids = check_feature_ids(features, d_sae)
        vals = check_feature_values(values, len(ids))
    change = decoder_change(sae)
    index = torch.tensor(ids, dtype=torch.long)
    constant = None
    if mode == "add":
        with torch.no_grad():
            device = sae.W_dec.device
            constant = change.of_ids(vals[None].to(device), index.to(device))[0].detach()
    return FeatureEdit(hook, mode, index, vals, change, constant)


def _hook_and_edit(
    model: HookedTransformer,
    sae: SAELike,
    features: Any,
    mode: Any,
    values: Any,
    multiplier: Any,
    hook_name: Any,
) -> tuple[str, FeatureEdit]:
    if isinstance(features, FeatureVector) and hook_name is None:
        hook_name = features.hook_name
    hook = check_sae(model, sae, hook_name)
    return hook, feature_edit(sae, features, mode, values=values, multiplier=multiplier, hook_name=hook)


def feature_steering(
    model: HookedTransformer,
    sae: SAELike,
    features: Any,
    mode: str = "add",
    *,
    values: Any = None,
    multiplier: Any = 1.0,
    positions: Positions | None = None,
    hook_name: str | None = None,
) -> Steering:
    """A :class:`~tlsteer.Steering` that edits SAE features at the SAE's hook (see :func:`feature_edit`).

    Example:
        >>> s = feature_steering(model, sae, [7], "clamp", 8.0, positions=Positions.last())  # doctest: +SKIP
        >>> with s.apply(model):  # doctest: +SKIP
        ...     out = model.generate(tokens, max_new_tokens=20)
    """
    hook, edit = _hook_and_edit(model, sae, features, mode, values, multiplier, hook_name)
    made_for = features.model_name if isinstance(features, FeatureVector) else ""
    return Steering.from_edits(
        [(hook, edit)], positions=Positions.all() if positions is None else positions, model_name=made_for
    )
