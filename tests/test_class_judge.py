"""The K-class judge: exact behaviour with a planted embedder, and the built-in sets with MiniLM."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pytest

import tlsteer
from tlsteer.eval.judge import MIN_JUDGE_ACCURACY, ClassJudge, builtin_judge, class_judge

WORDS = ("apple", "boat", "cloud")


class KeywordEmbedder:
    """Embeds a text as the counts of three keywords: a judge on it must find the keyword."""

    def encode(self, texts):
        return np.array([[t.count(w) for w in WORDS] for t in texts], dtype=float)


def keyword_texts(n=12):
    return {w: [f"text {i} about {w} " * (1 + i % 2) for i in range(n)] for w in WORDS}


def test_class_judge_learns_planted_classes():
    judge = ClassJudge.train(keyword_texts(), embedder=KeywordEmbedder())
    assert judge.classes == WORDS and judge.held_out_accuracy == 1.0 and not judge.flagged
    assert judge.n_test == 3 * round(0.3 * 12) and judge.n_train == 36 - judge.n_test
    assert judge.predict(["a cloud", "the boat", "an apple"]) == ["cloud", "boat", "apple"]
    p = judge.predict_proba(["a cloud", "the boat"])
    assert p.shape == (2, 3) and np.allclose(p.sum(1), 1.0)
    graded = judge.graded(["an apple", "a cloud"])
    assert graded[0] < 1.0 < graded[1] and graded == pytest.approx(p_levels(judge, ["an apple", "a cloud"]))
    assert judge.accuracy({"apple": ["apple pie"], "boat": ["boat", "cloud"]}) == pytest.approx(2 / 3)


def p_levels(judge, texts):
    return [float(np.dot(row, np.arange(3))) for row in judge.predict_proba(texts)]


def test_an_uninformative_judge_is_flagged():
    texts = {w: [f"same text {i}" for i in range(10)] for w in WORDS}
    judge = ClassJudge.train(texts, embedder=KeywordEmbedder())
    assert judge.held_out_accuracy < MIN_JUDGE_ACCURACY and judge.flagged


def test_class_judge_bad_input():
    with pytest.raises(ValueError, match="at least 2 classes"):
        ClassJudge.train({"a": ["x"] * 5}, embedder=KeywordEmbedder())
    with pytest.raises(ValueError, match="class 'b' needs a list of at least 4 texts"):
        ClassJudge.train({"a": ["x"] * 5, "b": ["y"]}, embedder=KeywordEmbedder())
    judge = ClassJudge.train(keyword_texts(), embedder=KeywordEmbedder())
    with pytest.raises(ValueError, match="unknown class 'door'"):
        judge.accuracy({"door": ["a door"]})
    with pytest.raises(TypeError, match="not one string"):
        judge.predict_proba("a cloud")


@pytest.fixture(scope="module")
def embedder():
    pytest.importorskip("sentence_transformers", reason="the judge extra is not installed")
    from tlsteer.eval.judge import load_embedder

    return load_embedder()


# measured (seed 0): held-out / on the example replies / on the probe texts of judge_transfer.json
MEASURED = {
    "speaking_styles": (0.906, 0.854, 0.927),
    "aggression": (0.731, 0.646, 0.844),
    "attitude_domain": (0.853, 0.906, 0.854),
}


@pytest.mark.parametrize("name", tlsteer.classes.CLASS_DATASETS)
def test_builtin_class_judges_hold_on_their_split_on_the_examples_and_on_probe_texts(embedder, name):
    ds = tlsteer.load_class_dataset(name)
    judge = class_judge(ds, embedder)
    # the examples are texts the judge never saw, written as replies to other prompts; the probe
    # texts were written unlike the judge texts (other forms and topics) and are never trained on
    on_examples = judge.accuracy({c: [e.response for e in ds.examples[c]] for c in ds.classes})
    probe = json.loads((resources.files("tlsteer") / "datasets" / "judge_transfer.json").read_text())[name]
    on_probe = judge.accuracy(probe)
    print(f"{name}: held-out {judge.held_out_accuracy:.3f}, examples {on_examples:.3f}, probe {on_probe:.3f}")
    assert judge.flagged == (judge.held_out_accuracy < MIN_JUDGE_ACCURACY)
    # the same seed and texts give the same numbers: a drift means the texts or the embedder changed
    assert (judge.held_out_accuracy, on_examples, on_probe) == pytest.approx(MEASURED[name], abs=0.011)
    # the examples' texts stay out of the judge's training texts
    examples = {e.response for c in ds.classes for e in ds.examples[c]}
    assert not examples & {t for c in ds.classes for t in ds.judge_texts[c]}


def test_concept_judges_hold_on_texts_written_elsewhere(embedder):
    transfer = json.loads((resources.files("tlsteer") / "datasets" / "judge_transfer.json").read_text())
    for concept, (pos, neg) in {
        "sentiment": ("positive", "negative"),
        "formality": ("formal", "casual"),
    }.items():
        judge = builtin_judge(concept, embedder)
        p_pos = judge.predict_proba(transfer[concept][pos])
        p_neg = judge.predict_proba(transfer[concept][neg])
        accuracy = (float((p_pos > 0.5).mean()) + float((p_neg < 0.5).mean())) / 2
        print(f"{concept}: held-out {judge.held_out_accuracy:.3f}, transfer accuracy {accuracy:.3f}")
        assert judge.held_out_accuracy >= 0.85
        # measured (benchmarks/class_judges.py): formality 0.9625, sentiment 0.75 (situations without
        # emotion words defeat it)
        assert accuracy >= (0.9 if concept == "formality" else 0.7)
