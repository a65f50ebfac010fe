"""Steered generation against transformers' and TransformerLens's own ``generate``, interleaved.

Arms, all greedy, chat prompts, a fixed number of new tokens (no stop at end of sequence):

- ``tlsteer``: ``tlsteer.generate_tokens`` steered by a layer-12 sentiment vector from each
  prompt's last token on (``Positions.last()``), on the fast decoding path (``fast=True``);
- ``tlsteer_tl_forward``: the same, on TransformerLens's forward at every step (``fast=False``:
  the path before the fast one);
- ``transformer_lens``: TransformerLens's own ``model.generate`` (KV cache on), unsteered;
- ``transformers``: Hugging Face ``generate`` on the same weights (the GGUF dequantised by
  transformers), unsteered, left-padded with an attention mask.

At batch ``b`` the first ``max(b, 4)`` built-in open prompts (``--prompts-per-batch`` overrides)
are generated ``b`` at a time. Every (batch, arm) pair runs once per repeat, in the same order,
``--repeats`` times; tokens per second come from the median time. A parity run (not timed)
records the largest difference of per-step logits between the fast path and TransformerLens's
forward, and whether the tokens agree.

``--profile`` adds where the time of one steered decode step goes at batch 1 and 16: exclusive
wall time per TransformerLens component on its forward (attention, rotary, the KV cache's
appends, MLP, norms, hook points, block and model glue), the top operators of both paths
(``torch.profiler``, self CPU time), and the machine's physical limit for this model: weight bytes
read per step over measured memory bandwidth, and matrix-multiply FLOPs per step over measured
``torch.mm`` throughput.

    python benchmarks/generation_speed.py [--new-tokens 32] [--repeats 3] [--profile] [--tiny]
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import _common as common
import torch

import tlsteer
from tlsteer.data import load_open_prompts
from tlsteer.decode import decode_path
from tlsteer.fast_decode import FastDecoder
from tlsteer.tokens import left_pad, pad_token_id

TINY = {
    "new_tokens": 4,
    "repeats": 1,
    "batches": "1,4",
    "layer": 2,
    "pairs": 8,
    "profile": True,
    "profile_steps": 1,
}
ARMS = ("tlsteer", "tlsteer_tl_forward", "transformer_lens", "transformers")


def steering_for(model, args) -> tlsteer.Steering:
    pairs = tlsteer.load_builtin_dataset("sentiment", model)[: args.pairs]
    vec = tlsteer.train_steering_vector(model, pairs, layers=[args.layer], batch_size=16)
    vec = vec * (4.0 / vec.norms()[vec.hooks[0]])
    return vec.steering(1.0, positions=tlsteer.Positions.last())


def chat_ids(model, prompts: list[str]) -> list[list[int]]:
    return [tlsteer.tokenize(model, tlsteer.chat_prompt(model, p)) for p in prompts]


def run_arm(arm: str, model, hf_model, prompts, ids, steering, batch: int, new_tokens: int) -> float:
    """Seconds to generate ``new_tokens`` for every prompt, ``batch`` at a time."""
    start = time.perf_counter()
    for i in range(0, len(prompts), batch):
        chunk, chunk_ids = prompts[i : i + batch], ids[i : i + batch]
        if arm in ("tlsteer", "tlsteer_tl_forward"):
            tlsteer.generate_tokens(
                model,
                chunk,
                steering,
                max_new_tokens=new_tokens,
                chat=True,
                stop_at_eos=False,
                batch_size=batch,
                fast=arm == "tlsteer",
            )
            continue
        tokens, mask = left_pad(model, chunk_ids)
        if arm == "transformer_lens":
            model.generate(
                tokens,
                max_new_tokens=new_tokens,
                do_sample=False,
                stop_at_eos=False,
                use_past_kv_cache=True,
                verbose=False,
                padding_side="left",
            )
        else:
            hf_model.generate(
                input_ids=tokens,
                attention_mask=mask,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=pad_token_id(model),
            )
    return time.perf_counter() - start


def parity(model, prompts, steering, new_tokens: int) -> dict[str, Any]:
    settings = dict(max_new_tokens=new_tokens, chat=True, stop_at_eos=False, keep_logits=True)
    fast = tlsteer.generate_tokens(model, prompts, steering, **settings)
    slow = tlsteer.generate_tokens(model, prompts, steering, fast=False, **settings)
    diff = max(float((a - b).abs().max()) for a, b in zip(fast.step_logits, slow.step_logits, strict=True))
    return {
        "prompts": len(prompts),
        "new_tokens": new_tokens,
        "max_abs_diff_step_logits": diff,
        "rows_with_identical_tokens": sum(
            a == b for a, b in zip(fast.new_tokens, slow.new_tokens, strict=True)
        ),
        "decode_path": decode_path(model),
    }


# -- profile ---------------------------------------------------------------------------------------
_CATEGORIES = {
    "Attention": "attention (scores, softmax, z, W_O)",
    "GroupedQueryAttention": "attention (scores, softmax, z, W_O)",
    "GatedMLP": "mlp",
    "MLP": "mlp",
    "RMSNorm": "norms",
    "LayerNorm": "norms",
    "HookPoint": "hook points (their forward; the module-call overhead is estimated apart)",
    "Unembed": "unembed",
    "Embed": "embed",
    "TransformerBlock": "block glue (residual adds)",
    "HookedTransformer": "model glue (masks, positions, cache setup)",
}


class ExclusiveTimer:
    """Exclusive wall time per category: each timed call minus the timed calls inside it."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.stack: list[list[float]] = []

    def wrap(self, fn, category: str):
        def timed(*args, **kwargs):
            self.stack.append([time.perf_counter(), 0.0])
            try:
                return fn(*args, **kwargs)
            finally:
                start, inner = self.stack.pop()
                elapsed = time.perf_counter() - start
                self.totals[category] += elapsed - inner
                self.calls[category] += 1
                if self.stack:
                    self.stack[-1][1] += elapsed

        return timed


