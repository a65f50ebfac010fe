"""Extraction speed, memory and agreement: tlsteer against three plain ways to read activations.

All methods build the mean-of-differences vector at every layer's ``resid_post`` from the same
pairs, read at the answer letter (CAA), on the embedded SmolLM2-135M-Instruct:

  (a) tlsteer.train_steering_vector (prefix sharing, stop at the deepest layer, running sums)
  (b) a plain one-prompt-at-a-time ``run_with_cache`` loop
  (c) a batched ``run_with_cache`` (left-padded, attention mask) without prefix sharing
  (c') tlsteer with ``share_prefix=False`` (batched run_with_cache that stops at the last layer)
  (d) a transformers forward with ``output_hidden_states=True``, batched like steering-vectors
  (e) the steering-vectors package itself (``steering_vectors.train_steering_vector`` on the
      transformers model, the same read positions and batch size), when it is installed
      (``pip install --no-deps steering-vectors==0.12.2``: it pins transformers < 5, yet runs on
      the transformers tlsteer installs; the arm is left out otherwise)

With ``--repeats N`` every method runs N times, in the same order each round (interleaved), and
the median time is reported. Tokens/s counts every token of every positive and negative prompt
(the work a pair-by-pair method does), so the methods share one numerator. Ratios come from one
run on one machine. Memory: fresh processes; resident memory sampled every 5 ms while training,
above the level after loading the model, with every activation kept (extract + aggregate) or as
running sums.

With ``--tiny``: the tiny model and its ``transformers`` twin (the same weights), a few pairs (of a
CAA-format folder written from the built-ins, without ``--caa-dir``), and the memory runs in this
process (their numbers mean nothing there).

    python benchmarks/extraction.py --caa-dir ../shared/caa [--per-behaviour 8] [--batch-size 16] [--tiny]
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import _common as common
import torch
from load_model import timed_load  # sibling benchmark

import tlsteer
from tlsteer.aggregators import aggregate_activations
from tlsteer.data import BUILTIN_DATASETS, CAA_BEHAVIOURS, ContrastPair
from tlsteer.tokens import left_pad

TINY = {"per_behaviour": 2, "builtin_pairs": 6, "batch_size": 4, "memory_sizes": [8]}
MEMORY_MODES = {
    "streaming": "tlsteer.train_steering_vector (running sums)",
    "stored": "tlsteer.extract_activations + aggregate_activations (every activation kept)",
}
MEMORY_CHILD = """
import json, sys
sys.path.insert(0, sys.argv[3])
import tlsteer, extraction
print(json.dumps(extraction.measure_memory(tlsteer.load_model(), sys.argv[1], int(sys.argv[2]))))
"""


def hooks_of(model) -> list[str]:
    return [f"blocks.{layer}.hook_resid_post" for layer in range(model.cfg.n_layers)]


def read_positions(model, pairs: list[ContrastPair]) -> list[tuple[list[int], int, list[int], int]]:
    out = []
    for p in pairs:
        pos, neg = tlsteer.tokenize(model, p.positive), tlsteer.tokenize(model, p.negative)
        out.append((pos, len(pos) + p.read_index, neg, len(neg) + p.read_index))
    return out


def method_one_by_one(model, pairs) -> dict[str, torch.Tensor]:
    hooks = hooks_of(model)
    sums = {h: torch.zeros(model.cfg.d_model, dtype=torch.float64) for h in hooks}
    with torch.no_grad():
        for pos, r_pos, neg, r_neg in read_positions(model, pairs):
            _, c_pos = model.run_with_cache(torch.tensor([pos]), names_filter=hooks)
            _, c_neg = model.run_with_cache(torch.tensor([neg]), names_filter=hooks)
            for h in hooks:
                sums[h] += (c_pos[h][0, r_pos] - c_neg[h][0, r_neg]).double()
    return {h: (s / len(pairs)).float() for h, s in sums.items()}


def method_batched_cache(model, pairs, batch_size: int) -> dict[str, torch.Tensor]:
    hooks = hooks_of(model)
    rows = []
    for pos, r_pos, neg, r_neg in read_positions(model, pairs):
        rows += [(pos, r_pos, +1.0), (neg, r_neg, -1.0)]
    sums = {h: torch.zeros(model.cfg.d_model, dtype=torch.float64) for h in hooks}
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            tokens, mask = left_pad(model, [r[0] for r in batch])
            width = tokens.shape[1]
            _, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=hooks)
            cols = torch.tensor([width - len(ids) + r for ids, r, _ in batch])
            signs = torch.tensor([s for _, _, s in batch], dtype=torch.float64)
            for h in hooks:
                sums[h] += (cache[h][torch.arange(len(batch)), cols].double() * signs[:, None]).sum(0)
    return {h: (s / len(pairs)).float() for h, s in sums.items()}


def method_transformers(hf_model, model, pairs, batch_size: int) -> dict[str, torch.Tensor]:
    """Like steering-vectors: batches of prompts through the HF model, right padding.

    ``hidden_states[l + 1]`` is the output of decoder layer ``l``, except the last entry, which
    transformers returns after the final norm; the last layer is read with a forward hook on it.
    """
    hooks = hooks_of(model)
    rows = []
    for pos, r_pos, neg, r_neg in read_positions(model, pairs):
        rows += [(pos, r_pos, +1.0), (neg, r_neg, -1.0)]
    sums = {h: torch.zeros(model.cfg.d_model, dtype=torch.float64) for h in hooks}
    pad = model.tokenizer.pad_token_id
    last_out: list[torch.Tensor] = []
    handle = hf_model.model.layers[-1].register_forward_hook(
        lambda _module, _args, output: last_out.append(output[0] if isinstance(output, tuple) else output)
    )
    try:
        with torch.no_grad():
            for start in range(0, len(rows), batch_size):
                batch = rows[start : start + batch_size]
                width = max(len(ids) for ids, _, _ in batch)
                tokens = torch.full((len(batch), width), pad)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for i, (ids, _, _) in enumerate(batch):
                    tokens[i, : len(ids)] = torch.tensor(ids)
                    mask[i, : len(ids)] = 1
                last_out.clear()
                out = hf_model(input_ids=tokens, attention_mask=mask, output_hidden_states=True)
                cols = torch.tensor([r for _, r, _ in batch])
                signs = torch.tensor([s for _, _, s in batch], dtype=torch.float64)
                for layer, h in enumerate(hooks):
                    hidden = last_out[0] if layer == len(hooks) - 1 else out.hidden_states[layer + 1]
                    sums[h] += (hidden[torch.arange(len(batch)), cols].double() * signs[:, None]).sum(0)
    finally:
        handle.remove()
    return {h: (s / len(pairs)).float() for h, s in sums.items()}


def method_steering_vectors(hf_model, model, pairs, batch_size: int) -> dict[str, torch.Tensor]:
    """steering-vectors' own ``train_steering_vector``: each sample's read positions given, every
    decoder block (its output is ``resid_post``), ``batch_size`` prompts per forward."""
    from steering_vectors import SteeringVectorTrainingSample
    from steering_vectors import train_steering_vector as sv_train

    samples = [
        SteeringVectorTrainingSample(p.positive, p.negative, r_pos, r_neg)
        for p, (_, r_pos, _, r_neg) in zip(pairs, read_positions(model, pairs), strict=True)
    ]
    layers = list(range(model.cfg.n_layers))
    vec = sv_train(hf_model, model.tokenizer, samples, layers=layers, batch_size=batch_size)
    return {f"blocks.{layer}.hook_resid_post": vec.layer_activations[layer].float() for layer in layers}


def has_steering_vectors() -> bool:
    import importlib.util

    return importlib.util.find_spec("steering_vectors") is not None


def agreement(ref: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> dict[str, float]:
    cos = [float(torch.cosine_similarity(ref[h].double(), other[h].double(), dim=0)) for h in ref]
    rel = [float((ref[h] - other[h]).abs().max() / ref[h].norm()) for h in ref]
    return {"min_cosine": min(cos), "max_abs_diff_over_norm": max(rel)}


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def load_pairs(
    model, caa_dir: Path | None, per_behaviour: int, builtin: int
) -> dict[str, list[ContrastPair]]:
    sets = {}
    if caa_dir is not None:
        caa = []
        for name in CAA_BEHAVIOURS:
            path = caa_dir / "generate" / name / "generate_dataset.json"
            caa += tlsteer.load_caa_dataset(path, model, limit=per_behaviour)
        sets["caa_7_behaviours"] = caa
    sets["builtin"] = [
        p for name in BUILTIN_DATASETS for p in tlsteer.load_builtin_dataset(name, model)[:builtin]
    ]
    return sets


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def measure_memory(model, mode: str, n: int) -> dict:
    """Resident memory above the level after loading while training on ``n`` pairs, sampled every 5 ms."""
    pool = [p for name in BUILTIN_DATASETS for p in tlsteer.load_builtin_dataset(name, model)]
    pairs = [pool[i % len(pool)] for i in range(n)]
    with torch.no_grad():
        tlsteer.train_steering_vector(model, pairs[:8], batch_size=16)  # warm-up allocations
        gc.collect()
        base = rss_mb()
        peak = [base]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], rss_mb())
                time.sleep(0.005)

        sampler = threading.Thread(target=sample)
        sampler.start()
        t = time.perf_counter()
        if mode == "streaming":
            tlsteer.train_steering_vector(model, pairs, batch_size=16)
        else:
            acts = tlsteer.extract_activations(model, pairs, batch_size=16)
            aggregate_activations(acts)
        seconds = time.perf_counter() - t
        done.set()
        sampler.join()
    return {
        "pairs": n,
        "rss_before_mb": base,
        "peak_rss_mb": peak[0],
        "growth_mb": peak[0] - base,
        "seconds": seconds,
    }


def memory_runs(sizes: list[int], tiny_model=None) -> list[dict]:
    """Each mode and size in a fresh process (with ``tiny_model``: in this one, on it)."""
    out = []
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for mode, description in MEMORY_MODES.items():
        for n in sizes:
            if tiny_model is not None:
                row = measure_memory(tiny_model, mode, n)
            else:
                argv = [sys.executable, "-c", MEMORY_CHILD, mode, str(n), str(Path(__file__).parent)]
                proc = subprocess.run(argv, capture_output=True, text=True, check=True, env=env)
                row = json.loads(proc.stdout.strip().splitlines()[-1])
            out.append(row | {"mode": description})
            common.log.info("%s", out[-1])
    return out


def speed_runs(args) -> tuple[dict, object]:
    """Load times, then every method on each dataset in one process (ratios from one run); the
    results and the model."""
    with tempfile.TemporaryDirectory() as cache:
        cold = timed_load(cache, args.tiny)
        warm = timed_load(cache, args.tiny)
    common.log.info("load_model: cold %.1f s, warm %.2f s", cold["load_s"], warm["load_s"])
    model = common.load_model(args)
    hf_model = common.load_hf_model(args, model)
    results = {"load_model": {"cold_s": cold["load_s"], "warm_s": warm["load_s"]}, "datasets": {}}
    bs = args.batch_size
    caa_dir = common.caa_dir(args) if args.caa_dir is not None or args.tiny else None
    for name, pairs in load_pairs(model, caa_dir, args.per_behaviour, args.builtin_pairs).items():
        n_tokens = sum(len(a) + len(b) for a, _, b, _ in read_positions(model, pairs))

        def train(p, share):
            return dict(tlsteer.train_steering_vector(model, p, batch_size=bs, share_prefix=share).directions)

        methods = {
            "a_tlsteer": lambda p=pairs: train(p, True),
            "c_batched_run_with_cache": lambda p=pairs: method_batched_cache(model, p, bs),
            "c2_tlsteer_no_prefix_sharing": lambda p=pairs: train(p, False),
            "d_transformers_hidden_states": lambda p=pairs: method_transformers(hf_model, model, p, bs),
        }
        if has_steering_vectors():
            methods["e_steering_vectors_package"] = lambda p=pairs: method_steering_vectors(
                hf_model, model, p, bs
            )
        if not args.skip_one_by_one:
            methods["b_one_by_one_run_with_cache"] = lambda p=pairs: method_one_by_one(model, p)
        for fn in methods.values():  # warm-up: first-call allocations are not timed
            fn(pairs[:4])
        vectors, runs = {}, {label: [] for label in methods}
        for _ in range(args.repeats):
            for label, fn in methods.items():
                vectors[label], seconds = timed(fn)
                runs[label].append(seconds)
                common.log.info("%s %s: %.1f s, %.0f tokens/s", name, label, seconds, n_tokens / seconds)
        rows = {}
        for label, times in runs.items():
            seconds = statistics.median(times)
            rows[label] = {"seconds": seconds, "runs_s": times, "tokens_per_s": n_tokens / seconds}
        ref = rows["a_tlsteer"]["seconds"]
        for label in rows:
            rows[label]["speedup_of_tlsteer"] = rows[label]["seconds"] / ref
            rows[label]["agreement_with_tlsteer"] = agreement(vectors[label], vectors["a_tlsteer"])
        results["datasets"][name] = {"pairs": len(pairs), "tokens": n_tokens, "methods": rows}
    return results, model


def body(args) -> Path:
    path = args.out / "extraction.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    results = {k: previous[k] for k in ("load_model", "datasets", "memory") if k in previous}
    model = None
    if "speed" in args.parts:
        speed, model = speed_runs(args)
        results |= speed
    if "memory" in args.parts:
        if args.tiny and model is None:
            model = common.load_model(args)
        results["memory"] = memory_runs(args.memory_sizes, model if args.tiny else None)
    results["batch_size"] = args.batch_size
    results["repeats"] = args.repeats
    results["threads"] = torch.get_num_threads()
    common.write_json(path, results)
    plot(results, args.out / "extraction.png", model.cfg.n_layers if model is not None else 30)
    common.log.info("%s", json.dumps(results, indent=1))
    return path


def plot(results: dict, path: Path, n_layers: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["datasets"])
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        rows = results["datasets"][name]["methods"]
        labels = list(rows)
        ax.barh(
            labels,
            [rows[k]["tokens_per_s"] for k in labels],
            color=["C2" if k == "a_tlsteer" else "C0" for k in labels],
        )
        ax.set_xlabel(f"prompt tokens / s (all {n_layers} layers)")
        ax.set_title(f"{name}: {results['datasets'][name]['pairs']} pairs")
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> Path:
    p = common.parser(__doc__)
    p.add_argument("--caa-dir", type=Path, default=None)
    p.add_argument("--per-behaviour", type=int, default=8)
    p.add_argument("--builtin-pairs", type=int, default=40, help="pairs of each built-in dataset")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--memory-sizes", type=int, nargs="*", default=[100, 1000])
    p.add_argument("--skip-one-by-one", action="store_true")
    p.add_argument("--repeats", type=int, default=1, help="interleaved rounds of every method (median)")
    p.add_argument(
        "--parts",
        nargs="+",
        choices=["speed", "memory"],
        default=["speed", "memory"],
        help="what to measure; a part left out is kept from the existing extraction.json",
    )
    return common.run(body, p, argv, TINY)


if __name__ == "__main__":
    main()
