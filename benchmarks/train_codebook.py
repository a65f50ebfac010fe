"""Train a codebook for the embedded model at one residual hook, on the SAEs' cached activations.

The model stays frozen and the codebook sits at ``blocks.L.hook_resid_post`` (the paper puts one
after every attention head and MLP block and fine-tunes the whole network with them; here the
model's weights are what the study is about). The library does the work
(:mod:`tlsteer.codebook.training`):

1. the activations the shipped SAEs were trained on (``benchmarks/build/sae_activations/layer_L``,
   made by ``cache_activations`` from the corpus of ``benchmarks/sae_corpus.py``, positions 0
   and 1 of each row left out; made here if missing) are read into memory and shuffled;
2. ``kmeans`` of ``--kmeans-tokens`` of them initialises the codes;
3. ``train_codebook`` trains them on the reconstruction error for ``--epochs`` epochs of
   ``--batch-tokens``, replacing codes left unchosen for ``--replace-every`` steps;
4. with ``--next-token-steps N``: N steps of the paper's other objective, the next-token loss of the
   frozen model with the codebook spliced in (plus the reconstruction error), on corpus rows
   (``next_token_step``), from the reconstruction-trained codes; its throughput, losses and the
   quality it reaches are recorded (the shipped codebook is the reconstruction-trained one);
5. the codebook is saved to ``tlsteer/codebook/weights/layer_L/codebook.safetensors`` with
   ``provenance.json`` (settings, the paper's own settings beside them, timings, versions, and
   quality on held-out conversations with ``sae_quality``'s definitions, the shipped SAE's beside it).

Settings: ``--codes 4608`` (the shipped SAEs' width, so both dictionaries have as many entries) and
``--k 8`` (the paper library's default ``k_codebook``; its default ``num_codes`` is 10,000 per
head or block), inner-product similarity.

    python benchmarks/train_codebook.py --layer 6 && python benchmarks/train_codebook.py --layer 12
    python benchmarks/train_codebook.py --tiny   # seconds: a tiny corpus and model
    python benchmarks/train_codebook.py --layer 6 --from-shipped --next-token-steps 300 \
        --next-token-lr 1e-3 --next-token-reconstruction-weight 0   # the next-token objective alone
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import _common as common
import torch
import train_sae  # sibling benchmark: its tiny corpus

from tlsteer.codebook import Codebook, kmeans, next_token_step, train_codebook
from tlsteer.sae import sae_quality
from tlsteer.sae.activation_cache import cache_activations, iter_activations
from tlsteer.sae.corpus import load_corpus, spread
from tlsteer.sae.training import EVAL_SKIP_FIRST, TRAINING_SEQPOS, training_versions

ROOT = common.ROOT
BUILD = common.BUILD
WEIGHTS = ROOT / "tlsteer" / "codebook" / "weights"
PAPER = {
    "source": "codebook-features 0.1.2, codebook_features/config/main.yaml",
    "num_codes": 10000,
    "k_codebook": 8,
    "codebook_at": "attn_preproj (every attention head's output, every layer)",
    "loss": "aeloss (reconstruction) with the language-model loss, the whole network fine-tuned",
    "learning_rate": 5e-4,
    "kmeans_init": False,
}
TINY = {
    "layer": 1,
    "codes": 32,
    "k": 2,
    "epochs": 2,
    "batch_tokens": 256,
    "kmeans_tokens": 512,
    "next_token_steps": 2,
    "next_token_rows": 2,
    "eval_texts": 3,
    "corpus": None,
}


def parser():
    p = common.parser(
        __doc__, out_help="the folder the codebook is saved in (default: tlsteer/codebook/weights)"
    )
    p.add_argument("--layer", type=int, default=None, help="train at blocks.L.hook_resid_post (required)")
    p.add_argument(
        "--codes", type=int, default=None, help="codebook size (default 8x d_model, the SAEs' width)"
    )
    p.add_argument("--k", type=int, default=8, help="codes per token (the paper library's default)")
    p.add_argument("--similarity", choices=("inner_product", "euclidean"), default="inner_product")
    p.add_argument("--epochs", type=float, default=4.0, help="passes over the cached activations")
    p.add_argument("--batch-tokens", type=int, default=4096)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--kmeans-tokens", type=int, default=65536)
    p.add_argument("--kmeans-iters", type=int, default=10)
    p.add_argument("--replace-every", type=int, default=50, help="steps between dead-code replacements")
    p.add_argument("--next-token-steps", type=int, default=0, help="steps of the next-token objective")
    p.add_argument("--next-token-rows", type=int, default=4, help="corpus rows per next-token step")
    p.add_argument("--next-token-lr", type=float, default=1e-4)
    p.add_argument(
        "--next-token-reconstruction-weight",
        type=float,
        default=1.0,
        help="weight of the reconstruction error beside the next-token loss (1: the paper's aeloss)",
    )
    p.add_argument(
        "--from-shipped",
        action="store_true",
        help="only the next-token objective, from the shipped codebook at --layer; writes "
        "next_token_layer_L.json (default folder: benchmarks/results/codebook_next_token), never the weights",
    )
    p.add_argument("--eval-texts", type=int, default=200, help="held-out conversations to evaluate on")
    p.add_argument("--corpus", type=Path, default=BUILD / "sae_corpus")
    p.add_argument("--cache-dir", type=Path, default=None, help="default: build/sae_activations/layer_L")
    p.add_argument(
        "--cache-dtype",
        choices=("float32", "float16"),
        default="float16",
        help="on disk, as train_sae.py's (gemma-3-270m's layer 7 passes float16's range: float32)",
    )
    return p


def body(args) -> Path:
    if args.layer is None:
        raise SystemExit("--layer is required: train at blocks.L.hook_resid_post")
    if args.corpus is None:
        args.corpus = train_sae.tiny_corpus(args)
    elif args.corpus == BUILD / "sae_corpus" and common.model_tag(args):  # the second model's corpus
        args.corpus = BUILD / f"sae_corpus{common.model_tag(args)}"
    if not (args.corpus / "manifest.json").exists():
        raise SystemExit(
            f"no corpus in {args.corpus}; build it with: "
            "python benchmarks/sae_corpus.py --caa-dir ../shared/caa"
        )
    wall = time.perf_counter()
    corpus = load_corpus(args.corpus)
    model = common.load_model(args)
    tag = common.model_tag(args)
    if args.codes is None:
        args.codes = 8 * model.cfg.d_model
    if args.from_shipped:
        return next_token_from_shipped(args, model, corpus, wall)
    hook = f"blocks.{args.layer}.hook_resid_post"
    # the second model's codebooks live in weights/<model>/ (load_embedded_codebook(L, model=...))
    out = (WEIGHTS / args.model if tag and args.out == WEIGHTS else args.out) / f"layer_{args.layer}"
    folder = (
        args.cache_dir
        or ((args.out / "activations") if args.tiny else BUILD / f"sae_activations{tag}")
        / f"layer_{args.layer}"
    )
    t0 = time.perf_counter()
    cache = cache_activations(
        model,
        corpus.dataset,
        hook_name=hook,
        folder=folder,
        rows_sha256=corpus.rows_sha256,
        seqpos_slice=TRAINING_SEQPOS,
        dtype=getattr(torch, args.cache_dtype),
        model_batch=8 if args.tiny else 16,
        max_shard_gb=0.01 if args.tiny else 0.5,
        seed=args.seed,
    )
    acts = torch.cat([b.acts.reshape(-1, model.cfg.d_model) for b in iter_activations(cache, batch_rows=256)])
    gen = torch.Generator().manual_seed(args.seed)
    acts = acts[torch.randperm(acts.shape[0], generator=gen)]
    load_seconds = time.perf_counter() - t0
    common.log.info("%d cached activations at %s read in %.0fs", acts.shape[0], hook, load_seconds)

    t0 = time.perf_counter()
    centres = kmeans(acts[: args.kmeans_tokens], args.codes, iters=args.kmeans_iters, seed=args.seed)
    kmeans_seconds = time.perf_counter() - t0
    start = Codebook(
        centres, k=args.k, hook_name=hook, similarity=args.similarity, model_name=model.cfg.model_name
    )
    common.log.info(
        "k-means of %d activations into %d codes: %.0fs", args.kmeans_tokens, args.codes, kmeans_seconds
    )
    steps = max(1, int(args.epochs * acts.shape[0] / args.batch_tokens))
    batches = [
        acts[i : i + args.batch_tokens]
        for i in range(0, acts.shape[0] - args.batch_tokens + 1, args.batch_tokens)
    ]
    with torch.enable_grad():
        trained, record = train_codebook(
            start,
            batches,
            steps=steps,
            lr=args.lr,
            replace_every=args.replace_every,
            seed=args.seed,
            log=common.log.info,
            log_every=max(1, steps // 10),
        )
    next_token = None
    texts = spread(list(corpus.heldout), args.eval_texts)
    if args.next_token_steps:  # measured and reported; the shipped codebook is the reconstruction-trained one
        next_token = next_token_training(args, model, trained, corpus)
        tuned = next_token.pop("codebook")
        next_token["quality"] = sae_quality(model, tuned, texts, skip_first=EVAL_SKIP_FIRST).to_dict()
    t0 = time.perf_counter()
    quality: dict[str, Any] = {
        "codebook": sae_quality(model, trained, texts, skip_first=EVAL_SKIP_FIRST).to_dict()
    }
    sae = common.load_sae(args, model, args.layer)
    quality["sae"] = sae_quality(model, sae, texts, skip_first=EVAL_SKIP_FIRST).to_dict()
    quality["texts"] = len(texts)
    quality["seconds"] = round(time.perf_counter() - t0, 1)
    trained.info.update({"layer": args.layer, "trained_by": "benchmarks/train_codebook.py"})
    trained.save(out / "codebook.safetensors")
    provenance = {
        "command": shlex.join(args.command),
        "model": model.cfg.model_name,
        "hook_name": hook,
        "layer": args.layer,
        "seqpos_slice": list(TRAINING_SEQPOS),
        "corpus": {
            "path": common.repo_relative(args.corpus),
            "rows_sha256": corpus.rows_sha256,
            "manifest_sha256": corpus.manifest_sha256,
        },
        "activation_cache": dict(cache.info),
        "settings": {
            "codes": args.codes,
            "k": args.k,
            "similarity": args.similarity,
            "epochs": args.epochs,
            "batch_tokens": args.batch_tokens,
            "lr": args.lr,
            "kmeans_tokens": args.kmeans_tokens,
            "kmeans_iters": args.kmeans_iters,
            "replace_every": args.replace_every,
            "next_token_steps": args.next_token_steps,
            "seed": args.seed,
        },
        "paper_settings": PAPER,
        "frozen_model_note": (
            "the model is frozen and the codebook sits at one residual hook; the paper fine-tunes the whole "
            "network with a codebook after every attention head and MLP block"
        ),
        "seconds": {"activations": round(load_seconds, 1), "kmeans": round(kmeans_seconds, 1)},
        "reconstruction_training": record.to_dict() | {"losses": record.losses[:: max(1, steps // 50)]},
        "next_token_training": next_token,
        "quality": quality,
        "quality_note": (
            f"sae_quality on {len(texts)} held-out conversations, position 0 left out; explained "
            "variance is the pooled 1 - sum||h - h_hat||^2 / sum||h - mean h||^2 "
            "(explained_variance_per_token is sae-lens's legacy per-token mean); the CE loss score "
            "splices the reconstruction in without its error term"
        ),
        "versions": training_versions(),
        "wall_seconds": round(time.perf_counter() - wall, 1),
    }
    path = out / "provenance.json"
    path.write_text(json.dumps(provenance, indent=1))
    common.log.info("%s", json.dumps(quality, indent=1))
    common.log.info("saved %s; wall time %.0fs", out, provenance["wall_seconds"])
    return path


def next_token_training(args, model, book: Codebook, corpus) -> dict:
    """``--next-token-steps`` Adam steps on the next-token loss through the frozen model."""
    rows = corpus.dataset.with_format("torch")["input_ids"]
    vectors = book.vectors.clone().requires_grad_(True)
    opt = torch.optim.Adam([vectors], lr=args.next_token_lr)
    for p in model.parameters():
        p.requires_grad_(False)
    log, t0, tokens = [], time.perf_counter(), 0
    try:
        with torch.enable_grad():
            for step in range(args.next_token_steps):
                first = (step * args.next_token_rows) % (len(rows) - args.next_token_rows)
                batch = rows[first : first + args.next_token_rows].long()
                loss, parts = next_token_step(
                    model,
                    book,
                    vectors,
                    batch,
                    skip_first=int(TRAINING_SEQPOS[0] or 0),
                    reconstruction_weight=args.next_token_reconstruction_weight,
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                tokens += batch.numel()
                log.append(parts)
                common.log.info("next-token step %d: %s", step + 1, parts)
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
    seconds = time.perf_counter() - t0
    trained = dataclasses.replace(book, vectors=vectors.detach().clone(), info=dict(book.info))
    return {
        "codebook": trained,
        "steps": args.next_token_steps,
        "rows_per_step": args.next_token_rows,
        "lr": args.next_token_lr,
        "reconstruction_weight": args.next_token_reconstruction_weight,
        "tokens": tokens,
        "seconds": round(seconds, 1),
        "tokens_per_s": round(tokens / seconds, 1),
        "losses": log,
    }


def next_token_from_shipped(args, model, corpus, wall: float) -> Path:
    """``--from-shipped``: the next-token objective alone, from the shipped codebook; the quality of
    the codebook before and after on the held-out conversations, in one JSON."""
    if args.next_token_steps < 1:
        raise SystemExit(f"--from-shipped needs --next-token-steps >= 1, got {args.next_token_steps}")
    out = args.out
    if out == WEIGHTS:  # never beside the shipped weights
        out = common.RESULTS / "codebook_next_token"
    shipped = common.load_codebook(args, model, args.layer)
    run = next_token_training(args, model, shipped, corpus)
    tuned = run.pop("codebook")
    texts = spread(list(corpus.heldout), args.eval_texts)
    quality = {
        name: sae_quality(model, book, texts, skip_first=EVAL_SKIP_FIRST).to_dict()
        for name, book in (("shipped", shipped), ("after_next_token", tuned))
    }
    moved = float((tuned.vectors - shipped.vectors).norm() / shipped.vectors.norm())
    result = {
        "command": shlex.join(args.command),
        "hook_name": shipped.hook_name,
        "next_token_training": run,
        "relative_change_of_the_codes": moved,
        "quality": quality,
        "texts": len(texts),
        "wall_seconds": round(time.perf_counter() - wall, 1),
    }
    common.log.info("%s", json.dumps(quality, indent=1))
    return common.write_json(out / f"next_token_layer_{args.layer}.json", result)


def main(argv: list[str] | None = None) -> Path:
    p = parser()
    p.set_defaults(
        command=["python", *sys.argv] if argv is None else ["python", "benchmarks/train_codebook.py", *argv]
    )
    return common.run(body, p, argv, TINY, default_out=WEIGHTS)


if __name__ == "__main__":
    main()
