"""Train a TopK SAE with sae-lens on the embedded model's residual stream, cache first, then epochs.

Reads the corpus that ``benchmarks/sae_corpus.py`` builds; the library does the work
(:mod:`tlsteer.sae.training`, whose docstring says why each setting is what it is):

1. ``cache_activations`` (:mod:`tlsteer.sae.activation_cache`) runs the model once over the corpus
   (up to block ``L`` only) and writes ``blocks.L.hook_resid_post`` to
   ``benchmarks/build/sae_activations/layer_L`` (reused while the corpus hash, hook and dtype
   match; ``--recache`` forces it), positions 0 and 1 of every row left out (attention sinks);
2. ``train_topk_sae`` trains a TopK SAE for ``--training-tokens`` tokens with sae-lens's
   ``LanguageModelSAETrainingRunner``: several epochs over the cache, without running the model
   again (``--no-cache``: the model runs during training). wandb is off.

After training the decoder norms are folded into the weights (``fold_sae``; sae-lens folds the
activation-norm scaling), and ``save_sae`` writes the inference SAE with its metadata set to how
the activations were taken into ``tlsteer/sae/weights/layer_L/`` (fp16 if fp32 would pass 25 MB),
with ``provenance.json`` and ``heldout_texts.json`` (up to 12 held-out conversations whose user
turn is one of tlsteer's own prompts, never CAA text; the tests check explained variance on them).
The saved SAE is loaded back and checked on held-out text (``reconstruction_check``) before the
wall time is printed.

    python benchmarks/sae_corpus.py --caa-dir ../shared/caa && python benchmarks/train_sae.py --layer 6 \\
        && python benchmarks/train_sae.py --layer 12
    python benchmarks/train_sae.py --layer 6 --training-tokens 200000 --width 256 --k 16 --batch-size 1024 \\
        --corpus benchmarks/build/sae_corpus_smoke --out benchmarks/build/sae_smoke/layer_6   # smoke
    python benchmarks/train_sae.py --tiny   # seconds: a tiny corpus (sae_corpus.py --tiny), a tiny SAE

``--out`` is the folder the SAE is saved in (default ``tlsteer/sae/weights/layer_L``); with ``--tiny``
a temporary folder, which also holds the tiny corpus and the activation cache.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path

import _common as common
import torch

from tlsteer.sae import load_sae
from tlsteer.sae.activation_cache import cache_activations
from tlsteer.sae.corpus import load_corpus, own_prompt_conversations, spread
from tlsteer.sae.training import (
    EVAL_SKIP_FIRST,
    SINK_NOTE,
    TRAINING_SEQPOS,
    TopKTrainingConfig,
    fold_sae,
    reconstruction_check,
    save_sae,
    train_topk_sae,
    training_versions,
)

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
SHIPPED_SAMPLE = 12
"""Held-out conversations shipped beside the SAE."""


def parser():
    p = common.parser(
        __doc__, out_help="the folder the SAE is saved in (default: tlsteer/sae/weights/layer_L)"
    )
    p.add_argument("--layer", type=int, default=None, help="train on blocks.L.hook_resid_post (required)")
    p.add_argument("--width", type=int, default=None, help="d_sae (default 8x d_model: 4608 for SmolLM2)")
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


def shipped_conversations(model, texts: list[str], tiny: bool = False) -> list[str]:
    """The held-out conversations that may ship (tlsteer's own prompts; with ``--tiny``, where the
    held-out split is a handful of stand-ins, any of them if none is tlsteer's own)."""
    own = own_prompt_conversations(model, texts)
    if not own and tiny and texts:
        own = texts
    if not own:
        raise SystemExit("no held-out conversation has one of tlsteer's own prompts as its user turn")
    return spread(own, SHIPPED_SAMPLE)


def tiny_corpus(args) -> Path:
    """A corpus built by ``sae_corpus.py --tiny`` inside ``--out`` (for ``--tiny`` without ``--corpus``)."""
    import sae_corpus  # sibling benchmark

    folder = args.out / "corpus"
    sae_corpus.main(["--tiny", "--out", str(folder), "--seed", str(args.seed), "--heldout-fraction", "0.3"])
    return folder


def body(args) -> Path:
    if args.layer is None:
        raise SystemExit("--layer is required: train on blocks.L.hook_resid_post")
    tag = common.model_tag(args)
    if args.corpus is None:
        args.corpus = tiny_corpus(args)
    elif args.corpus == BUILD / "sae_corpus" and tag:  # the second model's own corpus
        args.corpus = BUILD / f"sae_corpus{tag}"
    if args.training_tokens < args.batch_size:
        raise SystemExit(
            f"--training-tokens {args.training_tokens} is less than one batch ({args.batch_size})"
        )
    wall = time.perf_counter()
    torch.manual_seed(args.seed)
    if not (args.corpus / "manifest.json").exists():
        raise SystemExit(
            f"no corpus in {args.corpus}; build it with: "
            "python benchmarks/sae_corpus.py --caa-dir ../shared/caa"
        )
    corpus = load_corpus(args.corpus)
    model = common.load_model(args)
    if args.width is None:
        args.width = 8 * model.cfg.d_model
    if not 0 <= args.layer < model.cfg.n_layers:
        raise SystemExit(f"--layer {args.layer} is not a layer of the model (0..{model.cfg.n_layers - 1})")
    hook = f"blocks.{args.layer}.hook_resid_post"
    # the SAE's own folder (save_sae replaces it); a --tiny --out also holds the corpus and the cache
    # the second model's SAEs live in weights/<model>/ (tlsteer.sae.load_embedded_sae(L, model=...))
    weights = WEIGHTS / args.model if tag else WEIGHTS
    out = (weights if args.out == WEIGHTS else args.out) / f"layer_{args.layer}"
    out = out if args.out == WEIGHTS or args.tiny else args.out
    default_cache = (
        args.out / "activations" if args.tiny else BUILD / f"sae_activations{tag}"
    ) / f"layer_{args.layer}"
    cache = None
    if not args.no_cache:
        cache = cache_activations(
            model,
            corpus.dataset,
            hook_name=hook,
            folder=args.cache_dir or default_cache,
            rows_sha256=corpus.rows_sha256,
            seqpos_slice=TRAINING_SEQPOS,
            dtype=getattr(torch, args.cache_dtype),
            model_batch=args.model_batch,
            max_shard_gb=args.max_shard_gb,
            seed=args.seed,
            recache=args.recache,
        )
    config = TopKTrainingConfig(
        width=args.width,
        k=args.k,
        training_tokens=args.training_tokens,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_fraction=args.warmup_fraction,
        decay_fraction=args.decay_fraction,
        dead_window_tokens=args.dead_window_tokens,
        norm_estimate_batches=args.norm_estimate_batches,
        mixing_buffer_tokens=args.mixing_buffer_tokens,
        model_batch=args.model_batch,
        seed=args.seed,
        seqpos_slice=TRAINING_SEQPOS,
    )
    # reseed=False: torch's generator as seeded above, so earlier runs' weights reproduce
    trained = train_topk_sae(model, corpus.dataset, hook_name=hook, config=config, cache=cache, reseed=False)
    fold_sae(trained.sae)
    save_dtype = None if args.save_dtype == "auto" else getattr(torch, args.save_dtype)
    corpus_path = os.path.relpath(args.corpus.resolve(), ROOT)
    dtype = save_sae(
        trained.sae,
        out,
        model=model,
        hook_name=hook,
        context_size=corpus.context_size,
        seqpos_slice=TRAINING_SEQPOS,
        dataset_path=corpus_path,
        dtype=save_dtype,
    )

    shipped = shipped_conversations(model, list(corpus.heldout), args.tiny)
    (out / "heldout_texts.json").write_text(json.dumps(shipped, indent=1, ensure_ascii=False))
    t0 = time.perf_counter()
    saved = load_sae(out, dtype=torch.float32)
    evaluation = reconstruction_check(
        model, saved, spread(list(corpus.heldout), args.eval_texts), skip_first=EVAL_SKIP_FIRST
    ).to_dict()
    evaluation["shipped_sample"] = reconstruction_check(
        model, saved, shipped, skip_first=EVAL_SKIP_FIRST
    ).to_dict()
    evaluation["seconds"] = round(time.perf_counter() - t0, 1)
    provenance = {
        "command": shlex.join(args.command),
        "rebuild": "python benchmarks/rebuild_saes.py --caa-dir ../shared/caa",
        "model": model.cfg.model_name,
        "hook_name": hook,
        "layer": args.layer,
        "seqpos_slice": list(TRAINING_SEQPOS),
        "seqpos_note": SINK_NOTE,
        "corpus": {
            "path": corpus_path,
            "manifest_sha256": corpus.manifest_sha256,
            "rows_sha256": corpus.rows_sha256,
            "rows": corpus.manifest["rows"],
            "row_tokens": corpus.manifest["row_tokens"],
        },
        "activation_cache": dict(cache.info) if cache is not None else None,
        "training": trained.summary(),
        "saved_dtype": str(dtype).removeprefix("torch."),
        "evaluation": evaluation,
        "versions": training_versions(),
        "wall_seconds": round(time.perf_counter() - wall, 1),
    }
    path = out / "provenance.json"
    path.write_text(json.dumps(provenance, indent=1))
    common.log.info("%s", json.dumps(evaluation, indent=1))
    common.log.info(
        "saved %s (%s); wall time %.0fs", out, provenance["saved_dtype"], provenance["wall_seconds"]
    )
    return path


def main(argv: list[str] | None = None) -> Path:
    p = parser()
    p.set_defaults(
        command=["python", *sys.argv] if argv is None else ["python", "benchmarks/train_sae.py", *argv]
    )
    return common.run(body, p, argv, TINY, grad=True, default_out=WEIGHTS)


if __name__ == "__main__":
    main()
