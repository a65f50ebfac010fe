"""The one value that says what a steering does: edits at hooks, where they act, a prompt prefix.

A :class:`Steering` is immutable. It holds

- ``edits``: ``(hook_name, edit)`` pairs, an edit being any function ``activation -> delta``
  (a direction with an operator and a multiplier is one kind, an SAE feature edit another);
- ``positions``: the one :class:`~tlsteer.positions.Positions` value where every edit acts;
- ``prefix``: an optional instruction put before the user's prompt (``"{prefix}\\n\\n{prompt}"``),
  so prompting is a method like any other;
- ``model_name``: the model its vectors were made for (``""``: any model).

Build it with :meth:`Steering.from_vector`, :meth:`Steering.from_edits` or
:meth:`Steering.from_prompt`, combine with ``a + b``, move with :meth:`Steering.at`. Everything that
steers takes it (generation, A/B scoring, side effects, sweeps, the token view, the invariance
check, the comparison), each with one opt-out of the model check, ``check_model=False``.
``vec.apply(model, 8.0, min_token_index=...)`` is the familiar shortcut over it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from torch import Tensor
from transformer_lens import HookedTransformer

from tlsteer.hooks import (
    DirectionEdit,
    Edit,
    SteeringHandle,
    apply_edits,
    edit_hooks,
    patch_edits,
    scaled_direction,
)
from tlsteer.operators import Operator, addition_operator, check_multiplier
from tlsteer.positions import Positions

__all__ = ["Steering", "VectorLike", "as_steering", "check_model_match"]

_ALL = Positions("all")


@runtime_checkable
class VectorLike(Protocol):
    """What :meth:`Steering.from_vector` reads of a vector: ``directions`` (and, optionally,
    ``metadata.model_name``). :class:`tlsteer.SteeringVector` is one."""

    @property
    def directions(self) -> Mapping[str, Tensor]: ...


def check_model_match(model: HookedTransformer, made_for: str, what: str = "the steering") -> None:
    """Refuse to steer ``model`` with something made for another model (both names must be known)."""
    current = getattr(model.cfg, "model_name", "") or ""
    if made_for and current and made_for != current:
        raise ValueError(
            f"{what} was made for model {made_for!r} but this model is {current!r}; pass "
            "check_model=False to steer with it anyway"
        )


def _check_edit_pairs(edits: Any) -> tuple[tuple[str, Edit], ...]:
    if isinstance(edits, (Mapping, str, bytes)) or not isinstance(edits, Sequence):
        raise TypeError(f"edits must be a list of (hook_name, edit) pairs, got {type(edits).__name__}")
    out = []
    for item in edits:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise TypeError(f"expected (hook_name, edit) pairs, got {item!r}")
        if not callable(item[1]):
            raise TypeError(
                f"the edit at {item[0]!r} must be a callable activation -> delta, got {item[1]!r}"
            )
        out.append((item[0], item[1]))
    return tuple(out)


@dataclass(frozen=True)
class Steering:
    """What a steering does: ``edits`` at hooks, acting at ``positions``, after a ``prefix``.

    ``Steering()`` is the unsteered run. Two steerings combine with ``+`` (their edits all act;
    they must agree on positions, on the model, and have at most one prefix between them).

    Example:
        >>> import torch
        >>> s = Steering.from_vector({"blocks.1.hook_resid_post": torch.ones(4)}, 2.0)
        >>> s.at(Positions.start_at(3)).positions.describe()
        'from 3'
        >>> (s + Steering.from_prompt("Be brief.")).prefix
        'Be brief.'
    """

    edits: tuple[tuple[str, Edit], ...] = ()
    positions: Positions = field(default=_ALL)
    prefix: str = ""
    model_name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "edits", _check_edit_pairs(self.edits))
        if not isinstance(self.positions, Positions):
            raise TypeError(
                f"positions must be a tlsteer.Positions (Positions.all(), .start_at(i), .at([...]), "
                f".last()), got {self.positions!r}"
            )
        if not isinstance(self.prefix, str):
            raise TypeError(f"prefix must be a string, got {self.prefix!r}")
        if not isinstance(self.model_name, str):
            raise TypeError(f"model_name must be a string ('' for any model), got {self.model_name!r}")

    # -- constructors ---------------------------------------------------------------------
    @classmethod
    def from_vector(
        cls,
        vector: VectorLike | Mapping[str, Tensor],
        multiplier: Any = 1.0,
        *,
        positions: Positions = _ALL,
        operator: Operator | None = None,
    ) -> Steering:
        """``operator(act, multiplier * direction)`` at each of the vector's hooks.

        ``vector`` is a :class:`~tlsteer.SteeringVector` or a ``{hook_name: direction}`` mapping.
        The product ``multiplier * direction`` must be finite (a float32 overflow is refused).
        """
        operator = addition_operator() if operator is None else operator
        if not callable(operator):
            raise TypeError(f"operator must be a callable (activation, vector) -> delta, got {operator!r}")
        directions = getattr(vector, "directions", vector)
        if not isinstance(directions, Mapping):
            raise TypeError(
                "expected a SteeringVector or a {hook_name: direction} mapping, got "
                f"{type(vector).__name__}"
            )
        if not directions:
            raise ValueError("a vector with no directions cannot steer")
        m = check_multiplier(multiplier)
        edits = tuple(
            (name, DirectionEdit(scaled_direction(name, d, m), operator)) for name, d in directions.items()
        )
        made_for = getattr(getattr(vector, "metadata", None), "model_name", "") or ""
        return cls(edits, positions, "", made_for)

    @classmethod
    def from_vectors(
        cls,
        pairs: Sequence[tuple[VectorLike | Mapping[str, Tensor], Any]] | object,
        *,
        positions: Positions = _ALL,
        operator: Operator | None = None,
    ) -> Steering:
        """The sum of :meth:`from_vector` over ``(vector, multiplier)`` pairs."""
        if hasattr(pairs, "directions") or isinstance(pairs, Mapping):
            raise TypeError(
                "expected a list of (vector, multiplier) pairs, got a single vector; use "
                "Steering.from_vector(vector, multiplier)"
            )
        if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence) or not pairs:
            raise ValueError(f"give a non-empty list of (vector, multiplier) pairs, got {pairs!r}")
        out = cls(positions=positions)
        for item in pairs:
            if not (isinstance(item, tuple) and len(item) == 2):
                raise TypeError(f"expected (SteeringVector, multiplier) pairs, got {item!r}")
            out = out + cls.from_vector(item[0], item[1], positions=positions, operator=operator)
        return out

    @classmethod
    def from_edits(
        cls,
        edits: Sequence[tuple[str, Edit]],
        *,
        positions: Positions = _ALL,
        model_name: str = "",
    ) -> Steering:
        """Any ``(hook_name, edit)`` pairs (an edit maps the activation to the delta added)."""
        pairs = _check_edit_pairs(edits)
        if not pairs:
            raise ValueError("no edits to apply; give a non-empty list of (hook_name, edit) pairs")
        return cls(pairs, positions, "", model_name)

    @classmethod
    def from_prompt(cls, prefix: str) -> Steering:
        """Prompting as a steering: ``prefix`` is put before every prompt (``"{prefix}\\n\\n{prompt}"``)."""
        if not isinstance(prefix, str) or not prefix.strip():
            raise ValueError(f"a prompt prefix must be a non-empty string, got {prefix!r}")
        return cls(prefix=prefix)

    # -- values ---------------------------------------------------------------------------
    @property
    def is_unsteered(self) -> bool:
        """No edit and no prefix: the model as it is."""
        return not self.edits and not self.prefix

    @property
    def hook_names(self) -> tuple[str, ...]:
        """The hooks the edits act at, each once, in order."""
        return tuple(dict.fromkeys(name for name, _ in self.edits))

    def at(self, positions: Positions) -> Steering:
        """The same edits acting at other ``positions``."""
        return replace(self, positions=positions)

    def without_prefix(self) -> Steering:
        """The same edits with no prompt prefix."""
        return replace(self, prefix="")

    def instruct(self, prompt: str) -> str:
        """``prompt`` with this steering's prefix put before it (unchanged without one)."""
        return f"{self.prefix}\n\n{prompt}" if self.prefix else prompt

    def __add__(self, other: Steering) -> Steering:
        if not isinstance(other, Steering):
            return NotImplemented
        if self.edits and other.edits and self.positions != other.positions:
            raise ValueError(
                f"cannot combine steerings acting at different positions ({self.positions.describe()} "
                f"and {other.positions.describe()}); move one with .at(...) first"
            )
        if self.prefix and other.prefix:
            raise ValueError(
                f"cannot combine two prompt prefixes ({self.prefix!r} and {other.prefix!r}); build one "
                "prefix with Steering.from_prompt"
            )
        if self.model_name and other.model_name and self.model_name != other.model_name:
            raise ValueError(
                f"cannot combine steerings made for different models ({self.model_name!r} and "
                f"{other.model_name!r})"
            )
        positions = self.positions if self.edits or not other.edits else other.positions
        return Steering(
            self.edits + other.edits,
            positions,
            self.prefix or other.prefix,
            self.model_name or other.model_name,
        )

    def __repr__(self) -> str:
        parts = []
        if self.edits:
            parts.append(f"{len(self.edits)} edit(s) at {', '.join(self.hook_names)}")
            parts.append(self.positions.describe())
        if self.prefix:
            parts.append(f"prefix={self.prefix!r}")
        if self.model_name:
            parts.append(f"for {self.model_name!r}")
        return f"Steering({'; '.join(parts) or 'unsteered'})"

    # -- using it -------------------------------------------------------------------------
    def check(self, model: HookedTransformer, *, check_model: bool = True) -> None:
        """Validate everything against ``model`` (hooks, shapes, positions, the model check)."""
        self._check_model(model, check_model)
        if self.edits:
            edit_hooks(model, list(self.edits), self.positions)

    def _check_model(self, model: HookedTransformer, check_model: bool) -> None:
        if not isinstance(check_model, bool):
            raise TypeError(f"check_model must be True or False, got {check_model!r}")
        if check_model:
            check_model_match(model, self.model_name)

    def hooks(
        self, model: HookedTransformer, *, check_model: bool = True, row_shift: Sequence[int] | None = None
    ) -> list[tuple[str, Callable[..., Any]]]:
        """``(hook_name, fn)`` pairs for ``model.hooks(fwd_hooks=...)``, ``run_with_hooks`` or ``add_hook``.

        The list carries its own position tracking, so it works alone, KV cache included.
        ``row_shift`` moves each row's position 0 (the left padding of a batch). The prefix is not
        a hook: put it in the prompt with :meth:`instruct`.
        """
        self._check_model(model, check_model)  # building the hooks validates the edits
        if not self.edits:
            return []
        positions = self.positions if row_shift is None else self.positions.shifted(row_shift)
        return edit_hooks(model, list(self.edits), positions)

    def _refuse_prefix(self, where: str) -> None:
        if self.prefix:
            raise ValueError(
                f"this steering has a prompt prefix ({self.prefix!r}), which {where} cannot apply: hooks "
                "do not change the prompt. Pass it to tlsteer.generate (or put steering.instruct(prompt) "
                "in the prompt yourself and use steering.without_prefix())"
            )

    @contextlib.contextmanager
    def apply(self, model: HookedTransformer, *, check_model: bool = True) -> Iterator[HookedTransformer]:
        """Steer ``model`` inside a ``with`` block (``model.hooks`` underneath; removed on exit or error)."""
        self._refuse_prefix("apply()")
        self._check_model(model, check_model)
        if not self.edits:
            yield model
            return
        with apply_edits(model, list(self.edits), self.positions) as steered:
            yield steered

    def patch(self, model: HookedTransformer, *, check_model: bool = True) -> SteeringHandle:
        """Add the hooks until ``handle.remove()`` (or :func:`tlsteer.remove_all_steering`)."""
        self._refuse_prefix("patch()")
        self._check_model(model, check_model)
        if not self.edits:
            raise ValueError("an unsteered Steering has nothing to patch")
        return patch_edits(model, list(self.edits), self.positions)


def as_steering(steering: Steering | None) -> Steering:
    """``steering``, or the unsteered :class:`Steering` for ``None``; anything else is refused."""
    if steering is None:
        return Steering()
    if not isinstance(steering, Steering):
        raise TypeError(
            f"expected a tlsteer.Steering (Steering.from_vector(vec, m), .from_edits(...), "
            f".from_prompt(...)), got {type(steering).__name__}"
        )
    return steering
