"""The cached sweep engine against a full forward per setting, on the 7 CAA behaviours.

For each behaviour, a vector built from its first generate pairs is swept over layers x
multipliers on test items three times: with ``engine="cached"`` and ``attention="shared"`` (prefix
once per item batch, every setting's steered suffix batched against one copy of the prefix, rows
starting at their steered block), with ``engine="cached"`` and ``attention="repeat"``
(TransformerLens's forward over a KV cache repeated per setting), and with ``engine="full"`` (one
full forward per setting). Reports the wall times, the speed-ups over the full forward, and the
largest difference between each cached engine's scores and the full forward's.

    python benchmarks/sweep_engine.py --caa-dir ../shared/caa [--items 8] [--tiny]
"""

from __future__ import annotations

import time
from pathlib import Path

import _common as common

import tlsteer
from tlsteer.data import CAA_BEHAVIOURS, load_ab_items
from tlsteer.eval.sweeps import sweep_items

TINY = {"items": 3, "train_pairs": 4, "layers": [1, 2], "multipliers": [-4.0, 0.0, 4.0], "behaviours": 2}
ENGINES = {
    "shared": {"engine": "cached", "attention": "shared"},
    "repeat": {"engine": "cached", "attention": "repeat"},
    "full": {"engine": "full"},
}


def body(args) -> Path:
    caa_dir = common.caa_dir(args)
    model = common.load_model(args)
    rows = []
    totals = dict.fromkeys(ENGINES, 0.0)
    for name in CAA_BEHAVIOURS[: args.behaviours]:
        pairs = tlsteer.load_caa_dataset(
            caa_dir / "generate" / name / "generate_dataset.json", model, limit=args.train_pairs
        )
        vec = tlsteer.train_steering_vector(model, pairs, layers=args.layers, batch_size=16)
        items = load_ab_items(caa_dir / "test" / name / "test_dataset_ab.json")[: args.items]
        frames, seconds = {}, {}
        for engine, kwargs in ENGINES.items():
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
        common.log.info("%s", row)
    settings = {k: v for k, v in vars(args).items() if k not in ("tiny", "seed", "behaviours")}
    out = {
        "rows": rows,
        "total_s": totals,
        "speedup": {e: totals["full"] / totals[e] for e in ("shared", "repeat")},
        "settings": settings | {"caa_dir": str(caa_dir), "out": args.out.name},
    }
    path = common.write_json(args.out / "sweep_engine.json", out)
    common.log.info("total seconds %s, speed-ups over the full forward %s", totals, out["speedup"])
    plot(rows, args.out / "sweep_engine.png")
    return path


def plot(rows: list[dict], path: Path) -> None:
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
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> Path:
    p = common.parser(__doc__)
    p.add_argument("--caa-dir", type=Path, default=None, help="the CAA datasets folder (required)")
    p.add_argument("--items", type=int, default=8, help="test items per behaviour")
    p.add_argument("--train-pairs", type=int, default=16)
    p.add_argument("--layers", type=int, nargs="+", default=[6, 12, 18])
    p.add_argument("--multipliers", type=float, nargs="+", default=[-16, -8, 0, 8, 16])
    p.add_argument("--behaviours", type=int, default=len(CAA_BEHAVIOURS), help="the first N behaviours")
    return common.run(body, p, argv, TINY)


if __name__ == "__main__":
    main()
