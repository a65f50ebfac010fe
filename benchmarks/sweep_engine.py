"""The cached sweep engine against a full forward per setting, on the 7 CAA behaviours.

For each behaviour, a vector built from its first generate pairs is swept over layers x
multipliers on test items twice: with ``engine="cached"`` (prefix once per item batch, every
setting's steered suffix batched) and ``engine="full"`` (one full forward per setting). Reports
both wall times, the speed-up, and the largest difference between the two engines' scores.

    python benchmarks/sweep_engine.py --caa-dir ../shared/caa [--items 8]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import tlsteer
from tlsteer.data import load_ab_items
from tlsteer.sweeps import sweep_items

BEHAVIOURS = [
    "coordinate-other-ais",
    "corrigible-neutral-HHH",
    "hallucination",
    "myopic-reward",
    "refusal",
    "survival-instinct",
    "sycophancy",
]


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
    totals = {"cached": 0.0, "full": 0.0}
    for name in BEHAVIOURS:
        pairs = tlsteer.load_caa_dataset(
            args.caa_dir / "generate" / name / "generate_dataset.json", model, limit=args.train_pairs
        )
        vec = tlsteer.train_steering_vector(model, pairs, layers=args.layers, batch_size=16)
        items = load_ab_items(args.caa_dir / "test" / name / "test_dataset_ab.json")[: args.items]
        frames, seconds = {}, {}
        for engine in ("cached", "full"):
            start = time.perf_counter()
            frames[engine] = sweep_items(model, items, vec, args.layers, args.multipliers, engine=engine)
            seconds[engine] = time.perf_counter() - start
            totals[engine] += seconds[engine]
        diff = {
            col: float((frames["cached"][col] - frames["full"][col]).abs().max())
            for col in ("p_matching", "letter_mass", "logit_diff")
        }
        row = {
            "behaviour": name,
            "items": len(items),
            "settings": len(args.layers) * len(args.multipliers),
            "cached_s": seconds["cached"],
            "full_s": seconds["full"],
            "speedup": seconds["full"] / seconds["cached"],
            "max_abs_diff": diff,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = {
        "rows": rows,
        "total_cached_s": totals["cached"],
        "total_full_s": totals["full"],
        "speedup": totals["full"] / totals["cached"],
        "settings": vars(args) | {"caa_dir": str(args.caa_dir), "out": args.out.name},
    }
    (args.out / "sweep_engine.json").write_text(json.dumps(out, indent=1))
    print(
        f"total: cached {totals['cached']:.1f} s, full {totals['full']:.1f} s, speed-up {out['speedup']:.1f}x"
    )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    names = [r["behaviour"] for r in rows]
    ax.barh(names, [r["speedup"] for r in rows])
    ax.axvline(10, ls="--", c="k", lw=1, label="10x goal")
    ax.set_xlabel("full forward per setting / cached engine (wall time)")
    ax.legend()
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(args.out / "sweep_engine.png", dpi=120)


if __name__ == "__main__":
    main()
