"""Drawing per-token values: an HTML token strip and matplotlib bar panels, for the token views.

One token is one ``<span class="tok">``: its background is the value on a diverging colormap centred
at 0 (``RdBu_r``: blue below 0, red above, white at 0), and under it a bar whose height is the
second channel (the KL divergence of the next-token distributions), on a fixed 0..max scale that the
legend states. Tokens are HTML-escaped; spaces, newlines, tabs and control characters are drawn
as visible marks (``·``, ``↵``, ``→``, ``\\x0b``); generated tokens are bold with an outline, after a
``▸`` mark. Bytes of a multi-byte character that a byte-level tokenizer split over several tokens
come as ``\\xNN`` escapes (see :func:`tlsteer.eval.token_view.token_text`) and are drawn as marks
too; each such token's tooltip names the whole character and the tokens it spans
(:func:`split_characters`). :func:`bars_figure` draws the same values as aligned bar panels over
token index.
Nothing here runs a model: :mod:`tlsteer.eval.token_view` computes, this module draws.
"""

from __future__ import annotations

import bisect
import functools
import html
import re
import textwrap
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize, to_hex
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties, findfont
from matplotlib.ft2font import FT2Font
from matplotlib.patches import Patch

from tlsteer.operators import check_multiplier

__all__ = [
    "CMAP",
    "KL_COLOUR",
    "KL_LABEL",
    "Panel",
    "Row",
    "bars_figure",
    "html_page",
    "legend_html",
    "strip_html",
    "token_label",
    "token_segments",
    "scale_values",
    "split_characters",
    "token_bytes",
    "value_colour",
    "view_figure",
    "view_html",
]

CMAP = "RdBu_r"
"""The diverging colormap of the values (centred at 0)."""

KL_COLOUR = "#6a3d9a"
"""The colour of the KL bars (a purple apart from the colormap's red and blue)."""

KL_BAR_PX = 8.0
"""The height of the KL bar at the scale's maximum, in CSS pixels."""

_MARKS = {" ": "·", "\n": "↵", "\t": "→", "\r": "\\r"}

_BYTE_ESCAPE = re.compile(r"\\x([89a-f][0-9a-f])")
"""A byte of a split multi-byte character, as :func:`tlsteer.eval.token_view.token_text` writes it."""

_STYLE = """
.tlsteer-tv{font-family:'DejaVu Sans Mono',Menlo,Consolas,monospace;font-size:14px;line-height:1.2;
color:#111;background:#fff;padding:10px 12px;border:1px solid #ddd;border-radius:4px}
.tlsteer-tv .head{font-family:'DejaVu Sans',Helvetica,Arial,sans-serif;font-size:13px;margin:0 0 6px}
.tlsteer-tv .head b{font-weight:600}
.tlsteer-tv .head.row{margin-top:10px;padding-top:6px;border-top:1px solid #e4e4e4}
.tlsteer-tv .strip{margin:4px 0 8px}
.tlsteer-tv .tok{display:inline-block;vertical-align:top;margin:0 1px 3px 0}
.tlsteer-tv .tok .t{display:block;padding:2px 2px;border-radius:2px;white-space:pre;min-width:6px}
.tlsteer-tv .tok.gen .t{font-weight:700;box-shadow:inset 0 0 0 1px #444}
.tlsteer-tv .kb{display:block;height:8px}
.tlsteer-tv .k{display:block;background:#6a3d9a;border-radius:0 0 1px 1px}
.tlsteer-tv i.ws{font-style:normal;opacity:.5}
.tlsteer-tv .sep{display:inline-block;vertical-align:top;color:#444;padding:2px 3px;font-weight:700}
.tlsteer-tv .mark{display:inline-block;vertical-align:top;color:#6a3d9a;padding:2px 1px;font-weight:700}
.tlsteer-tv .legend{font-family:'DejaVu Sans',Helvetica,Arial,sans-serif;font-size:12px;color:#333;
display:flex;flex-wrap:wrap;align-items:center;gap:6px 14px;margin-top:2px}
.tlsteer-tv .legend span{display:inline-block;vertical-align:middle}
.tlsteer-tv .grad{width:160px;height:12px;border:1px solid #bbb}
.tlsteer-tv .kitem{display:inline-flex!important;align-items:flex-start;gap:3px;margin-right:4px}
.tlsteer-tv .kbar{width:12px;background:#6a3d9a}
.tlsteer-tv .gkey{font-family:'DejaVu Sans Mono',monospace;font-weight:700;box-shadow:inset 0 0 0 1px #444;
padding:1px 3px}
"""


