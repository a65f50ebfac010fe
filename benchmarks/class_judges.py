"""How far each built-in judge holds: on its own held-out split, on texts unlike its own, by seed.

For each built-in class set, the K-class MiniLM judge (``tlsteer.eval.class_judge``) is trained on
the set's judge texts with 30% held out (seeds 0 to ``--seeds`` - 1) and scored on:

- its held-out split;
- the example replies of the set (texts that build vectors; the judge never sees them);
- the probe texts of ``tlsteer/datasets/judge_transfer.json`` (written unlike the judge texts:
  other forms and topics; never trained on).

For ordinal sets, also the Spearman correlation of the graded level with the true level on the
examples and the probe. The concept judges (sentiment, formality) are scored on their transfer
texts. With ``--tiny`` the judges embed with a hashing stand-in (no model). Writes
``benchmarks/results/class_judges.json``.

    python benchmarks/class_judges.py [--seeds 8] [--tiny]
"""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path

import _common as common
import numpy as np

from tlsteer.classes import CLASS_DATASETS
from tlsteer.eval.judge import MIN_JUDGE_ACCURACY, builtin_judge, class_judge
from tlsteer.profile import spearman

TINY = {"seeds": 1}
CONCEPTS = {"sentiment": ("positive", "negative"), "formality": ("formal", "casual")}


def judge_row(judge, ds, examples: dict, probe: dict) -> dict:
    """A judge's accuracy on its held-out split, the set's example replies and the probe texts
    (and, for an ordinal set, the Spearman correlation of graded with true level on both)."""
    row = {
        "held_out": judge.held_out_accuracy,
        "examples": judge.accuracy(examples),
        "probe": judge.accuracy(probe),
    }
    if ds.ordinal:
        for label, texts in (("examples", examples), ("probe", probe)):
            graded = np.concatenate([judge.graded(texts[c]) for c in ds.classes])
            levels = np.concatenate([[i] * len(texts[c]) for i, c in enumerate(ds.classes)])
            row[f"spearman_{label}"] = spearman(graded, levels)
    return row


def body(args) -> Path:
    start = time.perf_counter()
    embedder = common.load_embedder(args)
    probe = json.loads((resources.files("tlsteer") / "datasets" / "judge_transfer.json").read_text())
    out = {"min_accuracy": MIN_JUDGE_ACCURACY, "sets": {}, "concepts": {}}
    for name in CLASS_DATASETS:
        ds = common.load_class_dataset(args, name)
        examples = {c: [e.response for e in ds.examples[c]] for c in ds.classes}
        rows = [
            judge_row(class_judge(ds, embedder, seed=seed), ds, examples, probe[name])
            for seed in range(args.seeds)
        ]
        keys = list(rows[0])
        out["sets"][name] = {
            "seed_0": rows[0],
            "mean_over_seeds": {k: float(np.mean([r[k] for r in rows])) for k in keys},
            "judge_texts_per_class": {c: len(ds.judge_texts[c]) for c in ds.classes},
            "probe_texts_per_class": {c: len(probe[name][c]) for c in ds.classes},
        }
        common.log.info(
            "%s %s mean %s",
            name,
            {k: round(v, 3) for k, v in rows[0].items()},
            out["sets"][name]["mean_over_seeds"],
        )
    for concept, (pos, neg) in CONCEPTS.items():
        judge = builtin_judge(concept, embedder)
        p_pos, p_neg = judge.predict_proba(probe[concept][pos]), judge.predict_proba(probe[concept][neg])
        transfer = (float((p_pos > 0.5).mean()) + float((p_neg < 0.5).mean())) / 2
        out["concepts"][concept] = {"held_out": judge.held_out_accuracy, "transfer": transfer}
        common.log.info("%s %s", concept, out["concepts"][concept])
    out["seconds"] = round(time.perf_counter() - start, 1)
    return common.write_json(args.out / "class_judges.json", out)


def main(argv: list[str] | None = None) -> Path:
    p = common.parser(__doc__)
    p.add_argument("--seeds", type=int, default=8)
    return common.run(body, p, argv, TINY)


if __name__ == "__main__":
    main()
