"""The opening every benchmark shares: its flags, logging, the model, and the ``--tiny`` stand-ins.

Each script builds its parser with :func:`parser`, runs with :func:`run` (flags, seeds, logging
at INFO, no gradients; ``main(argv)`` returns what the script wrote) and takes its model with
:func:`load_model`. The usual flags:

- ``--tiny``: a run of seconds on stand-ins, to show the script still works, never to measure
  anything: a tiny random model (:func:`tlsteer.models.tiny_model`), random SAEs at its layers
  (:func:`tlsteer.sae.random.random_sae`), a hashing stand-in for the judge's sentence embedder
  (:class:`tlsteer.eval.judge.HashingEmbedder`), a CAA-format folder written from tlsteer's
  built-in A/B items when no ``--caa-dir`` is given, and each script's small sizes (its ``tiny``
  defaults; a flag given on the command line still wins). Results go to ``--out`` or a fresh
  temporary folder, never into ``benchmarks/results``. ``tests/test_benchmarks.py`` runs every
  script this way.
- ``--out``: the results folder (default ``benchmarks/results``).
- ``--seed``: seeds Python's, NumPy's and torch's global generators (default 0); scripts that
  draw their own seeded samples start from it.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BUILD = ROOT / "benchmarks" / "build"
TINY_LAYERS = 4
"""Blocks of the ``--tiny`` model."""
TINY_SAE_LAYERS = (1, 2)
"""The layers that have an SAE under ``--tiny`` (the embedded model ships SAEs at 6 and 12)."""
TINY_N_CTX = 2048
"""The tiny model's context: its tokenizer makes one token per character."""
TINY_EXAMPLES = 10
"""Examples per class of a class set under ``--tiny`` (the first ones)."""
TINY_JUDGE_TEXTS = 12
"""Judge texts per class of a class set under ``--tiny`` (the first ones)."""

MODELS = ("smollm2-135m-instruct", "gemma-3-270m")
"""The embedded models a benchmark can run (``--model``); the first is the default."""

log = logging.getLogger("benchmarks")
T = TypeVar("T")


def parser(
    doc: str | None, out_help: str = "results folder (default: benchmarks/results)"
) -> argparse.ArgumentParser:
    """An argument parser with the script's docstring and the usual flags."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--tiny",
        action="store_true",
        help="run in seconds on a tiny random model and stand-ins (checks the script, measures "
        "nothing); results go to --out or a temporary folder, never benchmarks/results",
    )
    p.add_argument("--out", type=Path, default=None, help=out_help)
    p.add_argument("--seed", type=int, default=0, help="seed of the global generators (default 0)")
    p.add_argument(
        "--model",
        choices=MODELS,
        default=MODELS[0],
        help="the embedded model to run (default %(default)s); gemma-3-270m is a base model, run in "
        "tlsteer's plain question/answer format (tlsteer.use_plain_format); with --tiny the tiny "
        "Gemma-3-like model stands in for it",
    )
    return p


def model_tag(args: Any) -> str:
    """``""`` for the default model, else ``"_<model>"``: the suffix of its build folders and results."""
    model = getattr(args, "model", MODELS[0])
    return "" if model == MODELS[0] else f"_{model}"


def parse(
    p: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    tiny: Mapping[str, Any] = (),
    default_out: Path = RESULTS,
) -> Any:
    """Parse ``argv``; with ``--tiny`` the defaults in ``tiny`` replace the script's own first.

    ``--out`` defaults to ``default_out``, with ``--tiny`` to a fresh temporary folder; a ``--tiny``
    run never writes into ``benchmarks/results`` or ``default_out``.
    """
    argv = list(argv) if argv is not None else None
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--tiny", action="store_true")
    known, _ = probe.parse_known_args(argv)
    if known.tiny and tiny:
        p.set_defaults(**dict(tiny))
    args = p.parse_args(argv)
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="tlsteer-tiny-")) if args.tiny else default_out
    elif args.tiny and any(_inside(args.out, kept) for kept in (RESULTS, default_out)):
        p.error(f"--tiny writes stand-in results; --out {str(args.out)!r} would overwrite real ones")
    return args


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def run(
    body: Callable[[Any], T],
    p: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    tiny: Mapping[str, Any] = (),
    grad: bool = False,
    default_out: Path = RESULTS,
) -> T:
    """Parse, seed, log at INFO, and run ``body(args)`` without gradients (unless ``grad``).

    The ``tlsteer`` and ``benchmarks`` loggers are set to INFO (a handler printing bare messages
    is added where the root logger has none); ``--tiny`` runs on one torch thread. Both are put
    back afterwards, as is the gradient mode, so a run in a test leaves the process as it found it.
    """
    args = parse(p, argv, tiny, default_out)
    args.out.mkdir(parents=True, exist_ok=True)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(message)s")
    loggers = [logging.getLogger(name) for name in ("tlsteer", "benchmarks")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.INFO)
    threads = torch.get_num_threads()
    if args.tiny:
        torch.set_num_threads(1)  # tiny tensors gain nothing from threads, and lose to contention
    try:
        if args.tiny:
            log.info("--tiny: a tiny random model and stand-ins, nothing measured; results in %s", args.out)
        with torch.set_grad_enabled(grad):
            return body(args)
    finally:
        torch.set_num_threads(threads)
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def load_model(args: Any, device: str | None = None, tiny_layers: int = TINY_LAYERS) -> Any:
    """The embedded model ``--model``, or with ``--tiny`` a tiny random model of its architecture
    (Llama-style, or Gemma-3-like for gemma-3-270m; seeded by ``--seed``) with ``tiny_layers``
    blocks. A base model (gemma-3-270m) gets the plain question/answer format."""

    return load_named_model(args, getattr(args, "model", MODELS[0]), device, tiny_layers)


def load_named_model(args: Any, name: str, device: str | None = None, tiny_layers: int = TINY_LAYERS) -> Any:
    """:func:`load_model` for the embedded model ``name`` whatever ``--model`` says (a script that
    compares the two models loads both); with ``--tiny`` its tiny stand-in."""
    import tlsteer
    from tlsteer.models import tiny_model

    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; the embedded models: {MODELS}")
    if args.tiny:
        arch = "gemma3" if name == "gemma-3-270m" else "llama"
        model = tiny_model(arch, seed=args.seed, n_layers=tiny_layers, n_ctx=TINY_N_CTX)
    else:
        model = tlsteer.load_model(name, device=device)
    if not model.tokenizer.chat_template:
        tlsteer.use_plain_format(model)
    return model


def sae_layers(args: Any) -> tuple[int, ...]:
    """The layers with an SAE: the shipped ones, or :data:`TINY_SAE_LAYERS` with ``--tiny``."""
    if args.tiny:
        return TINY_SAE_LAYERS
    from tlsteer.sae import embedded_sae_layers

    return tuple(embedded_sae_layers(getattr(args, "model", MODELS[0])))


def load_hf_model(args: Any, model: Any) -> Any:
    """The embedded model in ``transformers``, or with ``--tiny`` a ``LlamaForCausalLM`` holding the
    tiny model's weights (so both libraries read the same activations)."""
    import tlsteer

    if args.tiny:
        return hf_twin(model)
    hf_model, _ = tlsteer.models.load_hf_model()
    return hf_model


