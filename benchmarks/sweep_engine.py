"""The cached sweep engine against a full forward per setting, on the 7 CAA behaviours.

For each behaviour, a vector built from its first generate pairs is swept over layers x
multipliers on test items three times: with ``engine="cached"`` and ``attention="shared"`` (prefix
once per item batch, every setting's steered suffix batched against one copy of the prefix, rows
starting at their steered block), with ``engine="cached"`` and ``attention="repeat"``
(TransformerLens's forward over a KV cache repeated per setting), and with ``engine="full"`` (one
full forward per setting). Reports the wall times, the speed-ups over the full forward, and the
largest difference between each cached engine's scores and the full forward's.

    python benchmarks/sweep_engine.py --caa-dir ../shared/caa [--items 8]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import tlsteer
from tlsteer.data import CAA_BEHAVIOURS, load_ab_items
from tlsteer.eval.sweeps import sweep_items


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--caa-dir", type=Path, required=True)
    parser.add_argument("--items", type=int, default=8, help="test items per behaviour")
    parser.add_argument("--train-pairs", type=int, default=16)
    parser.add_argument("--layers", type=int, nargs="+", default=[6, 12, 18])
    parser.add_argument("--multipliers", type=float, nargs="+", default=[-16, -8, 0, 8, 16])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)
    model = tlsteer.load_model()
    rows = []
    engines = {
        "shared": dict(engine="cached", attention="shared"),
        "repeat": dict(engine="cached", attention="repeat"),
        "full": dict(engine="full"),
    }
    totals = dict.fromkeys(engines, 0.0)
    for name in CAA_BEHAVIOURS:
        pairs = tlsteer.load_caa_dataset(
            args.caa_dir / "generate" / name / "generate_dataset.json", model, limit=args.train_pairs
        )
        vec = tlsteer.train_steering_vector(model, pairs, layers=args.layers, batch_size=16)
        items = load_ab_items(args.caa_dir / "test" / name / "test_dataset_ab.json")[: args.items]
        frames, seconds = {}, {}
        for engine, kwargs in engines.items():
            start = time.perf_counter()
            frames[engine] = sweep_items(
                model, items, vec, args.layers, args.multipliers, outside_ab="zero", **kwargs
            )
            seconds[engine] = time.perf_counter() - start
            totals[engine] += seconds[engine]
        row = {
            "behaviour": name,
            "items": len(items),
            "settings": len(args.layers) * len(args.multipliers),
            "seconds": seconds,
            "speedup": {e: seconds["full"] / seconds[e] for e in ("shared", "repeat")},
            "max_abs_diff": {
                e: {
                    col: float((frames[e][col] - frames["full"][col]).abs().max())
                    for col in ("p_matching", "letter_mass", "logit_diff")
                }
                for e in ("shared", "repeat")
            },
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = {
        "rows": rows,
        "total_s": totals,
        "speedup": {e: totals["full"] / totals[e] for e in ("shared", "repeat")},
        "settings": vars(args) | {"caa_dir": str(args.caa_dir), "out": args.out.name},
    }
    (args.out / "sweep_engine.json").write_text(json.dumps(out, indent=1))
    print(f"total seconds {totals}, speed-ups over the full forward {out['speedup']}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    names = [r["behaviour"] for r in rows]
    y = range(len(rows))
    ax.barh([i - 0.2 for i in y], [r["speedup"]["shared"] for r in rows], height=0.4, label="shared prefix")
    ax.barh([i + 0.2 for i in y], [r["speedup"]["repeat"] for r in rows], height=0.4, label="repeated cache")
    ax.set_yticks(list(y), names)
    ax.axvline(10, ls="--", c="k", lw=1, label="10x goal")
    ax.set_xlabel("full forward per setting / cached engine (wall time)")
    ax.legend()
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(args.out / "sweep_engine.png", dpi=120)


if __name__ == "__main__":
    main()