def profile_tl_step(model, steering, ids, batch: int, steps: int) -> dict[str, float]:
    """Milliseconds per decode step by component, on TransformerLens's forward (steered)."""
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
    from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

    tokens, mask = left_pad(model, (ids * batch)[:batch])
    timer = ExclusiveTimer()
    patched: list[tuple[Any, str, Any]] = []

    def patch(owner, name, category):
        patched.append((owner, name, getattr(owner, name)))
        setattr(owner, name, timer.wrap(getattr(owner, name), category))

    hooks = [
        (name, timer.wrap(fn, "steering hooks (edits and the position tracker)"))
        for name, fn in steering.hooks(model, check_model=False, row_shift=[0] * batch)
    ]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):  # pyright: ignore[reportArgumentType]
        cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, batch)
        logits = model(tokens, attention_mask=mask, past_kv_cache=cache)[:, -1]
        feed = logits.argmax(-1)[:, None]
        ones = torch.ones(batch, 1, dtype=mask.dtype)
        model(feed, attention_mask=ones, past_kv_cache=cache)  # warm
        for module in model.modules():
            category = _CATEGORIES.get(type(module).__name__)
            if category is not None:
                patch(module, "forward", category)
        for block in model.blocks:
            patch(block.attn, "apply_rotary", "rotary (every cached key, every step)")
        patched.append(
            (TransformerLensKeyValueCacheEntry, "append", TransformerLensKeyValueCacheEntry.append)
        )
        TransformerLensKeyValueCacheEntry.append = timer.wrap(
            TransformerLensKeyValueCacheEntry.append, "kv cache append (concatenation)"
        )
        try:
            start = time.perf_counter()
            for _ in range(steps):
                model(feed, attention_mask=ones, past_kv_cache=cache)
            total = time.perf_counter() - start
        finally:
            for owner, name, original in reversed(patched):
                if isinstance(owner, type):
                    setattr(owner, name, original)
                else:
                    delattr(owner, name) if name in vars(owner) else setattr(owner, name, original)
    out = {k: 1000 * v / steps for k, v in sorted(timer.totals.items(), key=lambda kv: -kv[1])}
    out["total"] = 1000 * total / steps
    out["outside the timed functions"] = out["total"] - sum(v for k, v in out.items() if k != "total")
    out["hook point calls per step"] = timer.calls[_CATEGORIES["HookPoint"]] / steps
    out["hook point module call, us each (no hook)"] = hook_call_us(model)
    return out


