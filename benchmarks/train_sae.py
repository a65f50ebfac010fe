"""Train a TopK SAE with sae-lens on the embedded model's residual stream, cache first, then epochs.

Reads the corpus that ``benchmarks/sae_corpus.py`` builds. Two sae-lens runners do the work:

1. ``CacheActivationsRunner`` runs the model once over the corpus (up to block ``L`` only) and writes
   ``blocks.L.hook_resid_post`` to ``benchmarks/build/sae_activations/layer_L`` (a ``datasets``
   folder, reused while the corpus hash, hook and dtype match; ``--recache`` forces it). The runner
   takes no model object, so its ``load_model`` is pointed at the tlsteer model for that one call.
2. ``LanguageModelSAETrainingRunner(cfg, override_model=model, override_dataset=corpus)`` with
   ``use_cached_activations=True`` trains a TopK SAE for ``--training-tokens`` tokens: several
   epochs over the cache, without running the model again. wandb is off.

Positions 0 and 1 of every row are left out of caching and training (``seqpos_slice=(2, None)``).
The first position of a sequence is an attention sink: its residual norm is ~170x the median at
layer 12 (~8x at layer 6). The corpus rows are packed, so most begin mid-text, and then position 1
is a second sink in ~2% of rows at layer 12 (measured on 1,500 random row starts: after ``?`` or a
newline, say; never at positions 2+). One such token weighs as much as ~29,000 ordinary ones in the
squared error, so together they would outweigh all the rest. In real use a conversation begins
``<|im_start|>system``, where only position 0 is a sink: the evaluation here (and the tests) leave
out position 0 only. The largest norm ratio among the training tokens kept is measured on a sample
and recorded (a warning is printed above 50x). sae-lens's ``run_evals`` ignores ``seqpos_slice``; it
is not used (it only runs with wandb logging). Other short-run traps set here:
``n_batches_for_norm_estimate`` (the default 1000 batches is more than a whole run),
``dead_feature_window`` (the default 1000 steps never flags a feature in a run of a few hundred, so
the TopK auxiliary loss never acts), and a mixing buffer at least one training batch large.

After training the activation-norm scaling and the decoder norms are folded into the weights
(``W_dec`` rows have unit norm), the metadata is set to how the activations were taken (context
128, ``seqpos_slice=(2, None)``), and the inference SAE is saved with ``save_inference_model`` into
``tlsteer/sae/weights/layer_L/`` (fp16 if fp32 would pass 25 MB), with ``provenance.json`` and
``heldout_texts.json`` (up to 12 held-out conversations whose user turn is one of tlsteer's own
prompts, never CAA text; the tests check explained variance on them). The
saved SAE is loaded back and evaluated on held-out text before the wall time is printed.

    python benchmarks/sae_corpus.py --caa-dir ../shared/caa && python benchmarks/train_sae.py --layer 6 \\
        && python benchmarks/train_sae.py --layer 12
    python benchmarks/train_sae.py --layer 6 --training-tokens 200000 --width 256 --k 16 --batch-size 1024 \\
        --corpus benchmarks/build/sae_corpus_smoke --out benchmarks/build/sae_smoke/layer_6   # smoke
    python benchmarks/train_sae.py --tiny   # seconds: a tiny corpus (sae_corpus.py --tiny), a tiny SAE

``--out`` is the folder the SAE is saved in (default ``tlsteer/sae/weights/layer_L``); with ``--tiny``
a temporary folder, which also holds the tiny corpus and the activation cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path
from unittest import mock

import _common as common
import torch

import tlsteer
from tlsteer.data import load_open_prompts

ROOT = common.ROOT
BUILD = common.BUILD
WEIGHTS = ROOT / "tlsteer" / "sae" / "weights"
TINY = {
    "layer": 1,
    "width": 64,
    "k": 8,
    "training_tokens": 4096,
    "batch_size": 512,
    "dead_window_tokens": 1024,
    "norm_estimate_batches": 2,
    "mixing_buffer_tokens": 1024,
    "model_batch": 8,
    "max_shard_gb": 0.01,
    "eval_texts": 4,
    "corpus": None,
}
SEQPOS = (2, None)
"""Training rows: positions 0 and 1 left out (sinks at the start of packed rows)."""
EVAL_START = 1
"""Conversations (real use, held-out evaluation): only position 0 is a sink."""
OUTLIER_WARNING = 50.0
SHIPPED_SAMPLE = 12
MAX_FP32_MB = 25.0
SINK_NOTE = (
    "position 0 of a sequence is an attention sink (evaluation.sink_norm_ratio: its norm over the "
    "median); in packed rows that begin mid-text position 1 is one too in ~2% of rows at layer 12, "
    "so training leaves out positions 0 and 1; conversations (evaluation, real use) begin "
    "'<|im_start|>system' and leave out position 0 only"
)


def parser():
    p = common.parser(
        __doc__, out_help="the folder the SAE is saved in (default: tlsteer/sae/weights/layer_L)"
    )
    p.add_argument("--layer", type=int, default=None, help="train on blocks.L.hook_resid_post (required)")
    p.add_argument("--width", type=int, default=4608, help="d_sae (8x d_model by default)")
    p.add_argument("--k", type=int, default=64, help="active features per token (TopK)")
    p.add_argument("--training-tokens", type=int, default=1_500_000)
    p.add_argument("--batch-size", type=int, default=4096, help="training batch, in tokens")
    p.add_argument("--lr", type=float, default=1e-3, help="short runs need more than sae-lens's 3e-4")
    p.add_argument("--warmup-fraction", type=float, default=0.05)
    p.add_argument("--decay-fraction", type=float, default=0.2, help="linear decay to 0 over the last part")
    p.add_argument("--dead-window-tokens", type=int, default=200_000, help="no firing for this long = dead")
    p.add_argument("--norm-estimate-batches", type=int, default=10)
    p.add_argument("--mixing-buffer-tokens", type=int, default=65_536)
    p.add_argument("--model-batch", type=int, default=16, help="rows per model forward while caching")
    p.add_argument("--cache-dtype", choices=("float32", "float16"), default="float16", help="on disk")
    p.add_argument("--max-shard-gb", type=float, default=0.5, help="cache shard size (RAM: as float32)")
    p.add_argument("--save-dtype", choices=("auto", "float32", "float16"), default="auto")
    p.add_argument("--eval-texts", type=int, default=200, help="held-out conversations to evaluate on")
    p.add_argument("--corpus", type=Path, default=BUILD / "sae_corpus")
    p.add_argument("--cache-dir", type=Path, default=None, help="default: build/sae_activations/layer_L")
    p.add_argument("--recache", action="store_true", help="cache the activations again")
    p.add_argument("--no-cache", action="store_true", help="run the model during training instead")
    return p


def plan_cache(n_rows: int, batch_rows: int, row_tokens: int, bytes_per_token: int, max_gb: float):
    """Shards of whole model batches that split the rows evenly: ``(rows_used, n_shards, batches_per_shard)``.

    ``CacheActivationsRunner`` fills every shard completely (cycling the data if it runs out), so
    the rows it is given must be an exact number of shards; the few rows left over are dropped.
    """
    n_batches = n_rows // batch_rows
    if n_batches < 1:
        raise SystemExit(f"the corpus has {n_rows} rows, fewer than one model batch ({batch_rows})")
    per_shard_max = max(1, int(max_gb * 1e9 // (batch_rows * row_tokens * bytes_per_token)))
    n_shards = math.ceil(n_batches / per_shard_max)
    per_shard = n_batches // n_shards
    return n_shards * per_shard * batch_rows, n_shards, per_shard


def cache_activations(model, dataset, args, hook: str, corpus_hash: str, cache_dir: Path) -> dict:
    """Write the hook's activations over the corpus to ``cache_dir`` (or reuse a matching cache)."""
    from sae_lens import CacheActivationsRunner, CacheActivationsRunnerConfig
    from sae_lens import cache_activations_runner as car

    context = len(dataset[0]["input_ids"])
    row_tokens = len(range(context)[slice(*SEQPOS)])
    bytes_per_token = model.cfg.d_model * torch.finfo(getattr(torch, args.cache_dtype)).bits // 8
    rows, n_shards, per_shard = plan_cache(
        len(dataset), args.model_batch, row_tokens, bytes_per_token, args.max_shard_gb
    )
    key = {
        "rows_sha256": corpus_hash,
        "hook_name": hook,
        "dtype": args.cache_dtype,
        "context_size": context,
        "seqpos_slice": list(SEQPOS),
        "rows": rows,
    }
    info_path = cache_dir / "tlsteer_cache.json"
    if info_path.exists() and not args.recache:
        info = json.loads(info_path.read_text())
        if info["key"] == key:
            common.log.info("reusing cached activations in %s (%d tokens)", cache_dir, info["tokens"])
            return info
        common.log.info(
            "cached activations in %s are for another corpus or setting; caching again", cache_dir
        )
    if cache_dir.exists():
        shutil.rmtree(cache_dir)
    cfg = CacheActivationsRunnerConfig(
        dataset_path=str(args.corpus / "dataset"),
        model_name=model.cfg.model_name,
        model_batch_size=args.model_batch,
        hook_name=hook,
        d_in=model.cfg.d_model,
        training_tokens=rows * row_tokens,
        context_size=context,
        new_cached_activations_path=str(cache_dir),
        shuffle=False,  # the runner shuffles only the object it returns, never the files
        seed=args.seed,
        dtype=args.cache_dtype,
        device="cpu",
        buffer_size_gb=(per_shard + 0.5) * args.model_batch * row_tokens * bytes_per_token / 1e9,
        prepend_bos=False,
        seqpos_slice=SEQPOS,
        streaming=False,
    )
    if (cfg.n_buffers, cfg.n_batches_in_buffer) != (n_shards, per_shard):
        raise RuntimeError(
            f"cache plan {(n_shards, per_shard)} != sae-lens's {(cfg.n_buffers, cfg.n_batches_in_buffer)}"
        )
    start = time.perf_counter()
    with warnings.catch_warnings():
        # rows counted against tokens (as in train()): expected
        warnings.filterwarnings("ignore", message="The training dataset contains fewer samples")
        with mock.patch.object(car, "load_model", lambda **_: model):
            runner = CacheActivationsRunner(cfg, override_dataset=dataset.select(range(rows)))
        runner.run()
    seconds = time.perf_counter() - start
    tokens = rows * row_tokens
    info = {
        "key": key,
        "tokens": tokens,
        "rows_dropped": len(dataset) - rows,
        "shards": n_shards,
        "seconds": round(seconds, 1),
        "tokens_per_s": round(tokens / seconds, 1),
    }
    info_path.write_text(json.dumps(info, indent=1))
    common.log.info(
        "cached %d tokens of %s in %.0fs (%.0f tokens/s)", tokens, hook, seconds, tokens / seconds
    )
    return info


