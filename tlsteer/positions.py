"""Absolute token positions under the KV cache: which columns of each forward to steer.

A TransformerLens hook sees ``[batch, pos, d_model]`` with no position information: during
KV-cached ``generate`` every decode step is ``[batch, 1, d_model]``. A :class:`PositionTracker`
reads each forward's absolute offset off block 0's attention scores
(``blocks.0.attn.hook_attn_scores`` is ``[batch, head, query_pos, key_pos]``, and ``key_pos -
query_pos`` is the number of cached positions), so the offset is known before any later hook of
that forward runs. The tracker is an ordinary ``(hook_name, fn)`` pair: the hooks of
:mod:`tlsteer.hooks` work with ``model.hooks``, ``run_with_hooks`` and ``add_hook`` alone, and
leave nothing behind when those remove them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from tlsteer._types import is_int

__all__ = [
    "OFFSET_HOOK",
    "TOKEN_HOOK",
    "PositionMode",
    "PositionTracker",
    "Positions",
    "TrackerHook",
    "steered_columns",
]

PositionMode = Literal["all", "from", "explicit", "last"]

OFFSET_HOOK = "blocks.0.attn.hook_attn_scores"
"""Where each forward's absolute offset is read."""

TOKEN_HOOK = "blocks.0.hook_resid_pre"
"""Where ``last`` / ``from_end`` tracking reads each forward's input to block 0.

Not ``hook_embed``: TransformerLens's own ``model.generate`` embeds the tokens itself and starts
the forward at block 0, so ``hook_embed`` never fires there; block 0's input is seen by every
forward."""


@dataclass(frozen=True)
class Positions:
    """Which absolute token positions to steer.

    Build it with :meth:`all` (every position), :meth:`start_at` (every position from an index
    onward), :meth:`at` (explicit positions) or :meth:`last` (the last position of a sequence's
    first forward and every position after it: under generation, the last prompt token and every
    generated token, with the KV cache on or off). :meth:`make` takes the keyword triplet
    ``min_token_index`` / ``token_positions`` / ``last_token_only`` of ``vec.apply``.

    ``row_shift`` (one int per row, e.g. the left padding of each row) moves every row's position
    0 to that column, so each row of a left-padded batch is steered in its own numbering.

    Example:
        >>> Positions.start_at(5)
        Positions(mode='from', min_index=5, indices=(), row_shift=None, back=1)
        >>> Positions.make(min_token_index=5) == Positions.start_at(5)
        True
    """

    mode: PositionMode
    min_index: int = 0
    indices: tuple[int, ...] = ()
    row_shift: tuple[int, ...] | None = None
    back: int = 1
    """In ``last`` mode: how many positions from the end of the first forward steering starts."""

    @classmethod
    def make(
        cls,
        min_token_index: int = 0,
        token_positions: Sequence[int] | None = None,
        last_token_only: bool = False,
    ) -> Positions:
        if not is_int(min_token_index):
            raise TypeError(f"min_token_index must be an int, got {min_token_index!r}")
        min_token_index = int(min_token_index)
        if min_token_index < 0:
            raise ValueError(
                f"min_token_index={min_token_index} is negative; positions are absolute, "
                "counted from the first token (0 means every position)"
            )
        if not isinstance(last_token_only, bool):
            raise TypeError(f"last_token_only must be True or False, got {last_token_only!r}")
        chosen = (min_token_index != 0) + (token_positions is not None) + last_token_only
        if chosen > 1:
            raise ValueError(
                "choose one of min_token_index, token_positions and last_token_only; got "
                f"min_token_index={min_token_index}, token_positions={token_positions!r}, "
                f"last_token_only={last_token_only}"
            )
        if token_positions is not None:
            if isinstance(token_positions, (str, bytes)) or not isinstance(token_positions, Sequence):
                raise TypeError(f"token_positions must be a list of ints, got {token_positions!r}")
            positions = tuple(token_positions)
            bad = [p for p in positions if not is_int(p) or p < 0]
            if bad or not positions:
                raise ValueError(
                    f"token_positions must be a non-empty list of absolute positions >= 0, got "
                    f"{token_positions!r}"
                )
            return cls("explicit", indices=tuple(sorted({int(p) for p in positions})))
        if last_token_only:
            return cls("last")
        if min_token_index == 0:
            return cls("all")
        return cls("from", min_index=min_token_index)

    @classmethod
    def all(cls) -> Positions:
        """Every position (the default)."""
        return cls("all")

    @classmethod
    def start_at(cls, index: int) -> Positions:
        """Every position from absolute position ``index`` onward (``0`` is every position)."""
        return cls.make(min_token_index=index)

    @classmethod
    def at(cls, indices: Sequence[int]) -> Positions:
        """Only these absolute positions."""
        return cls.make(token_positions=indices)

    @classmethod
    def last(cls) -> Positions:
        """The last position of a sequence's first forward and every position after it.

        Under generation: the last prompt token and every generated token.
        """
        return cls("last")

    @classmethod
    def from_end(cls, n: int) -> Positions:
        """The last ``n`` positions of a sequence's first forward and every position after it.

        ``from_end(1)`` is :meth:`last`. CAA's A/B evaluation steers from the end of the question:
        the question's last token and the ``n - 1`` answer-template tokens after it.
        """
        if not is_int(n) or n < 1:
            raise ValueError(f"from_end needs an int n >= 1 (1 is the last position), got {n!r}")
        return cls("last", back=int(n))

    def describe(self) -> str:
        """A short human-readable form, e.g. ``'from 5'``."""
        if self.mode == "all":
            return "every position"
        if self.mode == "from":
            return f"from {self.min_index}"
        if self.mode == "explicit":
            return f"at {list(self.indices)}"
        return "last prompt token onward" if self.back == 1 else f"last {self.back} prompt tokens onward"

    def shifted(self, row_shift: Sequence[int]) -> Positions:
        """The same positions in each row's own numbering, row ``i`` starting at ``row_shift[i]``."""
        return Positions(self.mode, self.min_index, self.indices, tuple(int(s) for s in row_shift), self.back)

    @property
    def needs_tracker(self) -> bool:
        return self.mode != "all"

    def check_length(self, n_tokens: int, what: str = "the sequence") -> None:
        """Refuse positions that a sequence of ``n_tokens`` can never reach (nothing would be steered).

        Explicit positions must all be reachable; a start index must be below ``n_tokens``.
        """
        if self.mode == "explicit" and self.indices[-1] >= n_tokens:
            beyond = [p for p in self.indices if p >= n_tokens]
            raise ValueError(
                f"token_positions {beyond} are beyond {what} ({n_tokens} tokens; valid: "
                f"0..{n_tokens - 1}); nothing would be steered there"
            )
        if self.mode == "from" and self.min_index >= n_tokens:
            raise ValueError(
                f"min_token_index={self.min_index} is beyond {what} ({n_tokens} tokens; valid: "
                f"0..{n_tokens - 1}); nothing would be steered"
            )


