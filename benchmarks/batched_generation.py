"""Batched steered generation against one prompt at a time, on the embedded model.

``tlsteer.generate_tokens`` on 16 chat prompts at batch 16, and the same 16 prompts one at a
time (batch 1), greedy, a fixed number of new tokens (no stop at end of sequence, so both runs
make the same number of tokens), steered by a layer-12 sentiment vector with ``last_token_only``.
The two runs are interleaved ``--repeats`` times and the medians compared. The same run checks
that each row's per-step logits equal the row generated alone (largest absolute difference).

    python benchmarks/batched_generation.py [--new-tokens 32] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import tlsteer
from tlsteer.data import load_open_prompts

PROMPTS = load_open_prompts()[:16]


def run(model, vec, batch_size: int, new_tokens: int, keep_logits: bool = False):
    start = time.perf_counter()
    out = tlsteer.generate_tokens(
        model,
        PROMPTS,
        [(vec, 1.0)],
        max_new_tokens=new_tokens,
        chat=True,
        stop_at_eos=False,
        last_token_only=True,
        batch_size=batch_size,
        keep_logits=keep_logits,
    )
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)
    model = tlsteer.load_model()
    pairs = tlsteer.load_builtin_dataset("sentiment", model)[:60]
    vec = tlsteer.train_steering_vector(model, pairs, layers=[12], batch_size=16)
    vec = vec * (4.0 / vec.norms()[vec.hooks[0]])  # norm 4, a moderate push at layer 12
    run(model, vec, args.batch, 2)  # warm-up
    batched_s, single_s = [], []
    for _ in range(args.repeats):
        seconds, batched = run(model, vec, args.batch, args.new_tokens, keep_logits=True)
        batched_s.append(seconds)
        seconds, single = run(model, vec, 1, args.new_tokens, keep_logits=True)
        single_s.append(seconds)
    max_diff = max(
        float((a - b).abs().max()) for a, b in zip(batched.step_logits, single.step_logits, strict=True)
    )
    same_tokens = sum(a == b for a, b in zip(batched.new_tokens, single.new_tokens, strict=True))
    n_tokens = len(PROMPTS) * args.new_tokens
    result = {
        "prompts": len(PROMPTS),
        "new_tokens_per_prompt": args.new_tokens,
        "batch": args.batch,
        "repeats": args.repeats,
        "batched_s": batched_s,
        "one_at_a_time_s": single_s,
        "batched_tokens_per_s": n_tokens / statistics.median(batched_s),
        "one_at_a_time_tokens_per_s": n_tokens / statistics.median(single_s),
        "speedup": statistics.median(single_s) / statistics.median(batched_s),
        "max_abs_diff_step_logits": max_diff,
        "rows_with_identical_tokens": same_tokens,
        "goal_speedup": 5.0,
        "sample_texts": list(batched.texts[:3]),
    }
    print(json.dumps(result, indent=1))
    (args.out / "batched_generation.json").write_text(json.dumps(result, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    bars = [result["one_at_a_time_tokens_per_s"], result["batched_tokens_per_s"]]
    ax.bar(["one at a time", f"batch {args.batch}"], bars, color=["#999", "#1f77b4"])
    for i, v in enumerate(bars):
        ax.text(i, v, f"{v:.0f}", ha="center", va="bottom")
    ax.set_ylabel("generated tokens / s")
    ax.set_title(f"steered greedy generation, {result['speedup']:.1f}x (goal 5x)")
    fig.tight_layout()
    fig.savefig(args.out / "batched_generation.png", dpi=120)


if __name__ == "__main__":
    main()
