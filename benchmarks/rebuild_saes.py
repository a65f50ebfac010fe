"""Rebuild the SAE corpus from scratch and retrain the shipped SAEs: one command, timed.

Runs, in order and in one process each (one heavy job at a time on a 2-core machine):

1. ``benchmarks/sae_corpus.py --regenerate`` (the model's answers are generated again);
2. ``benchmarks/train_sae.py --layer L --recache`` for every ``--layers`` (activations cached again).

Each step's wall time and the total go to ``benchmarks/results/sae_rebuild.json``; each step's log to
``benchmarks/build/logs/``. A failing step stops the rebuild with its exit status. With ``--tiny``
both steps run with ``--tiny`` in this process, into ``--out`` (logs in ``--out``/logs).

    python benchmarks/rebuild_saes.py --caa-dir ../shared/caa            # layers 6 and 12
"""

from __future__ import annotations

import logging
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import _common as common

ROOT = common.ROOT
LOGS = common.BUILD / "logs"
TINY = {"layers": [1]}


def run_step(name: str, argv: list[str], logs: Path) -> float:
    """One step in a fresh process, its output in ``logs/<name>.log``; its wall time."""
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    common.log.info("[rebuild] %s: %s (log: %s)", name, " ".join(argv), log)
    start = time.perf_counter()
    with log.open("w") as handle:
        code = subprocess.call(argv, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if code != 0:
        tail = log.read_text().splitlines()[-20:]
        sys.exit(
            f"[rebuild] {name} failed with exit status {code} after {seconds:.0f} s:\n" + "\n".join(tail)
        )
    common.log.info("[rebuild] %s: %.0f s", name, seconds)
    return seconds


def run_here(name: str, main: Callable[[list[str]], Path], argv: list[str], logs: Path) -> float:
    """One step's ``main(argv)`` in this process (``--tiny``), its log records in ``logs/<name>.log``."""
    logs.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(logs / f"{name}.log")
    root = logging.getLogger()
    root.addHandler(handler)
    start = time.perf_counter()
    try:
        main(argv)
    finally:
        root.removeHandler(handler)
        handler.close()
    seconds = time.perf_counter() - start
    common.log.info("[rebuild] %s: %.0f s", name, seconds)
    return seconds


def body(args) -> Path:
    if args.tiny:
        import sae_corpus  # sibling benchmarks
        import train_sae

        logs, corpus = args.out / "logs", args.out / "corpus"
        argv = ["--tiny", "--out", str(corpus), "--seed", str(args.seed), "--heldout-fraction", "0.3"]
        if args.caa_dir is not None:
            argv += ["--caa-dir", str(args.caa_dir)]
        steps = {"corpus": run_here("corpus", sae_corpus.main, argv, logs)}
        for layer in args.layers:
            argv = ["--tiny", "--layer", str(layer), "--corpus", str(corpus), "--out", str(args.out / "sae")]
            steps[f"train_layer_{layer}"] = run_here(f"train_layer_{layer}", train_sae.main, argv, logs)
    else:
        if args.caa_dir is None:
            raise SystemExit("--caa-dir is required: the CAA datasets folder, e.g. --caa-dir ../shared/caa")
        python = sys.executable
        corpus = [python, "benchmarks/sae_corpus.py", "--caa-dir", str(args.caa_dir)]
        if not args.keep_answers:
            corpus.append("--regenerate")
        steps = {"corpus": run_step("corpus", corpus, LOGS)}
        for layer in args.layers:
            argv = [python, "benchmarks/train_sae.py", "--layer", str(layer), "--recache"]
            steps[f"train_layer_{layer}"] = run_step(f"train_layer_{layer}", argv, LOGS)
    result = {
        "command": " ".join(["python", "benchmarks/rebuild_saes.py", *args.argv]),
        "seconds": {name: round(value, 1) for name, value in steps.items()},
        "total_seconds": round(sum(steps.values()), 1),
        "machine": f"{platform.machine()}, {platform.system()}, cpu",
        "note": "wall time on this machine, one job at a time",
    }
    path = common.write_json(args.out / "sae_rebuild.json", result)
    common.log.info("%s", result)
    return path


def main(argv: list[str] | None = None) -> Path:
    p = common.parser(__doc__)
    p.add_argument("--caa-dir", type=Path, default=None, help="the CAA datasets folder (read only; required)")
    p.add_argument("--layers", type=int, nargs="+", default=[6, 12])
    p.add_argument("--keep-answers", action="store_true", help="reuse the cached generated answers")
    p.set_defaults(argv=sys.argv[1:] if argv is None else list(argv))
    return common.run(body, p, argv, TINY)


if __name__ == "__main__":
    main()
