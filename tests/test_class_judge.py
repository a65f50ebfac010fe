"""The judges: exact behaviour with a planted embedder, the degenerate-text detector on planted and
fluent texts, whether each built-in set's judge deserves a verdict, and the concept judges on texts
unlike their own (MiniLM)."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pytest

import tlsteer
from tlsteer.classes import CLASS_DATASETS
from tlsteer.eval.generation import Generation
from tlsteer.eval.judge import (
    MIN_JUDGE_ACCURACY,
    OTHER,
    ClassJudge,
    ConceptJudge,
    builtin_judge,
    class_judge,
    degenerate,
    judge_report,
    score_generations,
)

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


def test_predict_calls_a_degenerate_text_other_and_keeps_k_columns():
    judge = ClassJudge.train(keyword_texts(), embedder=KeywordEmbedder())
    texts = ["a cloud", "apple apple apple", "", "the boat", "<|im_end|> a boat"]
    assert judge.predict(texts) == ["cloud", OTHER, OTHER, "boat", OTHER]
    assert judge.predict_proba(texts).shape == (5, 3) and OTHER not in judge.classes
    assert judge.graded(texts).shape == (5,)
    # a text called other counts as wrong
    assert judge.accuracy({"apple": ["apple apple apple", "an apple"]}) == 0.5


def test_surface_features_find_a_class_the_embedding_cannot_see():
    class Blind:
        def encode(self, texts):
            return np.ones((len(texts), 4))

    texts = {
        "loud": [f"Stop that right now, number {i}!!" for i in range(12)],
        "soft": [f"please stop that, number {i}..." for i in range(12)],
    }
    seeing = ClassJudge.train(texts, embedder=Blind())
    blind = ClassJudge.train(texts, embedder=Blind(), surface=0)
    assert seeing.surface == 1.0 and seeing.held_out_accuracy == 1.0
    assert blind.surface == 0.0 and blind.held_out_accuracy == 0.5
    assert seeing.predict(["Now, number 99!!", "please, number 99..."]) == ["loud", "soft"]


def test_concept_judge_names_its_labels_and_other():
    pos = [f"an apple, number {i}" for i in range(10)]
    neg = [f"a boat, number {i}" for i in range(10)]
    judge = ConceptJudge.train("fruit", pos, neg, embedder=KeywordEmbedder(), labels=("fruit", "vessel"))
    assert judge.labels == ("fruit", "vessel") and judge.held_out_accuracy == 1.0
    assert judge.predict(["one apple", "one boat", "boat boat boat"]) == ["fruit", "vessel", OTHER]
    with pytest.raises(ValueError, match="labels must be two different names other than 'other'"):
        ConceptJudge.train("fruit", pos, neg, embedder=KeywordEmbedder(), labels=("fruit", "other"))
    with pytest.raises(ValueError, match=r"surface must be a weight >= 0 \(0: the embedding alone\), got -1"):
        ConceptJudge.train("fruit", pos, neg, embedder=KeywordEmbedder(), surface=-1)


# Degenerate texts, planted; the quoted ones are steered generations saved in benchmarks/results
# (sae_layer_choice.json, class_transfer_speaking_styles.json).
DEGENERATE = [
    ("yes yes yes", "repetition"),
    ("Aye, aye, aye, aye, aye, aye, aye, aye, aye, aye, aye", "repetition"),
    ("I'm a bitmommom. I'm a bitmommom. I'm a bitmommom.", "repetition"),
    ("I'm a little bit of a little. I'm a little. I'm a little. I'm a little.", "repetition"),
    ("My little and on-mentinaususususususususususususususususus", "repetition"),
    ("hey i just got some frea i3333333333333333", "repetition"),
    ("I'm minkin\n\nd" + "\n" * 16, "repetition"),
    (
        "use a bit of heat to melt the wax, then use a bit of heat to melt the wax, then use a bit of",
        "repetition",
    ),
    ("clean the pan, clean the pan, clean the pan, clean the pan, clean the pan, clean", "repetition"),
    ("The museum is right next to the library.\n\nThe is to to to to to to to to to to", "repetition"),
    ("I'm not sure. I'm not sure.", "repetition"),  # 1 of 4 word 3-grams repeats: 0.25, the threshold
    ("no no no maybe yes", "repetition"),  # one word is 3 of 5 words: 0.6, the threshold
    ("hahahahaha", "repetition"),  # 5 copies over 10 characters
    ("", "empty"),
    ("   \n\t ", "empty"),
    ("...", "empty"),
    ("12 34 56", "empty"),
    ("The answer \ufffd is here", "broken"),
    ("Sure! <|im_end|><|im_start|>assistant", "broken"),
    ("</s> The weather today", "broken"),
    ("<div><span>Hello</span></div>", "broken"),
    ("x = {1: [2, 3], 4: (5, 6)} # $$", "broken"),
]

FLUENT_EDGES = [
    "Wait wait wait, say that again.",  # one word is half the words
    "no no no maybe yes sure",  # 3 of 6
    "hahahaha",  # 4 copies
    "The parcel came today, and it looks lovely\ufffd",  # a multi-byte character cut at the end
    "Room 512. Non-smoking. Key's here.",  # letters 0.73 of the characters
    "<b>Note</b>: the shop opens at nine.",  # 2 tags
    "Yes.",
]


@pytest.mark.parametrize(("text", "reason"), DEGENERATE)
def test_degenerate_finds_planted_degenerate_texts(text, reason):
    assert degenerate(text) == reason


def test_degenerate_passes_fluent_texts_at_its_thresholds():
    assert [degenerate(t) for t in FLUENT_EDGES] == [None] * len(FLUENT_EDGES)
    with pytest.raises(TypeError, match="degenerate takes one text"):
        degenerate(["yes yes yes"])


def builtin_fluent_texts() -> list[str]:
    """Every judge text and example reply of every built-in class set, the probe texts and the
    concept judge's texts."""
    texts = []
    for name in CLASS_DATASETS:
        ds = tlsteer.load_class_dataset(name)
        texts += [t for c in ds.classes for t in ds.judge_texts[c]]
        texts += [e.response for c in ds.classes for e in ds.examples[c]]
    for file in ("judge_transfer.json", "concept_judge.json"):
        data = json.loads((resources.files("tlsteer") / "datasets" / file).read_text())
        texts += [t for v in data.values() if isinstance(v, dict) for ts in v.values() for t in ts]
    return texts