def _units(text: str) -> list[str]:
    """The characters of ``text``, each ``\\xNN`` byte escape kept as one unit."""
    units: list[str] = []
    pos = 0
    for match in _BYTE_ESCAPE.finditer(text):
        units += text[pos : match.start()]
        units.append(match[0])
        pos = match.end()
    return units + list(text[pos:])


def token_bytes(text: str) -> bytes:
    r"""The bytes a token's text stands for: UTF-8, each ``\xNN`` escape (``NN`` >= 80) as its byte.

    Example:
        >>> token_bytes(r"\xf0\x9f\x98"), token_bytes(" é")
        (b'\xf0\x9f\x98', b' \xc3\xa9')
    """
    out = bytearray()
    for unit in _units(text):
        out += bytes([int(unit[2:], 16)]) if len(unit) > 1 else unit.encode("utf-8", "replace")
    return bytes(out)


def split_characters(tokens: Sequence[str]) -> list[str]:
    r"""Per token, the characters whose bytes it shares with neighbouring tokens ('' for none).

    A byte-level tokenizer can split one character (an emoji, a CJK character) over several tokens,
    each shown with ``\xNN`` escapes; this names the character they make together.

    Example:
        >>> split_characters(["a", r"\xf0\x9f\x98", r"\x80", "猫"])
        ['', "'😀' (U+1F600) across tokens 1-2", "'😀' (U+1F600) across tokens 1-2", '']
    """
    data = [token_bytes(text) for text in tokens]
    starts = np.cumsum([0] + [len(d) for d in data[:-1]]).tolist() if data else []
    notes: list[list[str]] = [[] for _ in tokens]
    pos = 0
    for ch in b"".join(data).decode("utf-8", "surrogateescape"):
        size = 1 if "\udc80" <= ch <= "\udcff" else len(ch.encode("utf-8"))
        first = bisect.bisect_right(starts, pos) - 1
        last = bisect.bisect_right(starts, pos + size - 1) - 1
        if first != last and size > 1:
            for i in range(first, last + 1):
                notes[i].append(f"{ch!r} (U+{ord(ch):04X}) across tokens {first}-{last}")
        pos += size
    return ["; ".join(n) for n in notes]


def token_segments(text: str) -> list[tuple[str, bool]]:
    """A token's text as ``(piece, is_mark)`` runs, whitespace and control characters as marks.

    Example:
        >>> token_segments(" a\\n")
        [('·', True), ('a', False), ('↵', True)]
    """
    if text == "":
        return [("∅", True)]
    out: list[tuple[str, bool]] = []
    for ch in _units(text):
        if len(ch) > 1:  # a \xNN byte escape
            piece, mark = ch, True
        elif ch in _MARKS:
            piece, mark = _MARKS[ch], True
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs"):
            piece, mark = (f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}"), True
        else:
            piece, mark = ch, False
        if out and out[-1][1] == mark:
            out[-1] = (out[-1][0] + piece, mark)
        else:
            out.append((piece, mark))
    return out


@functools.lru_cache(maxsize=4)
def _font_chars(family: str) -> frozenset[int]:
    return frozenset(FT2Font(findfont(FontProperties(family=family))).get_charmap())


def token_label(text: str, family: str = "monospace") -> str:
    """A token's visible text for a matplotlib label: marks as in HTML, ``$`` escaped, and any
    character the font lacks written as ``\\uXXXX`` (so drawing never warns of a missing glyph)."""
    chars = _font_chars(family)
    pieces = []
    for ch in "".join(piece for piece, _ in token_segments(text)):
        if ch == "$":
            pieces.append(r"\$")
        elif ord(ch) in chars:
            pieces.append(ch)
        else:
            pieces.append(f"\\u{ord(ch):04x}")
    return "".join(pieces)


