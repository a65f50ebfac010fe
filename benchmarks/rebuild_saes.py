"""Rebuild the SAE corpus from scratch and retrain the shipped SAEs: one command, timed.

Runs, in order and in one process each (one heavy job at a time on a 2-core machine):

1. ``benchmarks/sae_corpus.py --regenerate`` (the model's answers are generated again);
2. ``benchmarks/train_sae.py --layer L --recache`` for every ``--layers`` (activations cached again).

Each step's wall time and the total go to ``benchmarks/results/sae_rebuild.json``; each step's log to
``benchmarks/build/logs/``. A failing step stops the rebuild with its exit status.

    python benchmarks/rebuild_saes.py --caa-dir ../shared/caa            # layers 6 and 12
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOGS = ROOT / "benchmarks" / "build" / "logs"
RESULT = ROOT / "benchmarks" / "results" / "sae_rebuild.json"


def run_step(name: str, argv: list[str]) -> float:
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"{name}.log"
    print(f"[rebuild] {name}: {' '.join(argv)} (log: {log.relative_to(ROOT)})", flush=True)
    start = time.perf_counter()
    with log.open("w") as handle:
        code = subprocess.call(argv, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if code != 0:
        tail = log.read_text().splitlines()[-20:]
        sys.exit(
            f"[rebuild] {name} failed with exit status {code} after {seconds:.0f} s:\n" + "\n".join(tail)
        )
    print(f"[rebuild] {name}: {seconds:.0f} s", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--caa-dir", type=Path, required=True, help="the CAA datasets folder (read only)")
    parser.add_argument("--layers", type=int, nargs="+", default=[6, 12])
    parser.add_argument("--keep-answers", action="store_true", help="reuse the cached generated answers")
    args = parser.parse_args()

    python = sys.executable
    corpus = [python, "benchmarks/sae_corpus.py", "--caa-dir", str(args.caa_dir)]
    if not args.keep_answers:
        corpus.append("--regenerate")
    steps = {"corpus": run_step("corpus", corpus)}
    for layer in args.layers:
        argv = [python, "benchmarks/train_sae.py", "--layer", str(layer), "--recache"]
        steps[f"train_layer_{layer}"] = run_step(f"train_layer_{layer}", argv)
    result = {
        "command": " ".join(["python", "benchmarks/rebuild_saes.py", *sys.argv[1:]]),
        "seconds": {name: round(value, 1) for name, value in steps.items()},
        "total_seconds": round(sum(steps.values()), 1),
        "machine": f"{platform.machine()}, {platform.system()}, cpu",
        "note": "wall time on this machine, one job at a time",
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