def hook_call_us(model) -> float:
    """Microseconds of one call of a HookPoint nobody listens to (the nn.Module call machinery)."""
    point = model.blocks[0].hook_resid_mid
    x = torch.zeros(1, 1, model.cfg.d_model)
    for _ in range(100):
        point(x)
    start = time.perf_counter()
    for _ in range(2000):
        point(x)
    return 1e6 * (time.perf_counter() - start) / 2000


def top_ops(model, steering, ids, batch: int, steps: int, fast: bool) -> list[dict[str, Any]]:
    """The operators that take most self CPU time in ``steps`` steered decode steps."""
    from torch.profiler import ProfilerActivity, profile
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    tokens, mask = left_pad(model, (ids * batch)[:batch])
    hooks = steering.hooks(model, check_model=False, row_shift=[0] * batch)
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):  # pyright: ignore[reportArgumentType]
        if fast:
            decoder = FastDecoder(model, batch, tokens.shape[1] + steps + 2)
            logits = decoder.prefill(tokens, mask)
            feed = logits.argmax(-1)[:, None]
            decoder.step(feed)

            def forward():
                return decoder.step(feed)
        else:
            cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, batch)
            logits = model(tokens, attention_mask=mask, past_kv_cache=cache)[:, -1]
            feed = logits.argmax(-1)[:, None]
            ones = torch.ones(batch, 1, dtype=mask.dtype)
            model(feed, attention_mask=ones, past_kv_cache=cache)

            def forward():
                return model(feed, attention_mask=ones, past_kv_cache=cache)

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                forward()
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]
    return [
        {
            "op": e.key,
            "calls_per_step": e.count / steps,
            "self_ms_per_step": e.self_cpu_time_total / 1000 / steps,
        }
        for e in rows
    ]