@dataclass(eq=False)
class PositionTracker:
    """The absolute offset of the current forward's first column (and the ``last`` anchor).

    Its :meth:`hooks` are ``(hook_name, fn)`` pairs to register with the steering hooks:
    ``offset`` is read off ``blocks.0.attn.hook_attn_scores``; with ``track_anchor`` block 0's
    input at ``blocks.0.hook_resid_pre`` decides the anchor, the last position of a sequence's first
    forward. A forward without a cache whose input extends the previous forward's by exactly one
    position is the next step of an uncached ``generate`` and keeps the anchor; any other forward
    without a cache starts a new sequence.
    """

    track_anchor: bool = False
    back: int = 1
    offset: int = 0
    anchor: int = 0
    seen_end: int = 0
    _embedded: Tensor | None = field(default=None, repr=False)
    _previous: Tensor | None = field(default=None, repr=False)

    def hooks(self) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        if self.track_anchor:
            out.append((TOKEN_HOOK, TrackerHook(self, "embed")))
        out.append((OFFSET_HOOK, TrackerHook(self, "scores")))
        return out

    def _on_embed(self, embedded: Tensor) -> None:
        self._embedded = embedded.detach()

    def _on_scores(self, scores: Tensor) -> None:
        self.offset = int(scores.shape[-1] - scores.shape[-2])
        self.seen_end = max(self.seen_end, int(scores.shape[-1]))
        if not self.track_anchor or self.offset > 0:
            return
        current, prev = self._embedded, self._previous
        if current is None:
            return
        extends = (
            prev is not None
            and prev.shape[0] == current.shape[0]
            and prev.shape[1] + 1 == current.shape[1]
            and torch.equal(current[:, : prev.shape[1]], prev)
        )
        if not extends:
            if current.shape[1] < self.back:
                raise ValueError(
                    f"Positions.from_end({self.back}) needs a first forward of at least {self.back} "
                    f"positions, got {current.shape[1]}"
                )
            self.anchor = current.shape[1] - self.back
        self._previous = current

    def reset(self) -> None:
        self.offset, self.anchor, self.seen_end = 0, 0, 0
        self._embedded = self._previous = None


@dataclass(eq=False)
class TrackerHook:
    """A hook function that feeds a :class:`PositionTracker`; it never changes the activation."""

    tracker: PositionTracker
    kind: Literal["embed", "scores"]

    def __call__(self, act: Tensor, hook: Any) -> None:  # noqa: ARG002
        if self.kind == "embed":
            self.tracker._on_embed(act)
        else:
            self.tracker._on_scores(act)


def steered_columns(positions: Positions, tracker: PositionTracker, n_pos: int, device: torch.device):
    """Which columns of a forward of ``n_pos`` columns to steer.

    Returns ``None`` (none), ``int`` ``k`` (columns ``k`` onward, every row), or a bool mask
    ``[batch or 1, n_pos]``.
    """
    mode = positions.mode
    if mode == "all":
        return 0
    offset = tracker.offset
    if positions.row_shift is None:
        if mode == "explicit":
            absolute = torch.arange(offset, offset + n_pos, device=device)
            wanted = torch.tensor(positions.indices, device=device)
            selected = torch.isin(absolute, wanted)
            return selected[None, :] if bool(selected.any()) else None
        start = tracker.anchor if mode == "last" else positions.min_index
        first = max(start - offset, 0)
        return first if first < n_pos else None
    shift = torch.tensor(positions.row_shift, device=device)[:, None]
    own = torch.arange(offset, offset + n_pos, device=device)[None, :] - shift  # [batch, n_pos]
    if mode == "explicit":
        selected = torch.isin(own, torch.tensor(positions.indices, device=device))
    elif mode == "from":
        selected = own >= positions.min_index
    else:  # last: the anchor is a column, the same for every row of a left-padded batch
        selected = (torch.arange(offset, offset + n_pos, device=device) >= tracker.anchor)[None, :].expand_as(
            own
        )
    return selected if bool(selected.any()) else None