def scale_values(values: Any) -> Any:
    """The values a default scale is taken from: all but the first token's, when there are others.

    The first position is usually an attention sink whose residual is far larger than the rest
    (``residual_norms`` leaves it out too); its value saturates the scale instead of setting it.
    """
    return values[1:] if len(values) > 1 else values


def value_colour(value: float, vmax: float) -> tuple[str, str]:
    """``(background, text colour)`` of a value on the colormap centred at 0, ``±vmax`` at its ends."""
    scale = vmax if vmax > 0 else 1.0
    rgba = colormaps[CMAP](Normalize(-scale, scale, clip=True)(value))
    luminance = 0.2126 * rgba[0] + 0.7152 * rgba[1] + 0.0722 * rgba[2]
    return to_hex(rgba), ("#ffffff" if luminance < 0.5 else "#111111")


def _number(value: float) -> str:
    return f"{value:+.3g}" if value else "0"


def strip_html(
    tokens: Sequence[str],
    generated: Sequence[bool],
    values: Sequence[float],
    vmax: float,
    kl: Sequence[float] | None = None,
    kl_max: float = 0.0,
    tooltips: Sequence[str] | None = None,
    mark_at: int | None = None,
    mark_title: str = "",
) -> str:
    """One ``<div class="strip">`` with a ``<span class="tok">`` per token (see the module docstring).

    ``mark_at`` puts a ``│`` mark before that token (where steering starts, say).
    """
    parts = ['<div class="strip">']
    for i, (text, gen, value) in enumerate(zip(tokens, generated, values, strict=True)):
        if gen and (i == 0 or not generated[i - 1]):
            parts.append('<span class="sep" title="the generated continuation starts here">▸</span>')
        if mark_at is not None and i == mark_at:
            parts.append(f'<span class="mark" title="{html.escape(mark_title)}">│</span>')
        background, colour = value_colour(value, vmax)
        body = "".join(
            f'<i class="ws">{html.escape(piece)}</i>' if mark else html.escape(piece)
            for piece, mark in token_segments(text)
        )
        bar = ""
        if kl is not None:
            height = KL_BAR_PX * min(kl[i] / kl_max, 1.0) if kl_max > 0 else 0.0
            bar = f'<span class="kb"><span class="k" style="height:{height:.2f}px"></span></span>'
        title = html.escape(tooltips[i] if tooltips is not None else f"{i}: {_number(value)}")
        parts.append(
            f'<span class="tok{" gen" if gen else ""}" title="{title}"><span class="t" '
            f'style="background:{background};color:{colour}">{body}</span>{bar}</span>'
        )
        if "\n" in text:
            parts.append("<br>")
    parts.append("</div>")
    return "".join(parts)


def legend_html(value_label: str, vmax: float, kl_label: str | None = None, kl_max: float = 0.0) -> str:
    """The scales: the colormap from ``-vmax`` to ``+vmax``, the KL bar heights, the generated-token key."""
    stops = ", ".join(value_colour(v, 1.0)[0] for v in np.linspace(-1.0, 1.0, 11))
    parts = [
        '<div class="legend">',
        f"<span>{html.escape(value_label)}:</span><span>{_number(-vmax)}</span>"
        f'<span class="grad" style="background:linear-gradient(90deg, {stops})"></span>'
        f"<span>{_number(vmax)}</span>",
    ]
    if kl_label is not None:
        samples = "".join(
            f'<span class="kitem"><span class="kbar" style="height:{KL_BAR_PX * f:.1f}px"></span>'
            f"{kl_max * f:.3g}</span>"
            for f in (0.25, 0.5, 1.0)
        )
        parts.append(f"<span>bar under token: {html.escape(kl_label)}</span>{samples}")
    parts.append('<span><span class="gkey">bold</span> = generated (after ▸)</span></div>')
    return "".join(parts)


def html_page(body: str, standalone: bool, title: str = "tlsteer token view") -> str:
    """``body`` with the view's style: a fragment (for notebooks) or a whole UTF-8 page."""
    fragment = f'<div class="tlsteer-tv"><style>{_STYLE}</style>{body}</div>'
    if not standalone:
        return fragment
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title></head>'
        f'<body style="margin:12px;background:#fff">{fragment}</body></html>\n'
    )


