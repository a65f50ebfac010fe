"""A griffe extension for the API reference: tlsteer's docstrings, read as Google style.

- ``Example:`` (tlsteer's heading for doctest examples) is read as griffe's ``Examples:`` section,
  so the ``>>>`` lines render as Python code and not as Markdown.
- Sphinx cross-reference roles (``:func:`encode```) are shown as code: ``encode``.

It changes only the text griffe parses for the site; the source is never touched.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

EXAMPLE = re.compile(r"^Example:[ \t]*$", re.M)
ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|obj|exc|const):`~?([^`]+)`")


class TlsteerDocstrings(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:  # noqa: ARG002
        if obj.docstring is not None:
            text = EXAMPLE.sub("Examples:", obj.docstring.value)
            obj.docstring.value = ROLE.sub(r"`\1`", text)
