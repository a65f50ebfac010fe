"""Error helpers: messages that name the bad value and what would be valid.

tlsteer raises the standard exception types (``ValueError``, ``KeyError``, ``TypeError``,
``FileNotFoundError``) so callers can catch them as usual; this module only owns how the
messages are written.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["closest", "format_options"]


def closest(name: str, options: Iterable[str], n: int = 1, cutoff: float = 0.75) -> list[str]:
    """The options similar enough to ``name`` to be a likely typo, best first (possibly empty)."""
    options = list(options)
    found = difflib.get_close_matches(name, options, n=n, cutoff=cutoff)
    return found[:n]


def format_options(options: Iterable[object], limit: int = 8) -> str:
    """A short, quoted list of valid options, e.g. ``'add', 'ablate' (2 options)``."""
    options = list(options)
    shown = ", ".join(repr(o) for o in options[:limit])
    more = f", ... ({len(options)} options)" if len(options) > limit else ""
    return shown + more
