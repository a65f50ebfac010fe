"""How far each built-in judge holds: on its own held-out split, on texts unlike its own, by seed.

For each built-in class set, the K-class MiniLM judge (``tlsteer.eval.class_judge``) is trained on
the set's judge texts with 30% held out (seeds 0 to ``--seeds`` - 1) and scored on:

- its held-out split;
- the example replies of the set (texts that build vectors; the judge never sees them);
- the probe texts of ``tlsteer/datasets/judge_transfer.json`` (written unlike the judge texts:
  other forms and topics; never trained on).

For ordinal sets, also the Spearman correlation of the graded level with the true level on the
examples and the probe. The concept judges (sentiment, formality) are scored on their transfer
texts. Writes ``benchmarks/results/class_judges.json``.

    python benchmarks/class_judges.py [--seeds 8]
"""

from __future__ import annotations

import argparse
import json
import time
from importlib import resources
from pathlib import Path

import numpy as np

import tlsteer
from tlsteer.eval.judge import MIN_JUDGE_ACCURACY, builtin_judge, class_judge, load_embedder
from tlsteer.profile import spearman

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    start = time.perf_counter()
    embedder = load_embedder()
    probe = json.loads((resources.files("tlsteer") / "datasets" / "judge_transfer.json").read_text())
    out = {"min_accuracy": MIN_JUDGE_ACCURACY, "sets": {}, "concepts": {}}
    for name in tlsteer.CLASS_DATASETS:
        ds = tlsteer.load_class_dataset(name)
        examples = {c: [e.response for e in ds.examples[c]] for c in ds.classes}
        rows = []
        for seed in range(args.seeds):
            judge = class_judge(ds, embedder, seed=seed)
            row = {
                "held_out": judge.held_out_accuracy,
                "examples": judge.accuracy(examples),
                "probe": judge.accuracy(probe[name]),
            }
            if ds.ordinal:
                for label, texts in (("examples", examples), ("probe", probe[name])):
                    graded = np.concatenate([judge.graded(texts[c]) for c in ds.classes])
                    levels = np.concatenate([[i] * len(texts[c]) for i, c in enumerate(ds.classes)])
                    row[f"spearman_{label}"] = spearman(graded, levels)
            rows.append(row)
        keys = list(rows[0])
        out["sets"][name] = {
            "seed_0": rows[0],
            "mean_over_seeds": {k: float(np.mean([r[k] for r in rows])) for k in keys},
            "judge_texts_per_class": {c: len(ds.judge_texts[c]) for c in ds.classes},
            "probe_texts_per_class": {c: len(probe[name][c]) for c in ds.classes},
        }
        print(
            name, {k: round(v, 3) for k, v in rows[0].items()}, "mean", out["sets"][name]["mean_over_seeds"]
        )
    for concept, (pos, neg) in {
        "sentiment": ("positive", "negative"),
        "formality": ("formal", "casual"),
    }.items():
        judge = builtin_judge(concept, embedder)
        p_pos, p_neg = judge.predict_proba(probe[concept][pos]), judge.predict_proba(probe[concept][neg])
        transfer = (float((p_pos > 0.5).mean()) + float((p_neg < 0.5).mean())) / 2
        out["concepts"][concept] = {"held_out": judge.held_out_accuracy, "transfer": transfer}
        print(concept, out["concepts"][concept])
    out["seconds"] = round(time.perf_counter() - start, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "class_judges.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
