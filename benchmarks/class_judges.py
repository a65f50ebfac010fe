"""Whether each built-in judge deserves a verdict: on its own held-out split, on texts unlike its own.

For each built-in class set, the K-class MiniLM judge (``tlsteer.eval.class_judge``: sentence
embedding beside surface n-grams) is trained on the set's judge texts with 30% held out (seeds 0
to ``--seeds`` - 1) and scored on:

- its held-out split;
- the example replies of the set (texts that build vectors; the judge never sees them);
- the probe texts of ``tlsteer/datasets/judge_transfer.json`` where the set has some (written
  unlike the judge texts: other forms and topics; never trained on).

For ordinal sets, also the Spearman correlation of the graded level with the true level on the
examples and the probe. Seed 0's judge gets its ``judge_report`` (held-out and example-reply
accuracy both >= 0.85, else the set leaves the verdict), and the same judge on the embedding alone
(``surface=0``) is scored beside it. ``degenerate`` counts the fluent texts of every built-in set
(judge texts, example replies, probe texts, concept judge texts) that ``tlsteer.eval.judge.degenerate``
flags. The concept judges (sentiment, formality) are scored on their probe texts and on texts
unlike their training texts, as a new user would try them: sentiment on the emotions set (joy
positive; sadness and anger negative) and on the answers of the built-in sentiment A/B items;
formality on the speaking-styles set's formal and casual texts and on the formality A/B answers.
With ``--tiny`` the judges embed with a hashing stand-in (no model). Writes
``benchmarks/results/class_judges.json``.

    python benchmarks/class_judges.py [--seeds 8] [--tiny]
"""

from __future__ import annotations

import json
import re
import time
from importlib import resources
from pathlib import Path

import _common as common
import numpy as np

from tlsteer.classes import CLASS_DATASETS
from tlsteer.data import builtin_dataset_path, load_ab_items
from tlsteer.eval.judge import (
    MIN_JUDGE_ACCURACY,
    SURFACE_WEIGHT,
    builtin_judge,
    class_judge,
    degenerate,
    judge_report,
)
from tlsteer.profile import spearman

TINY = {"seeds": 1}
CONCEPTS = {"sentiment": ("positive", "negative"), "formality": ("formal", "casual")}


class MemoEmbedder:
    """Embeds each distinct text once: the seeds' judges share the embeddings."""

    def __init__(self, embedder) -> None:
        self.embedder, self.memo = embedder, {}

    def encode(self, texts, /):
        todo = [t for t in dict.fromkeys(texts) if t not in self.memo]
        if todo:
            self.memo.update(zip(todo, np.asarray(self.embedder.encode(todo)), strict=True))
        return np.stack([self.memo[t] for t in texts])


def judge_row(judge, ds, examples: dict, probe: dict | None) -> dict:
    """A judge's accuracy on its held-out split, the set's example replies and the probe texts
    (and, for an ordinal set, the Spearman correlation of graded with true level on both)."""
    sources = {"examples": examples} | ({"probe": probe} if probe else {})
    row = {"held_out": judge.held_out_accuracy} | {k: judge.accuracy(v) for k, v in sources.items()}
    if ds.ordinal:
        for label, texts in sources.items():
            graded = np.concatenate([judge.graded(texts[c]) for c in ds.classes])
            levels = np.concatenate([[i] * len(texts[c]) for i, c in enumerate(ds.classes)])
            row[f"spearman_{label}"] = spearman(graded, levels)
    return row


def ab_answers(name: str) -> tuple[list[str], list[str]]:
    """The texts of the matching and of the other answer of a built-in A/B behaviour."""
    matching, other = [], []
    for item in load_ab_items(builtin_dataset_path(name)):
        choices = dict(re.findall(r"^\s*\(([A-Z])\)\s*(.+)$", item.question, flags=re.MULTILINE))
        matching.append(choices[item.matching.strip("()")])
        other.append(choices[item.not_matching.strip("()")])
    return matching, other


def unseen_texts(args) -> dict[str, dict[str, tuple[list[str], list[str]]]]:
    """Per concept, ``{source: (texts that have it, texts that lack it)}``, none trained on."""
    emotions = common.load_class_dataset(args, "emotions")
    styles = common.load_class_dataset(args, "speaking_styles")

    def replies(ds, classes):
        return [e.response for c in classes for e in ds.examples[c]]

    def judge_texts(ds, classes):
        return [t for c in classes for t in ds.judge_texts[c]]

    return {
        "sentiment": {
            "emotions_examples": (replies(emotions, ["joy"]), replies(emotions, ["sadness", "anger"])),
            "emotions_judge_texts": (
                judge_texts(emotions, ["joy"]),
                judge_texts(emotions, ["sadness", "anger"]),
            ),
            "ab_answers": ab_answers("sentiment"),
        },
        "formality": {
            "styles_examples": (replies(styles, ["formal"]), replies(styles, ["casual"])),
            "styles_judge_texts": (judge_texts(styles, ["formal"]), judge_texts(styles, ["casual"])),
            "ab_answers": ab_answers("formality"),
        },
    }