def physical_limit(model, batches: list[int]) -> dict[str, Any]:
    """Weight bytes and matmul FLOPs of one decode step, over measured bandwidth and throughput."""
    per_step_params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("embed."))
    matmul_params = sum(
        p.numel() for n, p in model.named_parameters() if p.ndim >= 2 and not n.startswith("embed.")
    )
    weight_bytes = per_step_params * 4
    big = torch.ones(64 * 2**20)  # 256 MiB of float32, more than any cache
    big.sum()
    reads = []
    for _ in range(5):
        start = time.perf_counter()
        big.sum()
        reads.append(time.perf_counter() - start)
    bandwidth = big.numel() * 4 / min(reads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    mms = []
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        mms.append(time.perf_counter() - start)
    flops_per_s = 2 * 2048**3 / min(mms)
    out = {
        "weight_bytes_per_step": weight_bytes,
        "read_bandwidth_gb_per_s": bandwidth / 1e9,
        "matmul_gflop_per_s": flops_per_s / 1e9,
        "threads": torch.get_num_threads(),
        "per_batch": {},
    }
    for batch in batches:
        flops = 2 * matmul_params * batch
        step_s = max(weight_bytes / bandwidth, flops / flops_per_s)
        out["per_batch"][str(batch)] = {
            "memory_bound_ms": 1000 * weight_bytes / bandwidth,
            "compute_bound_ms": 1000 * flops / flops_per_s,
            "limit_tokens_per_s": batch / step_s,
        }
    return out


def body(args) -> Path:
    model = common.load_model(args)
    hf_model = common.load_hf_model(args, model)
    steering = steering_for(model, args)
    batches = [int(b) for b in str(args.batches).split(",")]
    pool = load_open_prompts()
    plan = {b: pool[: args.prompts_per_batch or max(b, 4)] for b in batches}
    ids = {b: chat_ids(model, prompts) for b, prompts in plan.items()}
    for arm in ARMS:  # warm-up: first calls allocate and load kernels
        run_arm(arm, model, hf_model, plan[batches[0]][:1], ids[batches[0]][:1], steering, 1, 2)
    times: dict[str, dict[str, list[float]]] = {str(b): {a: [] for a in ARMS} for b in batches}
    for repeat in range(args.repeats):
        for b in batches:
            for arm in ARMS:
                seconds = run_arm(arm, model, hf_model, plan[b], ids[b], steering, b, args.new_tokens)
                times[str(b)][arm].append(seconds)
                common.log.info("repeat %d batch %d %s: %.2f s", repeat, b, arm, seconds)
    table = {}
    for b in batches:
        n_tokens = len(plan[b]) * args.new_tokens
        speed = {arm: n_tokens / statistics.median(times[str(b)][arm]) for arm in ARMS}
        table[str(b)] = {
            "prompts": len(plan[b]),
            "tokens_per_s": speed,
            "tlsteer_time_over_transformers": speed["transformers"] / speed["tlsteer"],
            "tlsteer_time_over_transformer_lens": speed["transformer_lens"] / speed["tlsteer"],
            "speedup_over_tl_forward_path": speed["tlsteer"] / speed["tlsteer_tl_forward"],
        }
    result: dict[str, Any] = {
        "model": model.cfg.model_name,
        "new_tokens_per_prompt": args.new_tokens,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "steering": f"layer {args.layer} sentiment vector, norm 4, Positions.last()",
        "seconds": times,
        "table": table,
        "parity": parity(model, pool[:4], steering, args.new_tokens),
        "goal": "tlsteer steered within 1.2x of transformers unsteered at batch 16 (at most 1.5x)",
    }
    if args.profile:
        base = chat_ids(model, pool[:1])
        result["profile"] = {
            str(b): {
                "transformer_lens_forward_ms": profile_tl_step(model, steering, base, b, args.profile_steps),
                "top_ops_transformer_lens_forward": top_ops(
                    model, steering, base, b, args.profile_steps, False
                ),
                "top_ops_fast_path": top_ops(model, steering, base, b, args.profile_steps, True),
            }
            for b in (1, 16)
        }
        result["physical_limit"] = physical_limit(model, batches)
    common.log.info("%s", table)
    path = common.write_json(args.out / "generation_speed.json", result)
    plot(result, args.out / "generation_speed.png")
    return path


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = list(result["table"])
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    width = 0.8 / len(ARMS)
    for k, arm in enumerate(ARMS):
        values = [result["table"][b]["tokens_per_s"][arm] for b in batches]
        xs = [i + (k - (len(ARMS) - 1) / 2) * width for i in range(len(batches))]
        ax.bar(xs, values, width, label=arm)
    ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
    ax.set_ylabel("generated tokens / s")
    ax.set_title("greedy generation (tlsteer steered; the others unsteered)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> Path:
    p = common.parser(__doc__)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batches", default="1,4,16", help="comma-separated batch sizes")
    p.add_argument("--prompts-per-batch", type=int, default=0, help="prompts per batch size (0: max(b, 4))")
    p.add_argument("--layer", type=int, default=12)
    p.add_argument("--pairs", type=int, default=60, help="sentiment pairs that build the vector")
    p.add_argument("--profile", action="store_true", help="also profile one decode step (batch 1 and 16)")
    p.add_argument("--profile-steps", type=int, default=8)
    return common.run(body, p, argv, TINY)


if __name__ == "__main__":
    main()
