"""Steering hooks: operators, absolute token positions under the KV cache, apply and patch.

Hook functions are built by :func:`steering_hooks` as ``(hook_name, fn)`` pairs usable with
``model.hooks(fwd_hooks=...)`` and ``run_with_hooks``. Each fn returns ``act + delta`` and keeps its
state in itself, never in module globals.

Positions are absolute. A TransformerLens hook sees ``[batch, pos, d_model]`` with no position
information: during KV-cached ``generate`` every decode step is ``[batch, 1, d_model]``. A
:class:`PositionTracker`, a forward pre-hook on each steered block, reads how many positions the
block's KV-cache entry already holds before every forward; that is the absolute position of the
forward's first column, reset by construction when a new generation starts a new cache.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from tlsteer._types import parse_hook_name, validate_hook_name
from tlsteer.vector import SteeringVector

__all__ = [
    "Operator",
    "Positions",
    "PositionTracker",
    "SteeringHandle",
    "ablation_operator",
    "ablation_then_addition_operator",
    "addition_operator",
    "apply_steering",
    "patch_steering",
    "remove_all_steering",
    "steering_hooks",
]

Operator = Callable[[Float[Tensor, "batch pos d_model"], Float[Tensor, " d_model"]], Tensor]
"""``(activation, multiplier * direction) -> delta`` added to the activation."""


def addition_operator() -> Operator:
    """Add the scaled vector (CAA)."""

    def add(act: Tensor, vector: Tensor) -> Tensor:
        return vector.expand_as(act)

    return add


def _projection(act: Tensor, vector: Tensor) -> Tensor:
    norm = vector.norm()
    if norm == 0:
        return torch.zeros_like(act)
    unit = vector / norm
    return (act @ unit)[..., None] * unit


def ablation_operator() -> Operator:
    """Remove the activation's component along the vector (the multiplier's size is unused)."""

    def ablate(act: Tensor, vector: Tensor) -> Tensor:
        return -_projection(act, vector)

    return ablate


def ablation_then_addition_operator() -> Operator:
    """Remove the component along the vector, then add the scaled vector."""

    def ablate_then_add(act: Tensor, vector: Tensor) -> Tensor:
        return vector.expand_as(act) - _projection(act, vector)

    return ablate_then_add


PositionMode = Literal["all", "from", "explicit", "last"]


@dataclass(frozen=True)
class Positions:
    """Which absolute token positions to steer.

    Build it with :meth:`make`: every position (``min_token_index=0``), every position from
    ``min_token_index`` onward, the explicit ``token_positions``, or only the last position of each
    forward (``last_token_only``, which under generation steers the last prompt token and every
    generated token, with the KV cache on or off).
    """

    mode: PositionMode
    min_index: int = 0
    indices: tuple[int, ...] = ()

    @classmethod
    def make(
        cls,
        min_token_index: int = 0,
        token_positions: Sequence[int] | None = None,
        last_token_only: bool = False,
    ) -> Positions:
        if isinstance(min_token_index, bool) or not isinstance(min_token_index, int):
            raise TypeError(f"min_token_index must be an int, got {min_token_index!r}")
        if min_token_index < 0:
            raise ValueError(
                f"min_token_index={min_token_index} is negative; positions are absolute, "
                "counted from the first token (0 means every position)"
            )
        chosen = (min_token_index != 0) + (token_positions is not None) + bool(last_token_only)
        if chosen > 1:
            raise ValueError(
                "choose one of min_token_index, token_positions and last_token_only; got "
                f"min_token_index={min_token_index}, token_positions={token_positions!r}, "
                f"last_token_only={last_token_only}"
            )
        if token_positions is not None:
            positions = tuple(token_positions)
            bad = [p for p in positions if isinstance(p, bool) or not isinstance(p, int) or p < 0]
            if bad or not positions:
                raise ValueError(
                    f"token_positions must be a non-empty list of absolute positions >= 0, got "
                    f"{token_positions!r}"
                )
            return cls("explicit", indices=tuple(sorted(set(positions))))
        if last_token_only:
            return cls("last")
        if min_token_index == 0:
            return cls("all")
        return cls("from", min_index=min_token_index)


@dataclass(eq=False)
class PositionTracker:
    """Forward pre-hook on a block: the absolute position of the forward's first column.

    ``offset`` is the length of the block's KV-cache entry before this forward (0 without a
    cache). ``anchor`` is the last position of the first forward of a sequence; a forward without
    a cache whose input extends the previous one (``generate(use_past_kv_cache=False)``) keeps it.
    """

    track_anchor: bool = False
    offset: int = 0
    anchor: int = 0
    _previous: Tensor | None = field(default=None, repr=False)
    handles: list[Any] = field(default_factory=list, repr=False)

    def __call__(self, module: Any, args: tuple, kwargs: dict) -> None:  # noqa: ARG002
        entry = kwargs.get("past_kv_cache_entry")
        self.offset = 0 if entry is None else int(entry.past_keys.shape[1])
        if not self.track_anchor:
            return
        residual = args[0] if args else kwargs["resid_pre"]
        if self.offset > 0:
            return
        prev = self._previous
        extends = (
            prev is not None
            and prev.shape[0] == residual.shape[0]
            and prev.shape[1] < residual.shape[1]
            and torch.equal(residual[:, : prev.shape[1]], prev)
        )
        if not extends:
            self.anchor = residual.shape[1] - 1
        self._previous = residual.detach()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self._previous = None


@dataclass(eq=False)
class SteeringHook:
    """The hook function for one vector at one hook point (a TransformerLens hook callable)."""

    name: str
    vector: Tensor
    operator: Operator
    positions: Positions
    tracker: PositionTracker
    _cast: dict = field(default_factory=dict, repr=False)

    def _vector_like(self, act: Tensor) -> Tensor:
        key = (act.device, act.dtype)
        if key not in self._cast:
            self._cast[key] = self.vector.to(device=act.device, dtype=act.dtype)
        return self._cast[key]

    def __call__(self, act: Tensor, hook: Any) -> Tensor | None:  # noqa: ARG002
        vector = self._vector_like(act)
        mode = self.positions.mode
        if mode == "all":
            return act + self.operator(act, vector)
        n_pos = act.shape[1]
        offset = self.tracker.offset
        if mode == "explicit":
            absolute = torch.arange(offset, offset + n_pos, device=act.device)
            wanted = torch.tensor(self.positions.indices, device=act.device)
            selected = torch.isin(absolute, wanted)
            if not bool(selected.any()):
                return None
            return act + self.operator(act, vector) * selected[None, :, None].to(act.dtype)
        start = self.tracker.anchor if mode == "last" else self.positions.min_index
        first = start - offset  # first steered column of this forward
        if first >= n_pos:
            return None
        if first <= 0:
            return act + self.operator(act, vector)
        steered = act[:, first:]
        return torch.cat([act[:, :first], steered + self.operator(steered, vector)], dim=1)


def _check_multiplier(multiplier: Any) -> float:
    if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)):
        raise TypeError(f"multiplier must be a real number, got {multiplier!r}")
    if not math.isfinite(multiplier):
        raise ValueError(f"multiplier must be finite, got {multiplier}")
    return float(multiplier)


def _check_vector(model: HookedTransformer, vector: SteeringVector) -> None:
    d_model = model.cfg.d_model
    for name, direction in vector.directions.items():
        validate_hook_name(model, name)
        parse_hook_name(name)
        if direction.shape != (d_model,):
            raise ValueError(
                f"vector has d_model={direction.shape[-1]} at {name!r} but model.cfg.d_model={d_model}"
            )


def steering_hooks(
    model: HookedTransformer,
    vectors: Sequence[tuple[SteeringVector, float | int]],
    positions: Positions,
    operator: Operator | None = None,
) -> tuple[list[tuple[str, SteeringHook]], list[tuple[int, PositionTracker]]]:
    """Validate and build the hooks for several ``(vector, multiplier)`` pairs.

    Returns:
        ``(fwd_hooks, trackers)``: the ``(hook_name, fn)`` pairs and the ``(layer, tracker)`` pairs
        that must be registered as forward pre-hooks on ``model.blocks[layer]`` while the hooks are
        active (see :func:`apply_steering`).
    """
    if operator is None:
        operator = addition_operator()
    if not callable(operator):
        raise TypeError(f"operator must be a callable (activation, vector) -> delta, got {operator!r}")
    if not vectors:
        raise ValueError("no vectors to apply; give at least one (vector, multiplier) pair")
    checked = []
    for item in vectors:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise TypeError(f"expected (SteeringVector, multiplier) pairs, got {item!r}")
        vector, multiplier = item
        _check_vector(model, vector)
        checked.append((vector, _check_multiplier(multiplier)))
    trackers: dict[int, PositionTracker] = {}
    track_anchor = positions.mode == "last"
    hooks = []
    for vector, multiplier in checked:
        for name, direction in vector.directions.items():
            layer, _ = parse_hook_name(name)
            tracker = trackers.setdefault(layer, PositionTracker(track_anchor=track_anchor))
            hooks.append((name, SteeringHook(name, direction * multiplier, operator, positions, tracker)))
    if track_anchor:
        # The anchor is read off block 0's input (embeddings: exact), before any steering.
        anchor = trackers.setdefault(0, PositionTracker(track_anchor=True))
        for tracker in trackers.values():
            tracker.track_anchor = False
        anchor.track_anchor = True
        for hook in hooks:
            hook[1].tracker = _AnchoredView(hook[1].tracker, anchor)  # type: ignore[assignment]
    return hooks, sorted(trackers.items())


@dataclass(eq=False)
class _AnchoredView:
    """A block's offset with block 0's anchor, for ``last_token_only`` steering."""

    local: PositionTracker
    anchor_source: PositionTracker

    @property
    def offset(self) -> int:
        return self.local.offset

    @property
    def anchor(self) -> int:
        return self.anchor_source.anchor


def _register_trackers(model: HookedTransformer, trackers: list[tuple[int, PositionTracker]]) -> None:
    for layer, tracker in trackers:
        handle = model.blocks[layer].register_forward_pre_hook(tracker, with_kwargs=True)
        tracker.handles.append(handle)


def _remove_lens_hooks(model: HookedTransformer, hook_fns: set[int] | None) -> int:
    """Remove TransformerLens hooks whose user function is a SteeringHook (or one of ``hook_fns``)."""
    removed = 0
    for point in model.hook_dict.values():
        kept = []
        for handle in point.fwd_hooks:
            fn = getattr(handle, "user_hook", None)
            ours = isinstance(fn, SteeringHook) and (hook_fns is None or id(fn) in hook_fns)
            if ours:
                handle.hook.remove()
                removed += 1
            else:
                kept.append(handle)
        point.fwd_hooks = kept
    return removed


@contextlib.contextmanager
def apply_steering(
    model: HookedTransformer,
    vectors: Sequence[tuple[SteeringVector, float | int]],
    min_token_index: int = 0,
    token_positions: Sequence[int] | None = None,
    last_token_only: bool = False,
    operator: Operator | None = None,
) -> Iterator[HookedTransformer]:
    """Steer ``model`` with several ``(vector, multiplier)`` pairs inside a ``with`` block.

    Everything is validated before any hook is added; the hooks are removed on exit, also when the
    block raises. It is ``model.hooks(...)`` underneath, so it nests with other hook contexts.

    Example:
        >>> with apply_steering(model, [(honesty, 4.0), (formality, -2.0)], min_token_index=12):
        ...     out = model.generate(tokens, max_new_tokens=20)  # doctest: +SKIP
    """
    positions = Positions.make(min_token_index, token_positions, last_token_only)
    hooks, trackers = steering_hooks(model, vectors, positions, operator)
    with model.hooks(fwd_hooks=hooks):
        _register_trackers(model, trackers)
        try:
            yield model
        finally:
            for _, tracker in trackers:
                tracker.remove()


@dataclass(eq=False)
class SteeringHandle:
    """What :func:`patch_steering` returns: call :meth:`remove` to undo exactly that patch."""

    model: Any
    hooks: list[tuple[str, SteeringHook]]
    trackers: list[tuple[int, PositionTracker]]
    removed: bool = False

    def remove(self) -> None:
        if self.removed:
            return
        _remove_lens_hooks(self.model, {id(fn) for _, fn in self.hooks})
        for _, tracker in self.trackers:
            tracker.remove()
        self.removed = True


def patch_steering(
    model: HookedTransformer,
    vectors: Sequence[tuple[SteeringVector, float | int]],
    min_token_index: int = 0,
    token_positions: Sequence[int] | None = None,
    last_token_only: bool = False,
    operator: Operator | None = None,
) -> SteeringHandle:
    """Like :func:`apply_steering` but stays until ``handle.remove()`` or :func:`remove_all_steering`."""
    positions = Positions.make(min_token_index, token_positions, last_token_only)
    hooks, trackers = steering_hooks(model, vectors, positions, operator)
    for name, fn in hooks:
        model.add_hook(name, fn)
    _register_trackers(model, trackers)
    return SteeringHandle(model, hooks, trackers)


def remove_all_steering(model: HookedTransformer) -> int:
    """Remove every tlsteer hook from ``model`` (other hooks stay); returns how many were removed."""
    removed = _remove_lens_hooks(model, None)
    for block in model.blocks:
        for fn in list(block._forward_pre_hooks.values()):
            if isinstance(fn, PositionTracker):
                fn.remove()
    return removed