def test_no_fluent_builtin_text_is_called_degenerate():
    texts = builtin_fluent_texts()
    flagged = [t for t in texts if degenerate(t)]
    assert len(texts) >= 4000 and flagged == []  # false-positive rate 0


def toy_set(responses=None, judge_texts=None):
    responses = responses or {w: [f"reply {i} about {w}" for i in range(4)] for w in WORDS}
    return tlsteer.ClassDataset.from_dict(
        {
            "classes": list(WORDS),
            "ordinal": True,
            "examples": {
                w: [{"prompt": f"Q{i}", "response": r} for i, r in enumerate(rs)]
                for w, rs in responses.items()
            },
            "judge_texts": judge_texts or {w: [f"note {i} about one {w}" for i in range(12)] for w in WORDS},
        },
        name="toy",
    )


def test_judge_report_says_whether_a_set_qualifies():
    report = judge_report(toy_set(), KeywordEmbedder())
    assert report.qualifies and report.why == "" and report.dataset == "toy"
    assert (report.held_out, report.examples, report.degenerate_false_positive) == (1.0, 1.0, 0.0)
    assert report.spearman_examples is not None and report.spearman_examples > 0.9
    assert report.to_dict()["qualifies"] is True
    # a degenerate example reply counts against the judge and shows as a false positive
    responses = {w: [f"reply {i} about {w}" for i in range(4)] for w in WORDS}
    responses["apple"][0] = "apple apple apple"
    broken = judge_report(toy_set(responses), KeywordEmbedder())
    assert broken.examples == pytest.approx(11 / 12)
    assert broken.degenerate_false_positive == pytest.approx(1 / (36 + 12))
    # an uninformative judge leaves the verdict, and says why
    same = {w: [f"same text {i}" for i in range(10)] for w in WORDS}
    weak = judge_report(toy_set(judge_texts=same), KeywordEmbedder())
    assert not weak.qualifies and weak.held_out < MIN_JUDGE_ACCURACY
    assert weak.why.startswith(f"held-out accuracy {weak.held_out:.3f} < 0.85")
    strict = judge_report(toy_set(responses), KeywordEmbedder(), minimum=0.95)
    assert strict.why == f"example-reply accuracy {11 / 12:.3f} < 0.95"


def test_judge_report_bad_input():
    other = ClassJudge.train({"a": ["x"] * 5, "b": ["y"] * 5}, embedder=KeywordEmbedder())
    with pytest.raises(ValueError, match=r"the judge's classes \['a', 'b'\] are not toy's"):
        judge_report(toy_set(), judge=other)
    with pytest.raises(ValueError, match="minimum must be an accuracy in"):
        judge_report(toy_set(), KeywordEmbedder(), minimum=0)
    with pytest.raises(ValueError, match="'other' names a judge's degenerate-text outcome"):
        ClassJudge.train({"other": ["x"] * 5, "b": ["y"] * 5}, embedder=KeywordEmbedder())
    with pytest.raises(ValueError, match="surface must be a weight >= 0"):
        ClassJudge.train(keyword_texts(), embedder=KeywordEmbedder(), surface=float("nan"))


def test_score_generations_reports_the_fluent_share(tiny_llama):
    class Fixed:
        def predict_proba(self, texts):
            return np.array([0.9, 0.2, 0.5])[: len(texts)]

    ids = tuple(tlsteer.tokenize(tiny_llama, "hi"))
    texts = ["A calm reply.", "yes yes yes", "Fine, thanks."]
    gens = [Generation("hi", 1.0, t, ids, tuple(tlsteer.tokenize(tiny_llama, t))) for t in texts]
    scores = score_generations(tiny_llama, Fixed(), gens)
    assert scores.judge == pytest.approx(1.6 / 3) and scores.degenerate == pytest.approx(1 / 3)
    assert scores.judge_fluent == pytest.approx(0.7)


