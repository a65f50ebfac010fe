"""Shared type aliases, option sets and name helpers.

One source of truth for the hook points tlsteer reads and writes, in TransformerLens's own
vocabulary (``blocks.{layer}.hook_{point}``), and for turning user-facing layer and hook
arguments into validated full hook names.
"""

from __future__ import annotations

import numbers
import re
from typing import Any, Literal, get_args

from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from tlsteer.errors import closest, format_options

__all__ = [
    "HOOK_POINTS",
    "Activations",
    "Direction",
    "HookPoint",
    "Residual",
    "Tokens",
    "check_batch_size",
    "is_int",
    "hook_name",
    "parse_hook_name",
    "resolve_layers",
    "validate_hook_name",
    "validate_hook_point",
]

HookPoint = Literal["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"]
"""Residual-stream-shaped hook points inside a block that tlsteer can read and steer."""

HOOK_POINTS: tuple[str, ...] = get_args(HookPoint)

Direction = Float[Tensor, " d_model"]
Activations = Float[Tensor, "n d_model"]
Residual = Float[Tensor, "batch pos d_model"]
Tokens = Int[Tensor, "batch pos"]

_BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.hook_(\w+)$")


def hook_name(layer: int, point: str = "resid_post") -> str:
    """The full TransformerLens hook name, e.g. ``blocks.12.hook_resid_post``."""
    return f"blocks.{layer}.hook_{point}"


def parse_hook_name(name: str) -> tuple[int, str]:
    """Split ``blocks.{layer}.hook_{point}`` into ``(layer, point)``."""
    match = _BLOCK_HOOK.match(name)
    if match is None or match.group(2) not in HOOK_POINTS:
        raise KeyError(
            f"hook {name!r} is not a residual-shaped block hook; expected "
            f"'blocks.<layer>.hook_<point>' with point in {format_options(HOOK_POINTS)}"
        )
    return int(match.group(1)), match.group(2)


def validate_hook_point(point: str) -> str:
    """Return ``point`` if it is one of :data:`HOOK_POINTS`, else raise a ``ValueError``."""
    if point not in HOOK_POINTS:
        near = closest(point, HOOK_POINTS)
        raise ValueError(
            f"unknown hook point {point!r}; valid: {format_options(HOOK_POINTS)}"
            + (f"; closest: {near[0]!r}" if near else "")
        )
    return point


def validate_hook_name(model: HookedTransformer, name: str) -> str:
    """Return ``name`` if the model has that hook, else a ``KeyError`` naming the closest one."""
    if not isinstance(name, str):
        raise TypeError(f"hook name must be a string like 'blocks.3.hook_resid_post', got {name!r}")
    if name in model.hook_dict:
        return name
    n_layers = model.cfg.n_layers
    match = re.match(r"^blocks\.(\d+)\.", name)
    if match and int(match.group(1)) >= n_layers:
        raise KeyError(
            f"hook {name!r} not in model: layer {match.group(1)} is out of range ({n_layers} layers, "
            f"valid: 0..{n_layers - 1})"
        )
    near = closest(name, model.hook_dict.keys())
    raise KeyError(
        f"hook {name!r} not in model ({n_layers} layers)" + (f"; closest: {near[0]!r}" if near else "")
    )


def resolve_layers(model: HookedTransformer, layers: Any) -> list[int]:
    """Turn ``None`` (all layers), an int or a list (negatives count from the end) into indices."""
    n_layers = model.cfg.n_layers
    if layers is None:
        return list(range(n_layers))
    if is_int(layers):
        layers = [int(layers)]
    elif isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
        raise TypeError(f"layers must be an int, a list of ints or None, got {layers!r}")
    layers = list(layers)
    if len(layers) == 0:
        raise ValueError("layers is empty; pass None for all layers or at least one layer index")
    out: list[int] = []
    for layer in layers:
        if not is_int(layer):
            raise TypeError(f"layer {layer!r} is not an int")
        layer = int(layer)
        if not -n_layers <= layer < n_layers:
            raise ValueError(
                f"layer {layer} is out of range: the model has {n_layers} layers "
                f"(valid: 0..{n_layers - 1} or -{n_layers}..-1)"
            )
        resolved = layer % n_layers
        if resolved not in out:
            out.append(resolved)
    return out


def is_int(value: Any) -> bool:
    """An integer (Python or NumPy), but not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_batch_size(batch_size: Any) -> int:
    """``batch_size`` as an int >= 1 (NumPy integers too), else a ``ValueError``."""
    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    return int(batch_size)
