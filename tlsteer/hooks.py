"""Steering hooks: edits keyed by hook name, at absolute positions, as ``(hook_name, fn)`` pairs.

An :data:`Edit` is any function of the activation at the steered positions that returns the
delta to add there. :func:`direction_edit` makes the CAA one (an :mod:`operator <tlsteer.operators>`
applied to ``multiplier * direction``); the SAE module makes others (encode, edit features,
decode, keep the error). :func:`edit_hooks` turns edits into hooks that steer the positions of
:class:`~tlsteer.positions.Positions`, right under KV-cached generation: its list includes the
position tracker's own hooks, so it works alone with ``model.hooks(fwd_hooks=...)``,
``run_with_hooks`` or ``add_hook``. :func:`steering_hooks` does the same for ``(vector,
multiplier)`` pairs. Each hook returns a new tensor (``act + delta``); its state lives in itself.

:func:`apply_steering` and :func:`apply_edits` are ``model.hooks(...)`` contexts;
:func:`patch_steering` and :func:`patch_edits` stay until ``handle.remove()``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
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
    "Edit",
    "EditHook",
    "EditPairs",
    "SteeringHandle",
    "VectorPairs",
    "apply_edits",
    "apply_steering",
    "check_direction",
    "direction_edit",
    "edit_hooks",
    "patch_edits",
    "patch_steering",
    "remove_all_steering",
    "steering_hooks",
    "vector_edits",
]

Edit = Callable[[Float[Tensor, "batch pos d_model"]], Tensor]
"""``activation at the steered positions -> delta`` added there (same shape, or broadcastable)."""

VectorPairs = Any
"""A list of ``(vector, multiplier)`` pairs; a vector is a ``SteeringVector`` or a
``{hook_name: direction}`` mapping. Checked by :func:`vector_edits`, which names what is wrong."""

EditPairs = Any
"""A list of ``(hook_name, edit)`` pairs. Checked when the hooks are built."""

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


def direction_edit(direction: Tensor, multiplier: Any = 1.0, operator: Operator | None = None) -> Edit:
    """The edit that applies ``operator`` (default: addition) to ``multiplier * direction``.

    Example:
        >>> direction_edit(torch.ones(2), 3.0)(torch.zeros(1, 1, 2)).tolist()
        [[[3.0, 3.0]]]
    """
    operator = addition_operator() if operator is None else operator
    if not callable(operator):
        raise TypeError(f"operator must be a callable (activation, vector) -> delta, got {operator!r}")
    check_direction("direction", direction)
    return DirectionEdit(direction.detach() * check_multiplier(multiplier), operator)


def _directions_of(vector: Any) -> Mapping[str, Tensor]:
    directions = getattr(vector, "directions", vector)
    if not isinstance(directions, Mapping):
        raise TypeError(
            f"expected a SteeringVector or a {{hook_name: direction}} mapping, got {type(vector).__name__}"
        )
    return directions


def vector_edits(
    model: HookedTransformer,
    vectors: VectorPairs,
    operator: Operator | None = None,
    check_model: bool = True,
) -> list[tuple[str, Edit]]:
    """Validated ``(hook_name, edit)`` pairs for ``(vector, multiplier)`` pairs.

    A vector is a :class:`~tlsteer.vector.SteeringVector` or a ``{hook_name: direction}``
    mapping. With ``check_model``, a vector whose metadata names another model is refused (both
    names must be known for the check to apply).
    """
    if operator is None:
        operator = addition_operator()
    if not callable(operator):
        raise TypeError(f"operator must be a callable (activation, vector) -> delta, got {operator!r}")
    if hasattr(vectors, "directions") or isinstance(vectors, Mapping):
        raise TypeError(
            "expected a list of (vector, multiplier) pairs, got a single vector; pass "
            "[(vector, 1.0)] or use vector.apply(model, multiplier)"
        )
    if isinstance(vectors, (str, bytes)) or not isinstance(vectors, Sequence) or not vectors:
        raise ValueError(
            f"no vectors to apply; give a non-empty list of (vector, multiplier) pairs, got {vectors!r}"
        )
    d_model = model.cfg.d_model
    edits = []
    for item in vectors:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise TypeError(f"expected (SteeringVector, multiplier) pairs, got {item!r}")
        vector, multiplier = item
        multiplier = check_multiplier(multiplier)
        directions = _directions_of(vector)
        if not directions:
            raise ValueError("a vector with no directions cannot steer")
        made_for = getattr(getattr(vector, "metadata", None), "model_name", "")
        if check_model and made_for and model.cfg.model_name and made_for != model.cfg.model_name:
            raise ValueError(
                f"the vector was made for model {made_for!r} but this model is "
                f"{model.cfg.model_name!r}; pass check_model=False to steer with it anyway"
            )
        for name, direction in directions.items():
            validate_hook_name(model, name)
            parse_hook_name(name)
            check_direction(name, direction, d_model)
            edits.append((name, DirectionEdit(direction.detach() * multiplier, operator)))
    return edits


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


def _as_positions(
    min_token_index: int,
    token_positions: Sequence[int] | None,
    last_token_only: bool,
    positions: Positions | None,
) -> Positions:
    if positions is not None:
        if min_token_index != 0 or token_positions is not None or last_token_only:
            raise ValueError(
                "give either positions= or min_token_index/token_positions/last_token_only, not both"
            )
        if not isinstance(positions, Positions):
            raise TypeError(f"positions must be a tlsteer.positions.Positions, got {positions!r}")
        return positions
    return Positions.make(min_token_index, token_positions, last_token_only)


def _build(
    model: HookedTransformer, edits: EditPairs, positions: Positions
) -> tuple[list[tuple[str, Any]], PositionTracker]:
    if isinstance(edits, (str, bytes)) or not isinstance(edits, Sequence) or not edits:
        raise ValueError(
            f"no edits to apply; give a non-empty list of (hook_name, edit) pairs, got {edits!r}"
        )
    tracker = PositionTracker(track_anchor=positions.mode == "last")
    hooks: list[tuple[str, Any]] = tracker.hooks() if positions.needs_tracker else []
    if positions.needs_tracker and OFFSET_HOOK not in model.hook_dict:
        raise ValueError(
            f"positions other than every position need {OFFSET_HOOK!r}, which this model lacks; "
            "steer every position (min_token_index=0)"
        )
    for item in edits:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise TypeError(f"expected (hook_name, edit) pairs, got {item!r}")
        name, edit = item
        validate_hook_name(model, name)
        if not callable(edit):
            raise TypeError(f"the edit at {name!r} must be a callable activation -> delta, got {edit!r}")
        if positions.needs_tracker and _fires_before_offset(name):
            raise ValueError(
                f"{name!r} runs before block 0's attention, where token positions are known; steer it "
                f"at every position (min_token_index=0) or at a later hook such as 'blocks.0.hook_resid_post'"
            )
        hooks.append((name, EditHook(name, edit, positions, tracker)))
    return hooks, tracker


def edit_hooks(
    model: HookedTransformer,
    edits: EditPairs,
    min_token_index: int = 0,
    token_positions: Sequence[int] | None = None,
    last_token_only: bool = False,
    positions: Positions | None = None,
) -> list[tuple[str, Any]]:
    """``(hook_name, fn)`` pairs that apply each edit at the chosen absolute positions.

    The list carries its own position tracking; register all of it together (``model.hooks``,
    ``run_with_hooks`` or ``add_hook``) and nothing else is needed, KV cache or not.

    Example:
        >>> hooks = edit_hooks(model, [("blocks.1.hook_resid_post", direction_edit(d, 4.0))],
        ...                    min_token_index=5)  # doctest: +SKIP
        >>> with model.hooks(fwd_hooks=hooks):  # doctest: +SKIP
        ...     out = model.generate(tokens, max_new_tokens=10)
    """
    return _build(model, edits, _as_positions(min_token_index, token_positions, last_token_only, positions))[
        0
    ]


def steering_hooks(
    model: HookedTransformer,
    vectors: VectorPairs,
    min_token_index: int = 0,
    token_positions: Sequence[int] | None = None,
    last_token_only: bool = False,
    operator: Operator | None = None,
    check_model: bool = True,
    positions: Positions | None = None,
) -> list[tuple[str, Any]]:
    """``(hook_name, fn)`` pairs that steer with several ``(vector, multiplier)`` pairs.

    Everything is validated before a hook is built. The pairs work alone with
    ``model.hooks(fwd_hooks=...)``, KV-cached ``generate`` included (see :func:`edit_hooks`).
    """
    pos = _as_positions(min_token_index, token_positions, last_token_only, positions)
    return _build(model, vector_edits(model, vectors, operator, check_model), pos)[0]


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
    if positions.mode == "explicit" and tracker.seen_end > 0:
        positions.check_length(tracker.seen_end)


@contextlib.contextmanager
def apply_edits(
    model: HookedTransformer,
    edits: EditPairs,
    min_token_index: int = 0,
    token_positions: Sequence[int] | None = None,
    last_token_only: bool = False,
    positions: Positions | None = None,
) -> Iterator[HookedTransformer]:
    """Apply ``(hook_name, edit)`` pairs inside a ``with`` block (see :func:`edit_hooks`).

    Explicit ``token_positions`` that no forward inside the block reached raise on a normal exit.
    """
    pos = _as_positions(min_token_index, token_positions, last_token_only, positions)
    hooks, tracker = _build(model, edits, pos)
    with model.hooks(fwd_hooks=hooks):
        yield model
    _check_reached(pos, tracker)


@contextlib.contextmanager
def apply_steering(
    model: HookedTransformer,
    vectors: VectorPairs,
    min_token_index: int = 0,
    token_positions: Sequence[int] | None = None,
    last_token_only: bool = False,
    operator: Operator | None = None,
    check_model: bool = True,
) -> Iterator[HookedTransformer]:
    """Steer ``model`` with several ``(vector, multiplier)`` pairs inside a ``with`` block.

    Everything is validated before any hook is added; the hooks are removed on exit, also when the
    block raises. It is ``model.hooks(...)`` underneath, so it nests with other hook contexts.

    Example:
        >>> with apply_steering(model, [(honesty, 4.0), (formality, -2.0)], min_token_index=12):
        ...     out = model.generate(tokens, max_new_tokens=20)  # doctest: +SKIP
    """
    edits = vector_edits(model, vectors, operator, check_model)
    with apply_edits(model, edits, min_token_index, token_positions, last_token_only) as steered:
        yield steered


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
    model: HookedTransformer,
    edits: EditPairs,
    min_token_index: int = 0,
    token_positions: Sequence[int] | None = None,
    last_token_only: bool = False,
    positions: Positions | None = None,
) -> SteeringHandle:
    """Like :func:`apply_edits` but stays until ``handle.remove()`` or :func:`remove_all_steering`."""
    hooks = edit_hooks(model, edits, min_token_index, token_positions, last_token_only, positions)
    for name, fn in hooks:
        model.add_hook(name, fn)
    return SteeringHandle(model, hooks)


def patch_steering(
    model: HookedTransformer,
    vectors: VectorPairs,
    min_token_index: int = 0,
    token_positions: Sequence[int] | None = None,
    last_token_only: bool = False,
    operator: Operator | None = None,
    check_model: bool = True,
) -> SteeringHandle:
    """Like :func:`apply_steering` but stays until ``handle.remove()`` or :func:`remove_all_steering`."""
    edits = vector_edits(model, vectors, operator, check_model)
    return patch_edits(model, edits, min_token_index, token_positions, last_token_only)


def remove_all_steering(model: HookedTransformer) -> int:
    """Remove every tlsteer hook from ``model`` (other hooks stay); returns how many were removed."""
    return _remove_lens_hooks(model, None)