def concept_scores(judge, has: list[str], lacks: list[str], labels: tuple[str, str]) -> dict:
    """The share of each label's texts the judge calls right, and their mean (balanced accuracy)."""
    rates = {
        labels[0]: float((judge.predict_proba(has) > 0.5).mean()),
        labels[1]: float((judge.predict_proba(lacks) <= 0.5).mean()),
    }
    return rates | {"balanced": float(np.mean(list(rates.values())))}


def fluent_texts(args, probe: dict) -> dict[str, list[str]]:
    """Every fluent text of the built-in sets, by source."""
    out = {}
    for name in CLASS_DATASETS:
        ds = common.load_class_dataset(args, name)
        out[f"{name}/judge_texts"] = [t for c in ds.classes for t in ds.judge_texts[c]]
        out[f"{name}/examples"] = [e.response for c in ds.classes for e in ds.examples[c]]
    for name, texts in probe.items():
        if isinstance(texts, dict):
            out[f"probe/{name}"] = [t for ts in texts.values() for t in ts]
    concept = json.loads((resources.files("tlsteer") / "datasets" / "concept_judge.json").read_text())
    for name, texts in concept.items():
        out[f"concept_judge/{name}"] = [t for ts in texts.values() for t in ts]
    return out


def body(args) -> Path:
    start = time.perf_counter()
    embedder = MemoEmbedder(common.load_embedder(args))
    probe = json.loads((resources.files("tlsteer") / "datasets" / "judge_transfer.json").read_text())
    out = {"min_accuracy": MIN_JUDGE_ACCURACY, "surface_weight": SURFACE_WEIGHT, "sets": {}}
    fluent = fluent_texts(args, probe)
    flagged = {k: [t for t in v if degenerate(t)] for k, v in fluent.items()}
    n_fluent = sum(map(len, fluent.values()))
    out["degenerate"] = {
        "fluent_texts": n_fluent,
        "flagged": sum(map(len, flagged.values())),
        "false_positive_rate": sum(map(len, flagged.values())) / n_fluent,
        "flagged_texts": {k: v for k, v in flagged.items() if v},
        "texts_per_source": {k: len(v) for k, v in fluent.items()},
    }
    for name in CLASS_DATASETS:
        ds = common.load_class_dataset(args, name)
        examples = {c: [e.response for e in ds.examples[c]] for c in ds.classes}
        judges = [class_judge(ds, embedder, seed=seed) for seed in range(args.seeds)]
        rows = [judge_row(j, ds, examples, probe.get(name)) for j in judges]
        report = judge_report(ds, judge=judges[0])
        keys = list(rows[0])
        out["sets"][name] = {
            "seed_0": rows[0],
            "mean_over_seeds": {k: float(np.mean([r[k] for r in rows])) for k in keys},
            "report": report.to_dict(),
            "leaves_verdict": not report.qualifies,
            "embedding_only_seed_0": judge_row(
                class_judge(ds, embedder, seed=0, surface=0.0), ds, examples, probe.get(name)
            ),
            "judge_texts_per_class": {c: len(ds.judge_texts[c]) for c in ds.classes},
            "probe_texts_per_class": {c: len(probe[name][c]) for c in ds.classes} if name in probe else None,
        }
        common.log.info(
            "%s %s mean %s; %s",
            name,
            {k: round(v, 3) for k, v in rows[0].items()},
            {k: round(v, 3) for k, v in out["sets"][name]["mean_over_seeds"].items()},
            "qualifies" if report.qualifies else f"leaves the verdict ({report.why})",
        )
    out["concepts"] = {}
    for concept, labels in CONCEPTS.items():
        judge = builtin_judge(concept, embedder)
        sources = {"probe": (probe[concept][labels[0]], probe[concept][labels[1]])}
        sources |= unseen_texts(args)[concept]
        scores = {k: concept_scores(judge, has, lacks, labels) for k, (has, lacks) in sources.items()}
        out["concepts"][concept] = {
            "held_out": judge.held_out_accuracy,
            "n_test": judge.n_test,
            "surface": judge.surface,
            "transfer": scores["probe"]["balanced"],
            "unseen": scores,
            "meets_standard_everywhere": judge.held_out_accuracy >= MIN_JUDGE_ACCURACY
            and all(s["balanced"] >= MIN_JUDGE_ACCURACY for s in scores.values()),
        }
        common.log.info("%s %s", concept, out["concepts"][concept])
    out["seconds"] = round(time.perf_counter() - start, 1)
    return common.write_json(args.out / "class_judges.json", out)


def main(argv: list[str] | None = None) -> Path:
    p = common.parser(__doc__)
    p.add_argument("--seeds", type=int, default=8)
    return common.run(body, p, argv, TINY)


if __name__ == "__main__":
    main()
