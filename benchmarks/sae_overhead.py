"""What the SAE module adds to reading activations and to steered generation, on the embedded model.

The SAE is the one shipped for the embedded model at ``--layer`` (``load_embedded_sae``; a TopK SAE,
d_sae 4,608, k 64), or with ``--random`` a random TopK SAE of the same shape at
``blocks.6.hook_resid_post``. Two comparisons, each run interleaved ``--repeats`` times, medians
compared:

- encoding: ``tlsteer.sae.encode(model, sae, prompts, read="last")`` against
  ``tlsteer.read_activations`` of the same prompts at the same hook (goal: at most +20%);
- feature steering: ``tlsteer.generate_tokens`` with a ``feature_edit`` clamping 8 features at
  every steered position (``last_token_only``) against unsteered generation (goal: at most +20%).

    python benchmarks/sae_overhead.py [--repeats 3] [--layer 6 | --random]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from functools import partial
from pathlib import Path

import torch
from sae_lens import TopKSAE, TopKSAEConfig
from sae_lens.saes.sae import SAEMetadata

import tlsteer
from tlsteer.data import load_open_prompts
from tlsteer.sae import encode, feature_edit, load_embedded_sae

HOOK = "blocks.6.hook_resid_post"


def random_topk_sae(d_in: int, d_sae: int = 4608, k: int = 64) -> TopKSAE:
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, metadata=SAEMetadata(hook_name=HOOK)))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        w = torch.randn(d_sae, d_in, generator=gen)
        sae.W_dec.copy_(w / w.norm(dim=1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
    return sae


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--layer", type=int, default=6, help="the shipped SAE's layer")
    parser.add_argument("--random", action="store_true", help="a random TopK SAE of the same shape instead")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)
    model = tlsteer.load_model()
    sae = random_topk_sae(model.cfg.d_model) if args.random else load_embedded_sae(args.layer)
    hook = sae.cfg.metadata.hook_name
    questions = load_open_prompts()
    prompts = [tlsteer.chat_prompt(model, q) for q in questions]

    read = partial(tlsteer.read_activations, model, prompts, [hook], batch_size=16)
    enc = partial(encode, model, sae, prompts, read="last", batch_size=16)
    ids = list(range(8))
    edit = feature_edit(sae, ids, "clamp", values=[4.0] * len(ids))
    gen_kwargs = dict(max_new_tokens=args.new_tokens, chat=True, stop_at_eos=False, batch_size=16)
    plain = partial(tlsteer.generate_tokens, model, questions[:16], **gen_kwargs)
    steer = {"edits": [(hook, edit)], "last_token_only": True}
    steered = partial(tlsteer.generate_tokens, model, questions[:16], **steer, **gen_kwargs)
    read(), enc()  # warm-up
    times: dict[str, list[float]] = {"read": [], "encode": [], "generate": [], "generate_feature_steered": []}
    for _ in range(args.repeats):
        times["read"].append(timed(read))
        times["encode"].append(timed(enc))
        times["generate"].append(timed(plain))
        times["generate_feature_steered"].append(timed(steered))
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "sae": {
            "kind": "TopK, random weights" if args.random else f"shipped (load_embedded_sae({args.layer}))",
            "d_sae": sae.cfg.d_sae,
            "k": sae.cfg.k,
            "hook": hook,
        },
        "prompts": len(prompts),
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "seconds": times,
        "encode_overhead": med["encode"] / med["read"] - 1,
        "feature_steering_overhead": med["generate_feature_steered"] / med["generate"] - 1,
        "goal": 0.20,
    }
    print(json.dumps(result, indent=1))
    (args.out / "sae_overhead.json").write_text(json.dumps(result, indent=1))

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
    fig.savefig(args.out / "sae_overhead.png", dpi=120)


if __name__ == "__main__":
    main()
