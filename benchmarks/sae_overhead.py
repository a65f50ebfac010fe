"""What the SAE module adds to reading activations and to steered generation, on the embedded model.

The SAE is the one shipped for the embedded model at ``--layer`` (``load_embedded_sae``; a TopK SAE,
d_sae 4,608, k 64), or with ``--random`` a random TopK SAE of the same shape at that layer's
``hook_resid_post`` (``tlsteer.sae.random.random_sae``). Two comparisons, each run interleaved
``--repeats`` times, medians compared:

- encoding: ``tlsteer.sae.encode(model, sae, prompts, read=Read.last())`` against
  ``tlsteer.read_activations`` of the same prompts at the same hook (goal: at most +20%);
- feature steering: ``tlsteer.generate_tokens`` with a ``feature_edit`` clamping 8 features from
  each prompt's last token on (``Positions.last()``) against unsteered generation (goal: at most
  +20%).

    python benchmarks/sae_overhead.py [--repeats 3] [--layer 6 | --random] [--tiny]
"""

from __future__ import annotations

import statistics
import time
from functools import partial
from pathlib import Path

import _common as common

import tlsteer
from tlsteer import Positions, Read, Steering
from tlsteer.data import load_open_prompts
from tlsteer.sae import encode, feature_edit
from tlsteer.sae.random import random_sae

TINY = {"repeats": 1, "new_tokens": 4, "layer": 1, "prompts": 8}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def body(args) -> Path:
    model = common.load_model(args)
    if args.random:
        sae = random_sae(model.cfg.d_model, f"blocks.{args.layer}.hook_resid_post", d_sae=4608, k=64, seed=0)
    else:
        sae = common.load_sae(args, model, args.layer)
    hook = sae.cfg.metadata.hook_name
    questions = load_open_prompts()[: args.prompts]
    prompts = [tlsteer.chat_prompt(model, q) for q in questions]

    read = partial(tlsteer.read_activations, model, prompts, [hook], batch_size=16)
    enc = partial(encode, model, sae, prompts, read=Read.last(), batch_size=16)
    ids = list(range(8))
    edit = feature_edit(sae, ids, "clamp", values=[4.0] * len(ids))
    gen_kwargs = {"max_new_tokens": args.new_tokens, "chat": True, "stop_at_eos": False, "batch_size": 16}
    plain = partial(tlsteer.generate_tokens, model, questions[:16], **gen_kwargs)
    steering = Steering.from_edits([(hook, edit)], positions=Positions.last())
    steered = partial(tlsteer.generate_tokens, model, questions[:16], steering, **gen_kwargs)
    read(), enc()  # warm-up
    times: dict[str, list[float]] = {"read": [], "encode": [], "generate": [], "generate_feature_steered": []}
    for _ in range(args.repeats):
        times["read"].append(timed(read))
        times["encode"].append(timed(enc))
        times["generate"].append(timed(plain))
        times["generate_feature_steered"].append(timed(steered))
    med = {k: statistics.median(v) for k, v in times.items()}
    if args.random:
        kind = "TopK, random weights"
    elif args.tiny:
        kind = "TopK, random weights (--tiny)"
    else:
        kind = f"shipped (load_embedded_sae({args.layer}))"
    result = {
        "sae": {"kind": kind, "d_sae": sae.cfg.d_sae, "k": sae.cfg.k, "hook": hook},
        "prompts": len(prompts),
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "seconds": times,
        "encode_overhead": med["encode"] / med["read"] - 1,
        "feature_steering_overhead": med["generate_feature_steered"] / med["generate"] - 1,
        "goal": 0.20,
    }
    common.log.info("%s", result)
    path = common.write_json(args.out / "sae_overhead.json", result)
    plot(result, args.out / "sae_overhead.png")
    return path


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3))
    labels = ["encode vs read", "feature-steered vs plain generation"]
    values = [100 * result["encode_overhead"], 100 * result["feature_steering_overhead"]]
    ax.barh(labels, values)
    ax.axvline(20, ls="--", c="k", lw=1, label="20% goal")
    ax.set_xlabel("added time (%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> Path:
    p = common.parser(__doc__)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--layer", type=int, default=6, help="the shipped SAE's layer")
    p.add_argument("--random", action="store_true", help="a random TopK SAE of the same shape instead")
    p.add_argument("--prompts", type=int, default=None, help="the first N open prompts (default all 64)")
    return common.run(body, p, argv, TINY)


if __name__ == "__main__":
    main()
