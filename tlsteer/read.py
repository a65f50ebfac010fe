"""The one value that says where each prompt is read: :class:`Read`.

A :class:`Read` is immutable and is taken by everything that reads activations: extraction and
CAA vectors (:func:`tlsteer.extract_activations`, :func:`tlsteer.train_steering_vector`), prefix
sharing, class reads and profiles, and SAE encoding and formulas (``tlsteer.sae``). The modes:

- :meth:`Read.answer` (the default for contrast data): each pair's own read position where it has
  one (the CAA datasets mark the answer letter), else the last token;
- :meth:`Read.last`: the last token;
- :meth:`Read.at`: a position (negative counts from the end), one per prompt or pair, or a
  callable ``(prompt, token_ids) -> int``;
- :meth:`Read.mean`: the mean over a span of tokens (every token by default);
- :meth:`Read.reply`: the mean over a class example's reply tokens (a plain text: every token but
  the first, an attention sink); only for class datasets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from tlsteer._types import is_int

__all__ = ["Read", "ReadKind", "Span"]

ReadKind = Literal["answer", "position", "mean", "reply"]

Span = tuple[int, int | None] | Sequence[tuple[int, int | None]] | Callable[[str, list[int]], Any] | None
"""For :meth:`Read.mean`: ``None`` (every token), one ``(start, end)`` for every prompt, one
``(start, end)`` per prompt (per pair for pairs), or a callable ``(prompt, token_ids) -> (start,
end)``. ``end`` is exclusive and may be ``None`` (to the end); negatives count from the end."""


def _check_index(index: Any) -> Any:
    if is_int(index):
        return int(index)
    if callable(index):
        return index
    if isinstance(index, Sequence) and not isinstance(index, (str, bytes)):
        bad = [i for i in index if not is_int(i)]
        if bad or not index:
            raise TypeError(f"Read.at takes an int, one int per prompt or pair, or a callable; got {index!r}")
        return tuple(int(i) for i in index)
    raise TypeError(
        f"Read.at takes an int (negative counts from the end), one int per prompt or pair, or a callable "
        f"(prompt, token_ids) -> int; got {index!r}"
    )


@dataclass(frozen=True)
class Read:
    """Where each prompt is read (see the module docstring for the modes).

    Example:
        >>> Read.at(-2).describe(), Read.mean((-5, None)).describe(), Read.answer().describe()
        ('position -2', 'mean over (-5, None)', 'answer (else last)')
    """

    kind: ReadKind = "answer"
    index: Any = -1
    span: Any = None

    def __post_init__(self) -> None:
        if self.kind not in get_args(ReadKind):
            raise ValueError(f"unknown read kind {self.kind!r}; valid: {', '.join(get_args(ReadKind))}")
        if self.kind == "position":
            object.__setattr__(self, "index", _check_index(self.index))
        elif self.index != -1:
            raise ValueError(f"a {self.kind!r} read takes no index, got {self.index!r}")
        if self.kind != "mean" and self.span is not None:
            raise ValueError(f"only a 'mean' read takes a span, got {self.kind!r} with span={self.span!r}")

    @classmethod
    def answer(cls) -> Read:
        """Each pair's own read position (the answer letter of a CAA item), else the last token."""
        return cls("answer")

    @classmethod
    def last(cls) -> Read:
        """The last token of every prompt."""
        return cls("position", -1)

    @classmethod
    def at(cls, index: int | Sequence[int] | Callable[[str, list[int]], int]) -> Read:
        """A position: an int (negative counts from the end), one per prompt or pair, or a callable."""
        return cls("position", index)

    @classmethod
    def mean(cls, span: Span = None) -> Read:
        """The mean over ``span`` (``None``: every token)."""
        if span is not None and not (callable(span) or isinstance(span, Sequence)):
            raise TypeError(f"span must be None, (start, end), one per prompt, or a callable, got {span!r}")
        return cls("mean", span=span)

    @classmethod
    def reply(cls) -> Read:
        """The mean over a class example's reply (a plain text: every token but the first)."""
        return cls("reply")

    @property
    def is_position(self) -> bool:
        """One position per prompt (``answer`` or ``position``), not a mean."""
        return self.kind in ("answer", "position")

    def describe(self) -> str:
        """A short label for metadata, e.g. ``'position -2'``."""
        if self.kind == "answer":
            return "answer (else last)"
        if self.kind == "position":
            index = self.index
            name = getattr(index, "__qualname__", None) or getattr(index, "__name__", None)
            if callable(index):
                return f"position {name or type(index).__name__}"
            if isinstance(index, tuple):
                return "position per item"
            return "last" if index == -1 else f"position {index}"
        if self.kind == "mean":
            if self.span is None:
                return "mean"
            return "mean over a callable span" if callable(self.span) else f"mean over {self.span!r}"[:60]
        return "reply"


def as_read(read: Any, default: Read | None = None) -> Read:
    """``read`` as a :class:`Read` (``None`` gives ``default``); anything else is refused by name."""
    if read is None and default is not None:
        return default
    if isinstance(read, Read):
        return read
    raise TypeError(
        f"read must be a tlsteer.Read (Read.answer(), Read.last(), Read.at(i), Read.mean(span), "
        f"Read.reply()), got {read!r}"
    )


def position_args(read: Read) -> tuple[Any, bool]:
    """``(index, own_first)`` of a position read: the index argument of the position engines and
    whether a pair's or set's own read position takes precedence (:meth:`Read.answer`)."""
    if read.kind == "answer":
        return -1, True
    if read.kind == "position":
        return read.index, False
    raise ValueError(f"{read.describe()!r} is not a position read (Read.answer(), Read.last(), Read.at(i))")