@dataclass(frozen=True)
class Row:
    """One series of per-token values: one HTML strip, one bar panel.

    ``other`` is a second series of the same quantity (the other run), shown in each token's
    tooltip and as short black ticks over the bars, named ``other_label``; ``values_label`` names
    the bars in the panel's legend.
    """

    label: str
    values: tuple[float, ...]
    other: tuple[float, ...] | None = None
    other_label: str = ""
    values_label: str = ""


KL_LABEL = "KL(unsteered ‖ steered) of the next token, nats"


def _check_vmax(vmax: Any, values: Sequence[float]) -> float:
    if vmax is None:
        return max((abs(v) for v in scale_values(values)), default=0.0) or 1.0
    value = check_multiplier(vmax, "vmax")
    if value <= 0:
        raise ValueError(f"vmax must be a number > 0 (the value at the colormap's ends), got {vmax!r}")
    return value


def view_html(
    title: str,
    tokens: Sequence[str],
    generated: Sequence[bool],
    rows: Sequence[Row],
    kl: Sequence[float] | None,
    mark_at: int,
    vmax: Any = None,
    standalone: bool = False,
) -> str:
    """A titled view: per row a strip and its legend, KL bars under the tokens when ``kl`` is given.

    ``vmax`` is the value at the colormap's ends (default: each row's largest ``|value|`` after
    the first token, see :func:`scale_values`);
    ``mark_at`` (where steering starts) gets a mark when it is inside the sequence but not 0.
    """
    kl_max = max(kl, default=0.0) if kl is not None else 0.0
    mark = (mark_at, f"steering starts at token {mark_at}") if 0 < mark_at < len(tokens) else (None, "")
    parts = [f'<div class="head"><b>{html.escape(title)}</b></div>']
    shared = split_characters(tokens)
    for row in rows:
        scale = _check_vmax(vmax, row.values)
        tips = []
        for i, (text, value) in enumerate(zip(tokens, row.values, strict=True)):
            tip = f"{i}: {text!r}{' (generated)' if generated[i] else ''}"
            tip += f", part of {shared[i]}" if shared[i] else ""
            tip += f" | {row.label} {value:+.4g}"
            tip += f" ({row.other_label} {row.other[i]:+.4g})" if row.other is not None else ""
            tips.append(tip + (f" | KL {kl[i]:.4g}" if kl is not None else ""))
        if len(rows) > 1:
            top = max(row.values, default=0.0)
            parts.append(f'<div class="head row">{html.escape(row.label)} (max {top:.3g})</div>')
        parts.append(strip_html(tokens, generated, row.values, scale, kl, kl_max, tips, *mark))
        label = row.label
        if row.values and abs(row.values[0]) > scale:
            label += f" (token 0, at {row.values[0]:.4g}, is off the scale)"
        parts.append(legend_html(label, scale, KL_LABEL if kl is not None else None, kl_max))
    return html_page("".join(parts), standalone)


def view_figure(
    title: str,
    tokens: Sequence[str],
    generated: Sequence[bool],
    rows: Sequence[Row],
    kl: Sequence[float] | None,
    mark_at: int,
    path: str | Path | None = None,
) -> Figure:
    """One bar panel per row, then the KL panel when ``kl`` is given (see :func:`bars_figure`)."""
    panels = [
        Panel(r.label, r.values, overlay=r.other, overlay_label=r.other_label, bar_label=r.values_label)
        for r in rows
    ]
    if kl is not None:
        panels.append(Panel("KL(unsteered‖steered)\nnext token, nats", tuple(kl), diverging=False))
    return bars_figure(tokens, generated, panels, title, mark_at if mark_at > 0 else None, path)


@dataclass(frozen=True)
class Panel:
    """One bar panel: ``values`` per token, diverging (coloured by sign) or KL (one colour).

    ``overlay`` draws a second series as short black ticks over the bars, ``overlay_label`` in
    the panel's legend; ``bar_label`` names the bars there.
    """

    label: str
    values: tuple[float, ...]
    diverging: bool = True
    overlay: tuple[float, ...] | None = None
    overlay_label: str = ""
    bar_label: str = ""


