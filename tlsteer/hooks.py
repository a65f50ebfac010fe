"""Steering hooks, the engine under :class:`tlsteer.Steering`: edits at absolute positions as hooks.

An :data:`Edit` is any function of the activation at the steered positions that returns the
delta to add there. :class:`DirectionEdit` is the CAA one (an :mod:`operator <tlsteer.operators>`
applied to ``multiplier * direction``); the SAE module makes others (encode, edit features,
decode, keep the error). :func:`edit_hooks` turns edits into hooks that steer the positions of
:class:`~tlsteer.positions.Positions`, right under KV-cached generation: its list includes the
position tracker's own hooks, so it works alone with ``model.hooks(fwd_hooks=...)``,
``run_with_hooks`` or ``add_hook``. Each hook returns a new tensor (``act + delta``); its state
lives in itself. :func:`apply_edits` is a ``model.hooks(...)`` context; :func:`patch_edits` stays
until ``handle.remove()``. Users reach all of this through :class:`tlsteer.Steering`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from tlsteer._types import parse_hook_name, validate_hook_name
from tlsteer.operators import Operator, addition_operator, check_multiplier
from tlsteer.positions import OFFSET_HOOK, Positions, PositionTracker, TrackerHook, steered_columns

__all__ = [
    "DirectionEdit",
    "Edit",
    "EditHook",
    "SteeringHandle",
    "apply_edits",
    "check_direction",
    "direction_edit",
    "edit_hooks",
    "patch_edits",
    "remove_all_steering",
    "scaled_direction",
]

Edit = Callable[[Float[Tensor, "batch pos d_model"]], Tensor]
"""``activation at the steered positions -> delta`` added there (same shape, or broadcastable)."""

_BEFORE_OFFSET = {
    "hook_resid_pre",
    "ln1.hook_scale",
    "ln1.hook_normalized",
    "hook_attn_in",
    "hook_q_input",
    "hook_k_input",
    "hook_v_input",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_rot_q",
    "attn.hook_rot_k",
    "attn.hook_attn_scores",
}


def _fires_before_offset(name: str) -> bool:
    if name in ("hook_embed", "hook_pos_embed", "hook_tokens"):
        return True
    return name.startswith("blocks.0.") and name[len("blocks.0.") :] in _BEFORE_OFFSET


@dataclass(eq=False)
class DirectionEdit:
    """The edit of one direction: ``operator(act, multiplier * direction)``."""

    direction: Tensor
    operator: Operator
    _cast: dict = field(default_factory=dict, repr=False)

    def __call__(self, act: Tensor) -> Tensor:
        key = (act.device, act.dtype)
        if key not in self._cast:
            self._cast[key] = self.direction.to(device=act.device, dtype=act.dtype)
        return self.operator(act, self._cast[key])


def check_direction(name: str, direction: Any, d_model: int | None = None) -> Tensor:
    """A 1-D, finite, floating direction (of size ``d_model`` when given), else a clear error."""
    if not isinstance(direction, Tensor):
        raise TypeError(f"direction at {name!r} must be a torch.Tensor, got {type(direction).__name__}")
    if direction.ndim != 1:
        raise ValueError(f"direction at {name!r} must be 1-D [d_model], got shape {tuple(direction.shape)}")
    if not direction.is_floating_point():
        raise TypeError(f"direction at {name!r} must be a floating tensor, got dtype {direction.dtype}")
    if d_model is not None and direction.shape[0] != d_model:
        raise ValueError(
            f"vector has d_model={direction.shape[0]} at {name!r} but model.cfg.d_model={d_model}"
        )
    bad = ~torch.isfinite(direction)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"direction at {name!r} has {int(bad.sum())} non-finite entries (first at index {first}: "
            f"{float(direction[first])}); steering needs finite values"
        )
    return direction


def scaled_direction(name: str, direction: Any, multiplier: float) -> Tensor:
    """``multiplier * direction``, detached, after checking both and that the product is finite.

    A finite direction times a finite multiplier can still overflow (``3e38 * 10`` is ``inf`` in
    float32), which would make every logit NaN; that is refused here, naming the largest entry.
    """
    check_direction(name, direction)
    scaled = direction.detach() * multiplier
    if not bool(torch.isfinite(scaled).all()):
        biggest = float(direction.detach().abs().max())
        raise ValueError(
            f"multiplier {multiplier} times the direction at {name!r} overflows {direction.dtype} (largest "
            f"|entry| {biggest:.3g}); steering needs a finite product: scale the direction down"
        )
    return scaled


def direction_edit(direction: Tensor, multiplier: Any = 1.0, operator: Operator | None = None) -> Edit:
    """The edit that applies ``operator`` (default: addition) to ``multiplier * direction``.

    Example:
        >>> direction_edit(torch.ones(2), 3.0)(torch.zeros(1, 1, 2)).tolist()
        [[[3.0, 3.0]]]
    """
    operator = addition_operator() if operator is None else operator
    if not callable(operator):
        raise TypeError(f"operator must be a callable (activation, vector) -> delta, got {operator!r}")
    return DirectionEdit(scaled_direction("direction", direction, check_multiplier(multiplier)), operator)


@dataclass(eq=False)
class EditHook:
    """The hook function of one edit at one hook point (a TransformerLens hook callable)."""

    name: str
    edit: Edit
    positions: Positions
    tracker: PositionTracker

    def _delta(self, act: Tensor) -> Tensor:
        delta = self.edit(act)
        if not isinstance(delta, Tensor):
            raise TypeError(f"the edit at {self.name!r} returned {type(delta).__name__}, not a tensor")
        try:
            shape = torch.broadcast_shapes(delta.shape, act.shape)
        except RuntimeError:
            shape = None
        if shape != act.shape:
            raise ValueError(
                f"the edit (or operator) at {self.name!r} returned shape {tuple(delta.shape)} for an "
                f"activation of shape {tuple(act.shape)}; it must return a delta of the activation's shape"
            )
        return delta

    def __call__(self, act: Tensor, hook: Any) -> Tensor | None:  # noqa: ARG002
        cols = steered_columns(self.positions, self.tracker, act.shape[1], act.device)
        if cols is None:
            return None
        if isinstance(cols, int):
            if cols == 0:
                return act + self._delta(act)
            steered = act[:, cols:]
            return torch.cat([act[:, :cols], steered + self._delta(steered)], dim=1)
        mask = cols.reshape(*cols.shape, *([1] * (act.ndim - 2)))
        return torch.where(mask, act + self._delta(act), act)


_QUERY_KEY_HOOKS = ("hook_pattern", "hook_attn_scores")
"""Hooks shaped ``[batch, head, query_pos, key_pos]``: their axis 1 is heads, not positions."""


def _check_position_axis(name: str, positions: Positions) -> None:
    if positions.needs_tracker and name.rsplit(".", 1)[-1] in _QUERY_KEY_HOOKS:
        raise ValueError(
            f"{name!r} is shaped [batch, head, query_pos, key_pos], so its axis 1 is heads, not positions; "
            f"steering it at {positions.describe()} would edit heads. Steer it at every position "
            "(Positions.all()), or at a hook shaped [batch, pos, ...] such as the attention's hook_z"
        )


def _build(
    model: HookedTransformer, edits: Sequence[tuple[str, Edit]], positions: Positions
) -> tuple[list[tuple[str, Any]], PositionTracker]:
    if isinstance(edits, (str, bytes)) or not isinstance(edits, Sequence) or not edits:
        raise ValueError(
            f"no edits to apply; give a non-empty list of (hook_name, edit) pairs, got {edits!r}"
        )
    if not isinstance(positions, Positions):
        raise TypeError(f"positions must be a tlsteer.Positions, got {positions!r}")
    tracker = PositionTracker(track_anchor=positions.mode == "last", back=positions.back)
    hooks: list[tuple[str, Any]] = tracker.hooks() if positions.needs_tracker else []
    if positions.needs_tracker and OFFSET_HOOK not in model.hook_dict:
        raise ValueError(
            f"positions other than every position need {OFFSET_HOOK!r}, which this model lacks; "
            "steer every position (Positions.all())"
        )
    d_model = model.cfg.d_model
    for item in edits:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise TypeError(f"expected (hook_name, edit) pairs, got {item!r}")
        name, edit = item
        validate_hook_name(model, name)
        if not callable(edit):
            raise TypeError(f"the edit at {name!r} must be a callable activation -> delta, got {edit!r}")
        if isinstance(edit, DirectionEdit):
            parse_hook_name(name)
            check_direction(name, edit.direction, d_model)
        _check_position_axis(name, positions)
        if positions.needs_tracker and _fires_before_offset(name):
            raise ValueError(
                f"{name!r} runs before block 0's attention, where token positions are known; steer it "
                f"at every position (Positions.all()) or at a later hook such as 'blocks.0.hook_resid_post'"
            )
        hooks.append((name, EditHook(name, edit, positions, tracker)))
    return hooks, tracker


def edit_hooks(
    model: HookedTransformer, edits: Sequence[tuple[str, Edit]], positions: Positions
) -> list[tuple[str, Any]]:
    """``(hook_name, fn)`` pairs that apply each edit at ``positions`` (the engine under
    :meth:`tlsteer.Steering.hooks`, which users call).

    The list carries its own position tracking; register all of it together (``model.hooks``,
    ``run_with_hooks`` or ``add_hook``) and nothing else is needed, KV cache or not.
    """
    return _build(model, edits, positions)[0]


def _is_ours(fn: Any) -> bool:
    return isinstance(fn, (EditHook, TrackerHook))


def _remove_lens_hooks(model: HookedTransformer, hook_fns: set[int] | None) -> int:
    """Remove TransformerLens hooks whose user function is ours (or one of ``hook_fns``)."""
    removed = 0
    for point in model.hook_dict.values():
        kept = []
        for handle in point.fwd_hooks:
            fn = getattr(handle, "user_hook", None)
            if _is_ours(fn) and (hook_fns is None or id(fn) in hook_fns):
                handle.hook.remove()
                removed += 1
            else:
                kept.append(handle)
        point.fwd_hooks = kept
    return removed


def _check_reached(positions: Positions, tracker: PositionTracker) -> None:
    if positions.mode in ("explicit", "from") and tracker.seen_end > 0:
        positions.check_length(tracker.seen_end, "every forward in the block")


@contextlib.contextmanager
def apply_edits(
    model: HookedTransformer, edits: Sequence[tuple[str, Edit]], positions: Positions
) -> Iterator[HookedTransformer]:
    """Apply ``(hook_name, edit)`` pairs inside a ``with`` block (under :meth:`tlsteer.Steering.apply`).

    Positions that no forward inside the block reached raise on a normal exit: nothing was steered
    there.
    """
    hooks, tracker = _build(model, edits, positions)
    # TransformerLens types fwd_hooks as an invariant list[tuple[str | Callable, Callable]]
    with model.hooks(fwd_hooks=hooks):  # pyright: ignore[reportArgumentType]
        yield model
    _check_reached(positions, tracker)


@dataclass(eq=False)
class SteeringHandle:
    """What :func:`patch_steering` returns: call :meth:`remove` to undo exactly that patch."""

    model: Any
    hooks: list[tuple[str, Any]]
    removed: bool = False

    def remove(self) -> None:
        if self.removed:
            return
        _remove_lens_hooks(self.model, {id(fn) for _, fn in self.hooks})
        self.removed = True


def patch_edits(
    model: HookedTransformer, edits: Sequence[tuple[str, Edit]], positions: Positions
) -> SteeringHandle:
    """Like :func:`apply_edits` but stays until ``handle.remove()`` or :func:`remove_all_steering`."""
    hooks = edit_hooks(model, edits, positions)
    for name, fn in hooks:
        model.add_hook(name, fn)
    return SteeringHandle(model, hooks)


def remove_all_steering(model: HookedTransformer) -> int:
    """Remove every tlsteer hook from ``model`` (other hooks stay); returns how many were removed."""
    return _remove_lens_hooks(model, None)
