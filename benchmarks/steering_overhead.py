"""What steering hooks add to KV-cached ``model.generate`` time, at batch 1 and batch 8.

Greedy generation of a fixed number of tokens with the cache on, unsteered and steered,
interleaved (unsteered, steered, unsteered, ...) so drift hits both alike; the median of each is
reported. Steered runs use a vector at one layer and at every layer, with positions from the
prompt end (``min_token_index``), at every position, and ``last_token_only``.

    python benchmarks/steering_overhead.py [--new-tokens 32] [--repeats 5]
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
from tlsteer.tokens import left_pad

PROMPTS = load_open_prompts()[:8]


def generate_seconds(model, tokens, new_tokens: int) -> float:
    start = time.perf_counter()
    model.generate(
        tokens,
        max_new_tokens=new_tokens,
        do_sample=False,
        use_past_kv_cache=True,
        stop_at_eos=False,
        verbose=False,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)
    model = tlsteer.load_model()
    pairs = tlsteer.load_builtin_dataset("sentiment", model)[:32]
    every_layer = tlsteer.train_steering_vector(model, pairs, batch_size=16)
    vectors = {"one layer (12)": every_layer.select([12]), "all 30 layers": every_layer}
    results = []
    for batch in (1, 8):
        ids = [tlsteer.tokenize(model, tlsteer.chat_prompt(model, p)) for p in PROMPTS[:batch]]
        tokens, _ = left_pad(model, ids)
        width = tokens.shape[1]
        modes = {
            "min_token_index=prompt end": {"min_token_index": width - 1},
            "all positions": {},
            "last_token_only": {"last_token_only": True},
        }
        generate_seconds(model, tokens, 4)  # warm-up
        for vec_name, vec in vectors.items():
            for mode_name, kwargs in modes.items():
                plain, steered = [], []
                for _ in range(args.repeats):
                    plain.append(generate_seconds(model, tokens, args.new_tokens))
                    with vec.apply(model, multiplier=4.0, **kwargs):
                        steered.append(generate_seconds(model, tokens, args.new_tokens))
                row = {
                    "batch": batch,
                    "vector": vec_name,
                    "positions": mode_name,
                    "unsteered_s": statistics.median(plain),
                    "steered_s": statistics.median(steered),
                }
                row["overhead"] = row["steered_s"] / row["unsteered_s"] - 1
                results.append(row)
                print(json.dumps(row), flush=True)
    out = {"new_tokens": args.new_tokens, "repeats": args.repeats, "rows": results, "target_overhead": 0.10}
    (args.out / "steering_overhead.json").write_text(json.dumps(out, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = [f"b{r['batch']} {r['vector']}\n{r['positions']}" for r in results]
    ax.barh(labels, [100 * r["overhead"] for r in results])
    ax.axvline(10, ls="--", c="k", lw=1, label="10% target")
    ax.set_xlabel("steered / unsteered generate time - 1 (%)")
    ax.tick_params(axis="y", labelsize=6)
    ax.legend()
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(args.out / "steering_overhead.png", dpi=120)


if __name__ == "__main__":
    main()
