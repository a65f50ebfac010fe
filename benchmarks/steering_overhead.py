"""What steering hooks add to KV-cached ``model.generate`` time, at batch 1 and batch 8.

Greedy generation of a fixed number of tokens with the cache on, unsteered and steered,
interleaved (unsteered, steered, unsteered, ...) so drift hits both alike; the median of each is
reported. Steered runs use a vector at one layer and at every layer, with positions from the
prompt end (``Positions.start_at``), at every position, and from the last prompt token on
(``Positions.last()``).

    python benchmarks/steering_overhead.py [--new-tokens 32] [--repeats 5] [--tiny]
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import _common as common

import tlsteer
from tlsteer import Positions
from tlsteer.data import load_open_prompts
from tlsteer.tokens import left_pad

TINY = {"new_tokens": 4, "repeats": 1, "layer": 2, "pairs": 8}


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


def body(args) -> Path:
    model = common.load_model(args)
    prompts = load_open_prompts()[:8]
    pairs = tlsteer.load_builtin_dataset("sentiment", model)[: args.pairs]
    every_layer = tlsteer.train_steering_vector(model, pairs, batch_size=16)
    vectors = {
        f"one layer ({args.layer})": every_layer.select([args.layer]),
        f"all {model.cfg.n_layers} layers": every_layer,
    }
    results = []
    for batch in (1, 8):
        ids = [tlsteer.tokenize(model, tlsteer.chat_prompt(model, p)) for p in prompts[:batch]]
        tokens, _ = left_pad(model, ids)
        width = tokens.shape[1]
        modes = {
            "min_token_index=prompt end": Positions.start_at(width - 1),
            "all positions": Positions.all(),
            "last_token_only": Positions.last(),
        }
        generate_seconds(model, tokens, 4)  # warm-up
        for vec_name, vec in vectors.items():
            for mode_name, positions in modes.items():
                steering = vec.steering(4.0, positions=positions)
                plain, steered = [], []
                for _ in range(args.repeats):
                    plain.append(generate_seconds(model, tokens, args.new_tokens))
                    with steering.apply(model):
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
                common.log.info("%s", row)
    out = {"new_tokens": args.new_tokens, "repeats": args.repeats, "rows": results, "target_overhead": 0.10}
    path = common.write_json(args.out / "steering_overhead.json", out)
    plot(results, args.out / "steering_overhead.png")
    return path


def plot(results: list[dict], path: Path) -> None:
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
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> Path:
    p = common.parser(__doc__)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--layer", type=int, default=12, help="the one-layer vector's layer")
    p.add_argument("--pairs", type=int, default=32, help="sentiment pairs that build the vector")
    return common.run(body, p, argv, TINY)


if __name__ == "__main__":
    main()