def hf_twin(model: Any) -> Any:
    """A ``transformers`` ``LlamaForCausalLM`` with a Llama-style ``HookedTransformer``'s weights."""
    import einops
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = model.cfg
    n_kv = cfg.n_key_value_heads or cfg.n_heads
    hf_cfg = LlamaConfig(
        vocab_size=cfg.d_vocab,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=n_kv,
        head_dim=cfg.d_head,
        max_position_embeddings=cfg.n_ctx,
        rms_norm_eps=cfg.eps,
        rope_theta=float(cfg.rotary_base),
        tie_word_embeddings=False,
        hidden_act="silu",
    )
    hf_model = LlamaForCausalLM(hf_cfg).eval()
    ratio = cfg.n_heads // n_kv  # W_K, W_V repeat each key/value head for its query heads
    state = {"model.embed_tokens.weight": model.W_E, "model.norm.weight": model.ln_final.w}
    state["lm_head.weight"] = model.W_U.T
    for i, block in enumerate(model.blocks):
        attn, pre = block.attn, f"model.layers.{i}."
        state |= {
            pre + "input_layernorm.weight": block.ln1.w,
            pre + "post_attention_layernorm.weight": block.ln2.w,
            pre + "self_attn.q_proj.weight": einops.rearrange(attn.W_Q, "n m h -> (n h) m"),
            pre + "self_attn.k_proj.weight": einops.rearrange(attn.W_K[::ratio], "n m h -> (n h) m"),
            pre + "self_attn.v_proj.weight": einops.rearrange(attn.W_V[::ratio], "n m h -> (n h) m"),
            pre + "self_attn.o_proj.weight": einops.rearrange(attn.W_O, "n h m -> m (n h)"),
            pre + "mlp.gate_proj.weight": block.mlp.W_gate.T,
            pre + "mlp.up_proj.weight": block.mlp.W_in.T,
            pre + "mlp.down_proj.weight": block.mlp.W_out.T,
        }
    hf_model.load_state_dict({k: v.detach().contiguous() for k, v in state.items()}, strict=True)
    return hf_model


def embedded_name(model: Any, what: str) -> str:
    """The embedded model's name (``"gemma-3-270m"``, ...) whose dictionaries fit ``model``."""
    from tlsteer.sae.embedded import SAE_MODELS

    names = [name for name, cfg_name in SAE_MODELS.items() if cfg_name == model.cfg.model_name]
    if not names:
        raise ValueError(f"no {what} are shipped for {model.cfg.model_name!r}")
    return names[0]


