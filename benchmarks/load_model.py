"""Cold and warm load times of the embedded model; writes JSON and a bar chart.

Cold: an empty cache folder (GGUF -> transformers -> TransformerLens conversion, cache written).
Warm: the cache exists. Each load runs in a fresh Python process and is timed around
``tlsteer.load_model()`` alone (imports excluded, reported separately).

    python benchmarks/load_model.py [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import time, json
t0 = time.perf_counter()
import tlsteer
t1 = time.perf_counter()
model = tlsteer.load_model()
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1}))
"""


def timed_load(cache: str) -> dict:
    env = {**os.environ, "TLSTEER_CACHE_DIR": cache, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--warm-runs", type=int, default=3)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as cache:
        cold = timed_load(cache)
        warm = [timed_load(cache) for _ in range(args.warm_runs)]
    result = {
        "cold_load_s": cold["load_s"],
        "warm_load_s": [w["load_s"] for w in warm],
        "warm_load_s_max": max(w["load_s"] for w in warm),
        "import_s": [cold["import_s"]] + [w["import_s"] for w in warm],
        "warm_target_s": 5.0,
    }
    (args.out / "load_model.json").write_text(json.dumps(result, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    labels = ["cold"] + [f"warm {i + 1}" for i in range(len(warm))]
    ax.bar(labels, [cold["load_s"]] + result["warm_load_s"], color=["C3"] + ["C0"] * len(warm))
    ax.axhline(5.0, ls="--", c="k", lw=1, label="warm target 5 s")
    ax.set_ylabel("load_model() seconds")
    ax.set_title("SmolLM2-135M-Instruct -> HookedTransformer")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "load_model.png", dpi=120)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
