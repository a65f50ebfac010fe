"""Cold and warm load times of an embedded model (``--model``), and its logits against transformers';
writes JSON and a bar chart.

Cold: an empty cache folder (GGUF -> transformers -> TransformerLens conversion, cache written).
Warm: the cache exists. Each load runs in a fresh Python process and is timed around
``tlsteer.load_model()`` alone (imports excluded, reported separately). With ``--tiny`` the tiny
model is built in this process instead (a fresh process would spend its seconds on imports).

The logit agreement: the converted model against the dequantised ``transformers`` model it came
from, every position of a few prompts (max absolute logit difference). Results go to
``load_model.json`` (``load_model_<model>.json`` for another model than the default).

    python benchmarks/load_model.py [--warm-runs 3] [--tiny]
    python benchmarks/load_model.py --model gemma-3-270m
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as common

CHILD = """
import time, json
t0 = time.perf_counter()
import sys
import tlsteer
t1 = time.perf_counter()
model = tlsteer.load_model(sys.argv[1])
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1}))
"""
TINY = {"warm_runs": 1}


AGREEMENT_PROMPTS = [
    "The capital of France is Paris. The capital of Germany is",
    "Why is the sky blue? Because sunlight is scattered by",
    "def add(a, b):\n    return a +",
]


def logit_agreement(name: str) -> dict:
    """Max |logit difference| between the converted model and the transformers model, over every
    position of :data:`AGREEMENT_PROMPTS` (tokenized by the model's own tokenizer)."""
    import torch

    import tlsteer
    from tlsteer.models import load_hf_model

    model = tlsteer.load_model(name)
    hf_model, tokenizer = load_hf_model(name)
    diffs, positions = [], 0
    with torch.no_grad():
        for prompt in AGREEMENT_PROMPTS:
            ids = torch.tensor([tokenizer.encode(prompt)])
            diffs.append(float((model(ids)[0] - hf_model(ids).logits[0]).abs().max()))
            positions += ids.shape[1]
    return {"max_abs_logit_diff": max(diffs), "per_prompt": diffs, "positions": positions}


def timed_load(cache: str, tiny: bool = False, name: str = common.MODELS[0]) -> dict:
    """Seconds to import tlsteer and to load the embedded model in a fresh process, with ``cache``
    as its cache folder; with ``tiny``, seconds to build the tiny model here (no import)."""
    if tiny:
        from tlsteer.models import tiny_model

        start = time.perf_counter()
        tiny_model(n_layers=common.TINY_LAYERS, n_ctx=common.TINY_N_CTX)
        return {"import_s": 0.0, "load_s": time.perf_counter() - start}
    env = {**os.environ, "TLSTEER_CACHE_DIR": cache, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, name], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def body(args) -> Path:
    with tempfile.TemporaryDirectory() as cache:
        cold = timed_load(cache, args.tiny, args.model)
        warm = [timed_load(cache, args.tiny, args.model) for _ in range(args.warm_runs)]
    result = {
        "model": args.model,
        "cold_load_s": cold["load_s"],
        "warm_load_s": [w["load_s"] for w in warm],
        "warm_load_s_max": max(w["load_s"] for w in warm),
        "import_s": [cold["import_s"]] + [w["import_s"] for w in warm],
        "warm_target_s": 5.0,
    }
    if not args.tiny:
        result["logit_agreement"] = logit_agreement(args.model)
    tag = common.model_tag(args)
    path = common.write_json(args.out / f"load_model{tag}.json", result)
    plot(result, args.out / f"load_model{tag}.png")
    common.log.info("%s", result)
    return path


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    warm = result["warm_load_s"]
    labels = ["cold"] + [f"warm {i + 1}" for i in range(len(warm))]
    ax.bar(labels, [result["cold_load_s"]] + warm, color=["C3"] + ["C0"] * len(warm))
    ax.axhline(5.0, ls="--", c="k", lw=1, label="warm target 5 s")
    ax.set_ylabel("load_model() seconds")
    ax.set_title(f"{result['model']} -> HookedTransformer")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> Path:
    p = common.parser(__doc__)
    p.add_argument("--warm-runs", type=int, default=3)
    return common.run(body, p, argv, TINY)


if __name__ == "__main__":
    main()
