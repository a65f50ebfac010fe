"""Looking at features: where one fires (top examples, density), what it writes, and a bar chart.

:func:`inspect_feature` streams texts in left-padded batches, encodes every evaluated token at the
hook of a feature dictionary (an SAE or any :class:`~tlsteer.dictionary.FeatureDictionary`) and
keeps only a heap of the ``k`` top-activating tokens; it also counts how often the
feature fires and reads its decoder row through the unembedding (logit lens). :func:`plot_feature_vector`
draws a FeatureVector's largest features, labelled with the tokens they promote (matplotlib is
imported only there).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformer_lens import HookedTransformer

from tlsteer._types import check_batch_size, is_int
from tlsteer.dictionary import check_feature_ids
from tlsteer.reading import hook_batches, token_mask
from tlsteer.sae.adapter import as_feature_dictionary, logit_lens
from tlsteer.sae.features import FeatureVector
from tlsteer.tokens import decode_tokens, tokenize_prompts

__all__ = ["FeatureExample", "FeatureReport", "inspect_feature", "plot_feature_vector"]


@dataclass(frozen=True)
class FeatureExample:
    """One token where the feature fired: text, position in it, token, activation, context."""

    text_index: int
    position: int
    token: str
    activation: float
    context: str
    """The text around the token, the token itself between ``[[`` and ``]]``."""


@dataclass(frozen=True)
class FeatureReport:
    """What :func:`inspect_feature` found about one feature.

    ``density`` is the share of evaluated tokens where the feature is nonzero, out of
    ``n_tokens`` (the first ``skip_first`` positions of each text are not evaluated).
    ``promoted`` and ``suppressed`` are the decoder row's logit lens, ``decoder_rows(feature) @ W_U``.
    """

    feature: int
    hook_name: str
    examples: tuple[FeatureExample, ...]
    density: float
    n_tokens: int
    skip_first: int
    promoted: tuple[tuple[str, float], ...]
    suppressed: tuple[tuple[str, float], ...]

    def __str__(self) -> str:
        lines = [
            f"feature {self.feature} at {self.hook_name}: fires on {self.density:.2%} of "
            f"{self.n_tokens} tokens",
            "promotes:   " + ", ".join(f"{t!r} {v:+.2f}" for t, v in self.promoted),
            "suppresses: " + ", ".join(f"{t!r} {v:+.2f}" for t, v in self.suppressed),
            "top activations:" if self.examples else "top activations: none (never fired)",
        ]
        lines += [
            f"  {e.activation:8.3f}  text {e.text_index} pos {e.position}: {e.context!r}"
            for e in self.examples
        ]
        return "\n".join(lines)


def _check_int(value: Any, name: str, low: int) -> int:
    if not is_int(value) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def _context(model: HookedTransformer, ids: Sequence[int], pos: int, window: int) -> str:
    before = decode_tokens(model, list(ids[max(0, pos - window) : pos]))
    after = decode_tokens(model, list(ids[pos + 1 : pos + 1 + max(1, window // 2)]))
    return f"{before}[[{decode_tokens(model, [ids[pos]])}]]{after}"


def inspect_feature(
    model: HookedTransformer,
    dictionary: object,
    feature: int,
    texts: Sequence[str],
    *,
    k: int = 10,
    batch_size: int = 8,
    hook_name: str | None = None,
    skip_first: int = 1,
    window: int = 8,
) -> FeatureReport:
    """Top-activating tokens (with context), density and logit lens of one feature.

    Args:
        model: A ``HookedTransformer`` with a tokenizer.
        dictionary: A sae-lens SAE or a :class:`~tlsteer.dictionary.FeatureDictionary` that fits
            the model.
        feature: The feature id.
        texts: Texts to scan (streamed; only the top ``k`` tokens are kept).
        k: How many top tokens, and how many promoted and suppressed tokens.
        batch_size: Texts per forward pass.
        hook_name: Where an SAE reads, if its metadata does not say.
        skip_first: Leave out the first positions of each text (attention sinks).
        window: Tokens of context before each top token (half as many after).

    Example:
        >>> print(inspect_feature(model, sae, 123, tlsteer.load_neutral_text()))  # doctest: +SKIP
    """
    found = as_feature_dictionary(dictionary, hook_name, model)
    hook = found.hook_name
    (feature,) = check_feature_ids(feature, found.width)
    k, batch_size = _check_int(k, "k", 1), check_batch_size(batch_size)
    skip_first, window = _check_int(skip_first, "skip_first", 0), _check_int(window, "window", 0)
    ids = tokenize_prompts(model, texts)
    heap: list[tuple[float, int, int]] = []  # (activation, -text, -position): the k largest survive
    fired = counted = 0
    with torch.no_grad():
        for batch, tokens, resid in hook_batches(model, hook, ids, batch_size):
            width = tokens.shape[1]
            chosen = token_mask([len(ids[i]) for i in batch], width, skip_first, tokens.device)
            acts = found.encode(resid[chosen])[:, feature].float().cpu()
            where = chosen.nonzero().cpu()
            fired += int((acts != 0).sum())
            counted += acts.shape[0]
            top = acts.topk(min(k, acts.shape[0]))
            for value, j in zip(top.values.tolist(), top.indices.tolist(), strict=True):
                if value == 0:
                    continue
                row, col = int(where[j, 0]), int(where[j, 1])
                text = batch[row]
                item = (value, -text, -(col - (width - len(ids[text]))))
                (heapq.heappush if len(heap) < k else heapq.heappushpop)(heap, item)
    if counted == 0:
        raise ValueError(f"no tokens to inspect: every text has at most skip_first={skip_first} tokens")
    examples = []
    for value, neg_text, neg_pos in sorted(heap, reverse=True):
        text, pos = -neg_text, -neg_pos
        token = decode_tokens(model, [ids[text][pos]])
        examples.append(FeatureExample(text, pos, token, value, _context(model, ids[text], pos, window)))
    row = found.decoder_rows(torch.tensor([feature]))[0]
    promoted, suppressed = logit_lens(model, row, k)
    return FeatureReport(
        feature,
        hook,
        tuple(examples),
        fired / counted,
        counted,
        skip_first,
        tuple(promoted),
        tuple(suppressed),
    )


def plot_feature_vector(
    fv: FeatureVector,
    model: HookedTransformer,
    dictionary: object,
    k: int = 20,
    path: str | Path | None = None,
) -> Any:
    """A bar chart of the ``k`` largest features of ``fv``, each labelled with its top 3 tokens.

    Returns a matplotlib ``Figure`` (no pyplot); writes a PNG when ``path`` is given.

    Example:
        >>> fig = plot_feature_vector(fv, model, sae, k=15)  # doctest: +SKIP
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    table = fv.table(model, dictionary, k=_check_int(k, "k", 1), n_tokens=3)
    fig = Figure(figsize=(7.0, 1.0 + 0.3 * max(len(table), 1)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    labels = [f"{f}: {toks}" for f, toks in zip(table["feature"], table["top_tokens"], strict=True)]
    values = table["value"].tolist()
    ax.barh(range(len(values)), values, color=["tab:blue" if v >= 0 else "tab:red" for v in values])
    ax.set_yticks(range(len(values)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0.0, color="black", linewidth=0.5)
    ax.set_xlabel("feature value")
    ax.set_title(f"{fv.formula or 'feature vector'} at {fv.hook_name}: {len(fv.features)} nonzero features")
    if path is not None:
        fig.savefig(str(path), dpi=120)
    return fig