def bars_figure(
    tokens: Sequence[str],
    generated: Sequence[bool],
    panels: Sequence[Panel],
    title: str,
    mark_at: int | None = None,
    path: str | Path | None = None,
) -> Figure:
    """Aligned bar panels over token index, token labels on the shared x axis; a PNG at ``path``."""
    n = len(tokens)
    fig = Figure(figsize=(min(max(7.0, 0.17 * n + 1.8), 40.0), 1.2 + 2.1 * len(panels)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    x = np.arange(n)
    n_prompt = next((i for i, g in enumerate(generated) if g), n)
    for ax, panel in zip(axes, panels, strict=True):
        values = np.asarray(panel.values, dtype=float)
        overlay = np.asarray(panel.overlay if panel.overlay is not None else (), dtype=float)
        kept = np.concatenate([scale_values(values), scale_values(overlay)])
        low, high = min(0.0, float(kept.min())), max(0.0, float(kept.max()))
        pad = 0.08 * (high - low) or 1.0
        low, high = low - pad * (low < 0), high + pad
        if panel.diverging:
            vmax = float(np.abs(scale_values(values)).max()) or 1.0  # as in the HTML strip
            colours = [value_colour(float(v), vmax)[0] for v in values]
            ax.bar(x, values, width=0.85, color=colours, edgecolor="#666", linewidth=0.3)
            ax.axhline(0.0, color="#444", linewidth=0.6)
        else:
            ax.bar(x, values, width=0.85, color=KL_COLOUR)
        ax.set_ylim(low, high)
        cut = sorted({float(v) for v in (values[:1].tolist() + overlay[:1].tolist()) if not low <= v <= high})
        if cut:  # the first token (an attention sink, say) is off the scale: write its value
            y, va, dy = (high, "top", -2) if cut[-1] > high else (low, "bottom", 2)
            text = "token 0: " + ", ".join(f"{v:.4g}" for v in cut) + " (off scale)"
            box = {"facecolor": "white", "edgecolor": "#999", "linewidth": 0.5, "pad": 1.5}
            ax.annotate(
                text, (0.4, y), xytext=(4, dy), textcoords="offset points", fontsize=7, va=va, bbox=box
            )
        handles = []
        if panel.bar_label:  # a neutral key: a bar's colour is its value's sign and size
            handles.append(Patch(facecolor="#bbb", edgecolor="#666", linewidth=0.3, label=panel.bar_label))
        if panel.overlay is not None:
            kw = {"linestyle": "none", "marker": "_", "markersize": 7, "mew": 1.6, "color": "black"}
            handles += ax.plot(x, panel.overlay, label=panel.overlay_label, **kw)
        if n_prompt < n:
            ax.axvspan(n_prompt - 0.5, n - 0.5, color="#000", alpha=0.05, linewidth=0)
            ax.axvline(n_prompt - 0.5, color="#555", linestyle="--", linewidth=0.8)
        if mark_at is not None and 0 < mark_at < n:
            ax.axvline(mark_at - 0.5, color=KL_COLOUR, linestyle=":", linewidth=1.0)
        ax.set_ylabel(panel.label, fontsize=9)
        ax.grid(axis="y", color="#ddd", linewidth=0.5)
        ax.set_axisbelow(True)
        if handles:
            kw = {"loc": "lower right", "bbox_to_anchor": (1.0, 1.0), "borderaxespad": 0.1}
            ax.legend(handles=handles, fontsize=8, ncols=2, frameon=False, **kw)
    fig.suptitle(textwrap.fill(title, max(40, int(13 * fig.get_figwidth()))), fontsize=10, x=0.01, ha="left")
    step = max(1, int(np.ceil(n / 150)))
    shown = x[::step]
    axes[-1].set_xticks(shown)
    axes[-1].set_xticklabels(
        [token_label(tokens[int(i)]) for i in shown], rotation=90, fontsize=8, family="monospace"
    )
    for label, i in zip(axes[-1].get_xticklabels(), shown, strict=True):
        if generated[i]:
            label.set_fontweight("bold")
    axes[-1].set_xlim(-0.6, n - 0.4)
    axes[-1].set_xlabel(
        "token (bold: generated, after the dashed line; dotted line: steering starts)", fontsize=8
    )
    if path is not None:
        fig.savefig(str(path), format="png", dpi=110)
    return fig