def runner_config(model, args, hook: str, context: int, cache_dir: Path | None):
    """sae-lens's runner config: a TopK SAE, wandb off, nothing written by the runner itself."""
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig, TopKTrainingSAEConfig

    steps = args.training_tokens // args.batch_size
    cached = cache_dir is not None
    sliced = len(range(context)[slice(*SEQPOS)])
    return LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(
            d_in=model.cfg.d_model,
            d_sae=args.width,
            k=args.k,
            normalize_activations="expected_average_only_in",
            dtype="float32",
            device="cpu",
        ),
        model_name=model.cfg.model_name,
        hook_name=hook,
        dataset_path=str(args.corpus / "dataset"),
        is_dataset_tokenized=True,
        streaming=False,
        context_size=sliced if cached else context,  # cached rows are already sliced
        seqpos_slice=(None,) if cached else SEQPOS,
        use_cached_activations=cached,
        cached_activations_path=str(cache_dir) if cached else None,
        prepend_bos=False,
        training_tokens=args.training_tokens,
        train_batch_size_tokens=args.batch_size,
        store_batch_size_prompts=args.model_batch,
        n_batches_in_buffer=max(2, math.ceil(max(args.mixing_buffer_tokens, args.batch_size) / sliced)),
        lr=args.lr,
        lr_warm_up_steps=int(steps * args.warmup_fraction),
        lr_decay_steps=int(steps * args.decay_fraction),
        dead_feature_window=max(1, args.dead_window_tokens // args.batch_size),
        feature_sampling_window=max(1, steps),
        n_batches_for_norm_estimate=max(1, min(args.norm_estimate_batches, steps)),
        logger=LoggingConfig(log_to_wandb=False),
        n_checkpoints=0,
        checkpoint_path=None,
        output_path=None,
        device="cpu",
        act_store_device="cpu",
        dtype="float32",
        seed=args.seed,
        exclude_special_tokens=False,
    )


