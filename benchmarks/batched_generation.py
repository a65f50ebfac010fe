"""Batched steered generation against one prompt at a time, on the embedded model.

``tlsteer.generate_tokens`` on 16 chat prompts at batch 16, and the same 16 prompts one at a
time (batch 1), greedy, a fixed number of new tokens (no stop at end of sequence, so both runs
make the same number of tokens), steered by a layer-12 sentiment vector from each prompt's last
token on (``Positions.last()``). The two runs are interleaved ``--repeats`` times and the medians
compared. The same run checks that each row's per-step logits equal the row generated alone
(largest absolute difference).

    python benchmarks/batched_generation.py [--new-tokens 32] [--repeats 2] [--tiny]
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import _common as common

import tlsteer
from tlsteer.data import load_open_prompts

TINY = {"prompts": 4, "new_tokens": 4, "repeats": 1, "batch": 4, "layer": 2, "pairs": 8}


def timed_generation(model, prompts, steering, batch_size: int, new_tokens: int, keep_logits: bool = False):
    start = time.perf_counter()
    out = tlsteer.generate_tokens(
        model,
        prompts,
        steering,
        max_new_tokens=new_tokens,
        chat=True,
        stop_at_eos=False,
        batch_size=batch_size,
        keep_logits=keep_logits,
    )
    return time.perf_counter() - start, out


def body(args) -> Path:
    model = common.load_model(args)
    prompts = load_open_prompts()[: args.prompts]
    pairs = tlsteer.load_builtin_dataset("sentiment", model)[: args.pairs]
    vec = tlsteer.train_steering_vector(model, pairs, layers=[args.layer], batch_size=16)
    vec = vec * (4.0 / vec.norms()[vec.hooks[0]])  # norm 4, a moderate push at layer 12
    steering = vec.steering(1.0, positions=tlsteer.Positions.last())
    timed_generation(model, prompts, steering, args.batch, 2)  # warm-up
    batched_s, single_s = [], []
    for _ in range(args.repeats):
        seconds, batched = timed_generation(model, prompts, steering, args.batch, args.new_tokens, True)
        batched_s.append(seconds)
        seconds, single = timed_generation(model, prompts, steering, 1, args.new_tokens, True)
        single_s.append(seconds)
    max_diff = max(
        float((a - b).abs().max()) for a, b in zip(batched.step_logits, single.step_logits, strict=True)
    )
    same_tokens = sum(a == b for a, b in zip(batched.new_tokens, single.new_tokens, strict=True))
    n_tokens = len(prompts) * args.new_tokens
    result = {
        "prompts": len(prompts),
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
    common.log.info("%s", result)
    path = common.write_json(args.out / "batched_generation.json", result)
    plot(result, args.out / "batched_generation.png")
    return path


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    bars = [result["one_at_a_time_tokens_per_s"], result["batched_tokens_per_s"]]
    ax.bar(["one at a time", f"batch {result['batch']}"], bars, color=["#999", "#1f77b4"])
    for i, v in enumerate(bars):
        ax.text(i, v, f"{v:.0f}", ha="center", va="bottom")
    ax.set_ylabel("generated tokens / s")
    ax.set_title(f"steered greedy generation, {result['speedup']:.1f}x (goal 5x)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> Path:
    p = common.parser(__doc__)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--prompts", type=int, default=16, help="the first N built-in open prompts")
    p.add_argument("--layer", type=int, default=12)
    p.add_argument("--pairs", type=int, default=60, help="sentiment pairs that build the vector")
    return common.run(body, p, argv, TINY)


if __name__ == "__main__":
    main()