@pytest.fixture(scope="module")
def embedder():
    pytest.importorskip("sentence_transformers", reason="the judge extra is not installed")
    from tlsteer.eval.judge import load_embedder

    return load_embedder()


# measured (seed 0; benchmarks/class_judges.py): held-out / on the example replies / on the probe
# texts of judge_transfer.json (None: the set has none), and whether the judge deserves a verdict
MEASURED = {
    "speaking_styles": (0.981, 0.953, 0.969, True),
    "aggression": (0.882, 0.859, 0.875, True),
    "attitude_domain": (0.853, 0.943, 0.854, True),
    "emotions": (0.759, 0.815, None, False),
}


@pytest.mark.parametrize("name", CLASS_DATASETS)
def test_builtin_class_judges_hold_on_their_split_on_the_examples_and_on_probe_texts(embedder, name):
    ds = tlsteer.load_class_dataset(name)
    judge = class_judge(ds, embedder)
    # the examples are texts the judge never saw, written as replies to other prompts; the probe
    # texts were written unlike the judge texts (other forms and topics) and are never trained on
    report = judge_report(ds, judge=judge)
    probe = json.loads((resources.files("tlsteer") / "datasets" / "judge_transfer.json").read_text())
    on_probe = judge.accuracy(probe[name]) if name in probe else None
    print(f"{name}: held-out {report.held_out:.3f}, examples {report.examples:.3f}, probe {on_probe}")
    assert judge.flagged == (judge.held_out_accuracy < MIN_JUDGE_ACCURACY)
    # the same seed and texts give the same numbers: a drift means the texts or the embedder changed
    held_out, examples, probe_accuracy, qualifies = MEASURED[name]
    assert (report.held_out, report.examples) == pytest.approx((held_out, examples), abs=0.011)
    assert on_probe == (None if probe_accuracy is None else pytest.approx(probe_accuracy, abs=0.011))
    assert report.qualifies == qualifies and report.degenerate_false_positive == 0.0
    assert report.qualifies == (min(report.held_out, report.examples) >= MIN_JUDGE_ACCURACY)
    if ds.ordinal:  # the graded judge against the ordinal labels (measured 0.856)
        assert report.spearman_examples == pytest.approx(0.856, abs=0.011)
    # the examples' texts stay out of the judge's training texts
    examples = {e.response for c in ds.classes for e in ds.examples[c]}
    assert not examples & {t for c in ds.classes for t in ds.judge_texts[c]}


def test_yes_yes_yes_is_no_pirate(embedder):
    judge = class_judge(tlsteer.load_class_dataset("speaking_styles"), embedder)
    assert judge.predict(["yes yes yes", "Arr, me hearties, hoist the mainsail and fetch the rum!"]) == [
        OTHER,
        "pirate",
    ]


def balanced(judge, has, lacks):
    return (
        float((judge.predict_proba(has) > 0.5).mean()) + float((judge.predict_proba(lacks) <= 0.5).mean())
    ) / 2


def test_concept_judges_hold_on_texts_unlike_their_own(embedder):
    """As a new user would try them: sentiment on the emotions set (joy positive, sadness and anger
    negative), formality on the speaking-styles set's formal and casual replies, both on the probe
    texts of judge_transfer.json. Measured in benchmarks/class_judges.py."""
    transfer = json.loads((resources.files("tlsteer") / "datasets" / "judge_transfer.json").read_text())
    emotions, styles = tlsteer.load_class_dataset("emotions"), tlsteer.load_class_dataset("speaking_styles")

    def replies(ds, classes):
        return [e.response for c in classes for e in ds.examples[c]]

    sentiment, formality = builtin_judge("sentiment", embedder), builtin_judge("formality", embedder)
    joy = float((sentiment.predict_proba(replies(emotions, ["joy"])) > 0.5).mean())
    on_emotions = balanced(sentiment, replies(emotions, ["joy"]), replies(emotions, ["sadness", "anger"]))
    on_styles = balanced(formality, replies(styles, ["formal"]), replies(styles, ["casual"]))
    probe = {
        c: balanced(j, *transfer[c].values()) for c, j in (("sentiment", sentiment), ("formality", formality))
    }
    print(
        f"joy {joy:.3f}, sentiment on emotions {on_emotions:.3f}, "
        f"formality on styles {on_styles:.3f}, probe {probe}"
    )
    assert formality.held_out_accuracy >= MIN_JUDGE_ACCURACY and formality.surface == 1.0
    assert on_styles >= 0.9 and probe["formality"] >= 0.95  # measured 0.927, 1.0
    # sentiment: joyful replies called positive 0.58 before its texts were widened, now 0.933
    assert joy >= 0.85 and on_emotions >= 0.85  # measured 0.856
    # situations without emotion words still defeat it on the probe (measured 0.725): the
    # sentiment judge does not meet the standard everywhere (benchmarks/class_judges.py says so)
    assert probe["sentiment"] >= 0.7