def load_sae(args: Any, model: Any, layer: int | None = None) -> Any:
    """The shipped SAE at ``layer`` (default: the lowest) of ``model`` (an embedded model: the SAEs
    shipped for it), or with ``--tiny`` a random TopK SAE there."""
    if not args.tiny:
        from tlsteer.sae.embedded import load_embedded_sae

        return load_embedded_sae(layer, model=embedded_name(model, "SAEs"))
    from tlsteer.sae.random import random_sae

    layer = TINY_SAE_LAYERS[0] if layer is None else layer
    return random_sae(model.cfg.d_model, f"blocks.{layer}.hook_resid_post", d_sae=64, k=8, seed=layer)


def load_codebook(args: Any, model: Any, layer: int | None = None) -> Any:
    """The shipped codebook at ``layer`` (default: the lowest) of ``model`` (an embedded model: the
    codebooks shipped for it), or with ``--tiny`` a random one at the tiny SAE's hook (32 codes, k 4)."""
    if not args.tiny:
        from tlsteer.codebook import load_embedded_codebook

        return load_embedded_codebook(layer, model=embedded_name(model, "codebooks"))
    import torch

    from tlsteer.codebook import Codebook

    layer = TINY_SAE_LAYERS[0] if layer is None else layer
    gen = torch.Generator().manual_seed(layer)
    return Codebook(
        torch.randn(32, model.cfg.d_model, generator=gen), k=4, hook_name=f"blocks.{layer}.hook_resid_post"
    )


def load_embedder(args: Any) -> Any:
    """The judge's sentence embedder, or with ``--tiny`` the hashing stand-in (no model to load)."""
    from tlsteer.eval.judge import HashingEmbedder, load_embedder

    return HashingEmbedder() if args.tiny else load_embedder()


def load_class_dataset(args: Any, name: str) -> Any:
    """A built-in class set; with ``--tiny`` only its first examples and judge texts per class."""
    from dataclasses import replace

    import tlsteer

    ds = tlsteer.load_class_dataset(name)
    if not args.tiny:
        return ds
    return replace(
        ds,
        examples={c: ds.examples[c][:TINY_EXAMPLES] for c in ds.classes},
        judge_texts={c: ds.judge_texts[c][:TINY_JUDGE_TEXTS] for c in ds.classes},
    )


def caa_dir(args: Any) -> Path:
    """``--caa-dir``; with ``--tiny`` and none given, a small CAA-format folder (see :func:`tiny_caa_dir`)."""
    if args.caa_dir is not None:
        if not (args.caa_dir / "generate").is_dir():
            raise SystemExit(
                f"--caa-dir {str(args.caa_dir)!r} has no 'generate' folder; expected the CAA datasets"
            )
        return args.caa_dir
    if not args.tiny:
        raise SystemExit("--caa-dir is required: the CAA datasets folder, e.g. --caa-dir ../shared/caa")
    return tiny_caa_dir(args.out / "tiny_caa")


def tiny_caa_dir(folder: Path, generate: int = 24, test: int = 8) -> Path:
    """A folder laid out like the CAA repository's datasets, written from tlsteer's built-in A/B items.

    Every behaviour of :data:`tlsteer.CAA_BEHAVIOURS` gets ``generate`` items in its generate set,
    ``test`` A/B items and a few open-ended questions; MMLU and TruthfulQA get ``test`` items each
    (answer (A) counts as correct). For ``--tiny`` runs only: the contents are not the behaviours'.
    """
    from tlsteer.data import BUILTIN_DATASETS, CAA_BEHAVIOURS, builtin_dataset_path

    pool = [e for name in BUILTIN_DATASETS for e in json.loads(builtin_dataset_path(name).read_text())]
    for i, behaviour in enumerate(CAA_BEHAVIOURS):
        rows = pool[i * 3 :] + pool[: i * 3]  # each behaviour its own order
        _write(folder / "generate" / behaviour / "generate_dataset.json", rows[:generate])
        _write(folder / "test" / behaviour / "test_dataset_ab.json", rows[-test:])
        open_ended = [{"question": r["question"].split("\n")[0]} for r in rows[-3:]]
        _write(folder / "test" / behaviour / "test_dataset_open_ended.json", open_ended)
    for rel, start in (("mmlu/mmlu.json", 0), ("truthfulqa/truthful_qa.json", test)):
        items = [
            {
                "prompt": r["question"],
                "correct": r["answer_matching_behavior"],
                "incorrect": r["answer_not_matching_behavior"],
                "category": f"tiny_{j}",
            }
            for j, r in enumerate(pool[start : start + test])
        ]
        _write(folder / "test" / rel, items)
    return folder


def _write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def repo_relative(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it (no machine paths in results)."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def write_json(path: Path, data: Any, **kwargs: Any) -> Path:
    """Write ``data`` as indented JSON (a trailing newline) and return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, **kwargs) + "\n")
    return path