@torch.no_grad()
def activation_sample(model, dataset, hook: str, layer: int, cache_dir: Path | None, rows: int = 256):
    """Up to ``rows`` rows of the hook's activations at the training positions (cache, else a forward)."""
    if cache_dir is not None:
        from datasets import load_from_disk

        cached = load_from_disk(str(cache_dir)).with_format("torch", columns=[hook])
        return cached[: min(rows, len(cached))][hook].reshape(-1, model.cfg.d_model).float()
    tokens = torch.tensor(dataset[: min(rows // 8, len(dataset))]["input_ids"])
    _, cache = model.run_with_cache(tokens, names_filter=[hook], stop_at_layer=layer + 1)
    return cache[hook][:, slice(*SEQPOS)].reshape(-1, model.cfg.d_model)


def initial_sae(cfg, sample: torch.Tensor):
    """sae-lens's own initial SAE, with ``b_dec`` at the mean activation (in the normalised units).

    The residual stream has a large mean (norm ~0.7 of the typical activation norm); from
    ``b_dec = 0`` Adam needs thousands of steps to reach it, more than a short run has, and the
    features spend their capacity on it meanwhile. ``expected_average_only_in`` scales inputs by
    ``sqrt(d_in) / mean norm`` (sae-lens estimates it again at the start of training).
    """
    from sae_lens import TrainingSAE, TrainingSAEConfig

    sae = TrainingSAE.from_dict(TrainingSAEConfig.from_dict(cfg.get_training_sae_cfg_dict()).to_dict())
    scale = sample.shape[-1] ** 0.5 / sample.norm(dim=-1).mean()
    with torch.no_grad():
        sae.b_dec.copy_(scale * sample.mean(0))
    return sae


def train(model, dataset, cfg, sae):
    from sae_lens import LanguageModelSAETrainingRunner

    with warnings.catch_warnings():
        # rows counted against tokens, and 128-token rows against 126-token cached rows: both expected
        warnings.filterwarnings("ignore", message="The training dataset contains fewer samples")
        warnings.filterwarnings("ignore", message="pretokenized dataset has context_size")
        runner = LanguageModelSAETrainingRunner(
            cfg, override_model=model, override_dataset=dataset, override_sae=sae
        )
        start = time.perf_counter()
        sae = runner.run()
    return sae, time.perf_counter() - start


def save(sae, model, args, hook: str, context: int, out: Path) -> str:
    """Fold, set the metadata, pick the dtype and write the inference SAE into ``out``."""
    sae.fold_W_dec_norm()
    meta = sae.cfg.metadata
    meta.model_name = model.cfg.model_name
    meta.hook_name = hook
    meta.context_size = context
    meta.seqpos_slice = SEQPOS
    meta.prepend_bos = False
    meta.sequence_separator_token = None  # rows are pre-tokenized conversations, nothing inserted
    meta.model_from_pretrained_kwargs = {}  # not loaded by name: sae-lens warns on non-empty kwargs
    meta.dataset_path = os.path.relpath(args.corpus.resolve(), ROOT)
    fp32_mb = sum(p.numel() for p in sae.parameters()) * 4 / 2**20
    dtype = args.save_dtype
    if dtype == "auto":
        dtype = "float16" if fp32_mb > MAX_FP32_MB else "float32"
    if out.exists():
        shutil.rmtree(out)
    weights, config = sae.to(getattr(torch, dtype)).save_inference_model(str(out))
    for path in (weights, config):
        path.chmod(0o644)  # safetensors writes 0600; shipped package data must be readable by all
    return dtype


@torch.no_grad()
def evaluate(model, out: Path, hook: str, layer: int, texts: list[str]) -> dict:
    """Explained variance of the saved SAE (loaded back, float32) on held-out conversations."""
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(out), device="cpu", dtype="float32")
    acts, sink = [], []
    for text in texts:
        tokens = torch.tensor([tlsteer.tokenize(model, text)])
        _, cache = model.run_with_cache(tokens, names_filter=[hook], stop_at_layer=layer + 1)
        x = cache[hook][0]
        sink.append(float(x[0].norm() / x[1:].norm(dim=-1).median()))
        acts.append(x[EVAL_START:])
    x = torch.cat(acts)
    norms = x.norm(dim=-1)
    feats = sae.encode(x)
    recon = sae.decode(feats)
    ev = 1 - (x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    return {
        "texts": len(texts),
        "tokens": int(x.shape[0]),
        "explained_variance": round(float(ev), 4),
        "mean_l0": round(float((feats != 0).float().sum(-1).mean()), 2),
        "features_fired": int((feats != 0).any(0).sum()),
        "sink_norm_ratio": round(sorted(sink)[len(sink) // 2], 1),
        "max_norm_ratio_from_position_1": round(float(norms.max() / norms.median()), 1),
    }


def own_conversations(model, texts: list[str], tiny: bool = False) -> list[str]:
    """The conversations whose user turn is one of tlsteer's own prompts (open prompts, neutral text).

    Only these are shipped with the SAE: the others quote the CAA datasets, which the repo reads
    from ``../shared/caa`` but never copies. (With ``--tiny``, where the held-out split is a handful
    of stand-in conversations, any of them if none is tlsteer's own.)
    """
    heads = [tlsteer.chat_prompt(model, p) for p in load_open_prompts() + tlsteer.load_neutral_text()]
    own = [t for t in texts if any(t.startswith(h) for h in heads)]
    if not own and tiny and texts:
        return texts
    if not own:
        raise SystemExit("no held-out conversation has one of tlsteer's own prompts as its user turn")
    return own


def spread(items: list, n: int) -> list:
    """``n`` items spread evenly over the list (all of them if there are fewer)."""
    return items[:: max(1, len(items) // n)][:n]


def versions() -> dict:
    names = ("sae-lens", "transformer-lens", "torch", "datasets", "transformers")
    found = {n: importlib.metadata.version(n) for n in names}
    found["tlsteer"] = tlsteer.__version__
    found["python"] = platform.python_version()
    with contextlib.suppress(Exception):
        found["git_head"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    return found


def tiny_corpus(args) -> Path:
    """A corpus built by ``sae_corpus.py --tiny`` inside ``--out`` (for ``--tiny`` without ``--corpus``)."""
    import sae_corpus  # sibling benchmark

    folder = args.out / "corpus"
    sae_corpus.main(["--tiny", "--out", str(folder), "--seed", str(args.seed), "--heldout-fraction", "0.3"])
    return folder


def body(args) -> Path:
    if args.layer is None:
        raise SystemExit("--layer is required: train on blocks.L.hook_resid_post")
    if args.corpus is None:
        args.corpus = tiny_corpus(args)
    if args.training_tokens < args.batch_size:
        raise SystemExit(
            f"--training-tokens {args.training_tokens} is less than one batch ({args.batch_size})"
        )
    wall = time.perf_counter()
    torch.manual_seed(args.seed)
    from datasets import load_from_disk

    manifest_path = args.corpus / "manifest.json"
    if not manifest_path.exists():
        raise SystemExit(
            f"no corpus in {args.corpus}; build it with: "
            "python benchmarks/sae_corpus.py --caa-dir ../shared/caa"
        )
    manifest = json.loads(manifest_path.read_text())
    dataset = load_from_disk(str(args.corpus / "dataset"))
    model = common.load_model(args)
    if not 0 <= args.layer < model.cfg.n_layers:
        raise SystemExit(f"--layer {args.layer} is not a layer of the model (0..{model.cfg.n_layers - 1})")
    hook = f"blocks.{args.layer}.hook_resid_post"
    # the SAE's own folder (save() replaces it); a --tiny --out also holds the corpus and the cache
    out = args.out / f"layer_{args.layer}" if args.out == WEIGHTS or args.tiny else args.out
    default_cache = (
        args.out / "activations" if args.tiny else BUILD / "sae_activations"
    ) / f"layer_{args.layer}"
    cache_dir = args.cache_dir or default_cache
    context = manifest["context_size"]
    cache = None
    if not args.no_cache:
        cache = cache_activations(model, dataset, args, hook, manifest["rows_sha256"], cache_dir)
    cfg = runner_config(model, args, hook, context, None if args.no_cache else cache_dir)
    acts = activation_sample(model, dataset, hook, args.layer, None if args.no_cache else cache_dir)
    norms = acts.norm(dim=-1)
    outlier_ratio = float(norms.max() / norms.median())
    if outlier_ratio > OUTLIER_WARNING:
        common.log.warning(
            "a training token has %.0fx the median norm; an attention sink got in?", outlier_ratio
        )
    sae, train_seconds = train(model, dataset, cfg, initial_sae(cfg, acts))
    rate = args.training_tokens / train_seconds
    common.log.info(
        "trained on %d tokens in %.0fs (%.0f tokens/s)", args.training_tokens, train_seconds, rate
    )
    dtype = save(sae, model, args, hook, context, out)

    heldout = json.loads((args.corpus / "heldout.json").read_text())
    shipped = spread(own_conversations(model, heldout, args.tiny), SHIPPED_SAMPLE)
    (out / "heldout_texts.json").write_text(json.dumps(shipped, indent=1, ensure_ascii=False))
    t0 = time.perf_counter()
    evaluation = evaluate(model, out, hook, args.layer, spread(heldout, args.eval_texts))
    evaluation["shipped_sample"] = evaluate(model, out, hook, args.layer, shipped)
    evaluation["seconds"] = round(time.perf_counter() - t0, 1)
    epochs = args.training_tokens / cache["tokens"] if cache else None
    provenance = {
        "command": shlex.join(args.command),
        "rebuild": "python benchmarks/rebuild_saes.py --caa-dir ../shared/caa",
        "model": model.cfg.model_name,
        "hook_name": hook,
        "layer": args.layer,
        "seqpos_slice": list(SEQPOS),
        "seqpos_note": SINK_NOTE,
        "corpus": {
            "path": os.path.relpath(args.corpus.resolve(), ROOT),
            "manifest_sha256": hashlib.sha256(manifest_path.read_bytes()).hexdigest(),
            "rows_sha256": manifest["rows_sha256"],
            "rows": manifest["rows"],
            "row_tokens": manifest["row_tokens"],
        },
        "activation_cache": cache,
        "training": {
            "runner": "sae_lens.LanguageModelSAETrainingRunner",
            "architecture": "topk",
            "d_in": model.cfg.d_model,
            "d_sae": args.width,
            "k": args.k,
            "training_tokens": args.training_tokens,
            "epochs_over_cache": round(epochs, 2) if epochs else None,
            "batch_size_tokens": args.batch_size,
            "lr": args.lr,
            "lr_warm_up_steps": cfg.lr_warm_up_steps,
            "lr_decay_steps": cfg.lr_decay_steps,
            "dead_feature_window": cfg.dead_feature_window,
            "n_batches_for_norm_estimate": cfg.n_batches_for_norm_estimate,
            "b_dec_init": "mean of the sampled training activations",
            "sample_tokens": int(acts.shape[0]),
            "sample_max_norm_ratio": round(outlier_ratio, 1),
            "normalize_activations": "expected_average_only_in (folded into the weights)",
            "num_dead_features": sae.cfg.metadata.num_dead_features,
            "seconds": round(train_seconds, 1),
            "tokens_per_s": round(args.training_tokens / train_seconds, 1),
            "seed": args.seed,
        },
        "saved_dtype": dtype,
        "evaluation": evaluation,
        "versions": versions(),
        "wall_seconds": round(time.perf_counter() - wall, 1),
    }
    path = out / "provenance.json"
    path.write_text(json.dumps(provenance, indent=1))
    common.log.info("%s", json.dumps(evaluation, indent=1))
    common.log.info("saved %s (%s); wall time %.0fs", out, dtype, provenance["wall_seconds"])
    return path


def main(argv: list[str] | None = None) -> Path:
    p = parser()
    p.set_defaults(
        command=["python", *sys.argv] if argv is None else ["python", "benchmarks/train_sae.py", *argv]
    )
    return common.run(body, p, argv, TINY, grad=True, default_out=WEIGHTS)


if __name__ == "__main__":
    main()
