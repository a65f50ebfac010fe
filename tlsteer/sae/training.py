"""Train a TopK SAE with sae-lens from cached activations, fold it, save it, check it.

This is the training API (import it as ``tlsteer.sae.training``; it is not re-exported by
``tlsteer.sae``). A run, as ``benchmarks/train_sae.py`` does it for the shipped SAEs:

1. a corpus of token rows (:mod:`tlsteer.sae.corpus`);
2. the hook's activations over it cached once (:func:`tlsteer.sae.activation_cache.cache_activations`);
3. :func:`train_topk_sae`: sae-lens's ``LanguageModelSAETrainingRunner`` with
   ``use_cached_activations=True`` trains for ``training_tokens`` tokens, several epochs over the
   cache, without running the model again (wandb off, nothing written by the runner);
4. :func:`fold_sae` (decoder rows to unit norm; sae-lens has folded the activation-norm scaling at
   the end of training) and :func:`save_sae` (the inference SAE, with its metadata set to how the
   activations were taken);
5. :func:`reconstruction_check` on held-out conversations.

Why the settings (:class:`TopKTrainingConfig`) are what they are:

- **Attention sinks.** Positions 0 and 1 of every training row are left out
  (:data:`TRAINING_SEQPOS`, ``seqpos_slice=(2, None)``). The first position of a sequence is an
  attention sink: on SmolLM2-135M its residual norm is ~170x the median at layer 12 (~8x at layer
  6). Corpus rows are packed, so most begin mid-text, and then position 1 is a second sink in ~2%
  of rows at layer 12 (measured on 1,500 random row starts: after ``?`` or a newline, say; never at
  positions 2+). One such token weighs as much as ~29,000 ordinary ones in the squared error, so
  together they would outweigh all the rest. In real use a conversation begins
  ``<|im_start|>system``, where only position 0 is a sink: evaluation leaves out position 0 only
  (:data:`EVAL_SKIP_FIRST`). The largest norm ratio among the training tokens kept is measured on
  a sample and recorded (a warning above :data:`OUTLIER_WARNING`). sae-lens's ``run_evals``
  ignores ``seqpos_slice``; it is not used (it only runs with wandb logging).
- **Short runs.** ``n_batches_for_norm_estimate``: sae-lens's default of 1000 batches is more than
  a whole run. ``dead_feature_window``: the default 1000 steps never flags a feature in a run of a
  few hundred, so the TopK auxiliary loss never acts; it is set in tokens instead. The mixing
  buffer is at least one training batch large. The learning rate (1e-3) is above sae-lens's 3e-4.
- **b_dec at the mean.** The residual stream has a large mean (norm ~0.7 of the typical activation
  norm); from ``b_dec = 0`` Adam needs thousands of steps to reach it, more than a short run has,
  and the features spend their capacity on it meanwhile.

Example:
    >>> corpus = load_corpus("build/sae_corpus")  # doctest: +SKIP
    >>> cache = cache_activations(model, corpus.dataset, hook_name="blocks.6.hook_resid_post",
    ...     folder="build/acts/layer_6", rows_sha256=corpus.rows_sha256)  # doctest: +SKIP
    >>> trained = train_topk_sae(model, corpus.dataset, hook_name="blocks.6.hook_resid_post",
    ...     config=TopKTrainingConfig(training_tokens=1_500_000), cache=cache)  # doctest: +SKIP
    >>> fold_sae(trained.sae)  # doctest: +SKIP
    >>> save_sae(trained.sae, "saes/layer_6", model=model, hook_name=..., context_size=128)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import math
import platform
import re
import shutil
import subprocess
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from tlsteer._types import is_int
from tlsteer._version import __version__
from tlsteer.sae._lens import sae_lens
from tlsteer.sae.activation_cache import ActivationCache, iter_activations, sliced_positions
from tlsteer.sae.adapter import check_sae
from tlsteer.tokens import tokenize

__all__ = [
    "EVAL_SKIP_FIRST",
    "MAX_FP32_MB",
    "OUTLIER_WARNING",
    "SINK_NOTE",
    "TRAINING_SEQPOS",
    "ReconstructionCheck",
    "TopKTrainingConfig",
    "TrainedSAE",
    "activation_sample",
    "fold_sae",
    "reconstruction_check",
    "save_sae",
    "train_topk_sae",
    "training_versions",
]

LOG = logging.getLogger(__name__)

TRAINING_SEQPOS: tuple[int | None, ...] = (2, None)
"""Training rows: positions 0 and 1 left out (sinks at the start of packed rows)."""
EVAL_SKIP_FIRST = 1
"""Conversations (real use, held-out evaluation): only position 0 is a sink."""
OUTLIER_WARNING = 50.0
"""A training token with more than this many times the median norm is warned about."""
MAX_FP32_MB = 25.0
""":func:`save_sae` with ``dtype=None`` saves float16 above this size in float32."""
SINK_NOTE = (
    "position 0 of a sequence is an attention sink (evaluation.sink_norm_ratio: its norm over the "
    "median); in packed rows that begin mid-text position 1 is one too in ~2% of rows at layer 12, "
    "so training leaves out positions 0 and 1; conversations (evaluation, real use) begin "
    "'<|im_start|>system' and leave out position 0 only"
)
"""Why ``seqpos_slice`` is what it is, in words (recorded in a shipped SAE's provenance)."""


@dataclass(frozen=True)
class TopKTrainingConfig:
    """How :func:`train_topk_sae` trains (defaults: the shipped SAEs of the embedded model).

    Attributes:
        width: ``d_sae`` (8x ``d_model`` of SmolLM2-135M by default).
        k: Active features per token.
        training_tokens: Tokens trained on (epochs over the cache when it has fewer).
        batch_size: Training batch, in tokens.
        lr: Adam's learning rate (short runs need more than sae-lens's 3e-4).
        warmup_fraction: Linear warm-up over this share of the steps.
        decay_fraction: Linear decay to 0 over this last share of the steps.
        dead_window_tokens: A feature that has not fired for this many tokens is dead (it feeds
            TopK's auxiliary loss); sae-lens counts it in steps, 1000 by default.
        norm_estimate_batches: Batches that estimate the activation norm (sae-lens: 1000).
        mixing_buffer_tokens: Tokens mixed before batches are drawn (at least one batch).
        model_batch: Rows per model forward (without a cache) and per cache read.
        seed: The seed of sae-lens's config and, with ``reseed``, of torch's global generator.
        seqpos_slice: Positions of each row trained on, without a cache (a cache is sliced already).
        device: Where the SAE trains.
    """

    width: int = 4608
    k: int = 64
    training_tokens: int = 1_500_000
    batch_size: int = 4096
    lr: float = 1e-3
    warmup_fraction: float = 0.05
    decay_fraction: float = 0.2
    dead_window_tokens: int = 200_000
    norm_estimate_batches: int = 10
    mixing_buffer_tokens: int = 65_536
    model_batch: int = 16
    seed: int = 0
    seqpos_slice: tuple[int | None, ...] = TRAINING_SEQPOS
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        for name in (
            "width",
            "k",
            "training_tokens",
            "batch_size",
            "dead_window_tokens",
            "norm_estimate_batches",
            "mixing_buffer_tokens",
            "model_batch",
        ):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.k > self.width:
            raise ValueError(f"k={self.k} is more than the width {self.width}")
        if self.training_tokens < self.batch_size:
            raise ValueError(
                f"training_tokens={self.training_tokens} is less than one batch ({self.batch_size})"
            )
        for name in ("warmup_fraction", "decay_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not isinstance(self.device, torch.device):
            raise TypeError(f"device must be a torch.device, got {self.device!r}")

    @property
    def steps(self) -> int:
        return self.training_tokens // self.batch_size


def _runner_config(
    model: HookedTransformer,
    hook_name: str,
    config: TopKTrainingConfig,
    context: int,
    cache: ActivationCache | None,
    dataset_path: str,
) -> Any:
    """sae-lens's runner config: a TopK SAE, wandb off, nothing written by the runner itself."""
    steps = config.steps
    cached = cache is not None
    seqpos = cache.seqpos_slice if cache is not None else config.seqpos_slice
    sliced = sliced_positions(context, seqpos)
    device = str(config.device)
    return sae_lens.LanguageModelSAERunnerConfig(
        sae=sae_lens.TopKTrainingSAEConfig(
            d_in=model.cfg.d_model,
            d_sae=config.width,
            k=config.k,
            normalize_activations="expected_average_only_in",
            dtype="float32",
            device=device,
        ),
        model_name=model.cfg.model_name,
        hook_name=hook_name,
        dataset_path=dataset_path,
        is_dataset_tokenized=True,
        streaming=False,
        context_size=sliced if cached else context,  # cached rows are already sliced
        seqpos_slice=(None,) if cached else tuple(seqpos),
        use_cached_activations=cached,
        cached_activations_path=str(cache.folder) if cache is not None else None,
        prepend_bos=False,
        training_tokens=config.training_tokens,
        train_batch_size_tokens=config.batch_size,
        store_batch_size_prompts=config.model_batch,
        n_batches_in_buffer=max(2, math.ceil(max(config.mixing_buffer_tokens, config.batch_size) / sliced)),
        lr=config.lr,
        lr_warm_up_steps=int(steps * config.warmup_fraction),
        lr_decay_steps=int(steps * config.decay_fraction),
        dead_feature_window=max(1, config.dead_window_tokens // config.batch_size),
        feature_sampling_window=max(1, steps),
        n_batches_for_norm_estimate=max(1, min(config.norm_estimate_batches, steps)),
        logger=sae_lens.LoggingConfig(log_to_wandb=False),
        n_checkpoints=0,
        checkpoint_path=None,
        output_path=None,
        device=device,
        act_store_device="cpu",
        dtype="float32",
        seed=config.seed,
        exclude_special_tokens=False,
    )


def _stop_layer(hook_name: str) -> int | None:
    """The block after the hook's (``stop_at_layer``), or ``None`` for a hook outside the blocks."""
    match = re.match(r"^blocks\.(\d+)\.", hook_name)
    return int(match.group(1)) + 1 if match else None


@torch.no_grad()
def activation_sample(
    model: HookedTransformer,
    dataset: Any,
    hook_name: str,
    *,
    cache: ActivationCache | None = None,
    rows: int = 256,
    seqpos_slice: tuple[int | None, ...] = TRAINING_SEQPOS,
) -> Float[Tensor, "token d_model"]:
    """Activations at the training positions: the first ``rows`` cached rows, or without a cache
    a forward over the first ``rows // 8`` corpus rows (sliced by ``seqpos_slice``)."""
    if cache is not None:
        return next(iter_activations(cache, batch_rows=rows)).acts.reshape(-1, model.cfg.d_model)
    tokens = torch.tensor(dataset[: min(rows // 8, len(dataset))]["input_ids"])
    _, act_cache = model.run_with_cache(
        tokens, names_filter=[hook_name], stop_at_layer=_stop_layer(hook_name)
    )
    return act_cache[hook_name][:, slice(*seqpos_slice)].reshape(-1, model.cfg.d_model)


def _initial_sae(cfg: Any, sample: Tensor) -> Any:
    """sae-lens's own initial SAE, with ``b_dec`` at the mean activation (in the normalised units).

    ``expected_average_only_in`` scales inputs by ``sqrt(d_in) / mean norm`` (sae-lens estimates
    it again at the start of training).
    """
    training_cfg = sae_lens.TrainingSAEConfig.from_dict(cfg.get_training_sae_cfg_dict())
    sae = sae_lens.TrainingSAE.from_dict(training_cfg.to_dict())
    scale = sample.shape[-1] ** 0.5 / sample.norm(dim=-1).mean()
    with torch.no_grad():
        sae.b_dec.copy_(scale * sample.mean(0))
    return sae


@dataclass(frozen=True, eq=False)
class TrainedSAE:
    """What :func:`train_topk_sae` returns.

    Attributes:
        sae: The trained sae-lens ``TrainingSAE`` (activation-norm scaling folded in by sae-lens;
            decoder norms not yet folded: :func:`fold_sae`).
        config: The settings.
        runner_config: sae-lens's ``LanguageModelSAERunnerConfig`` as run.
        cache: The activation cache trained from (``None``: the model ran during training).
        seconds: Training wall time.
        sample_tokens: Tokens in the sample that set ``b_dec`` and measured the outliers.
        sample_max_norm_ratio: The largest activation norm in the sample over the median.
    """

    sae: Any
    config: TopKTrainingConfig
    runner_config: Any
    cache: ActivationCache | None
    seconds: float
    sample_tokens: int
    sample_max_norm_ratio: float

    def summary(self) -> dict[str, Any]:
        """The settings and what the run took, as a shipped SAE's ``provenance.json`` records them."""
        c, cfg = self.config, self.runner_config
        epochs = c.training_tokens / self.cache.tokens if self.cache is not None else None
        return {
            "runner": "sae_lens.LanguageModelSAETrainingRunner",
            "architecture": "topk",
            "d_in": self.sae.cfg.d_in,
            "d_sae": c.width,
            "k": c.k,
            "training_tokens": c.training_tokens,
            "epochs_over_cache": round(epochs, 2) if epochs else None,
            "batch_size_tokens": c.batch_size,
            "lr": c.lr,
            "lr_warm_up_steps": cfg.lr_warm_up_steps,
            "lr_decay_steps": cfg.lr_decay_steps,
            "dead_feature_window": cfg.dead_feature_window,
            "n_batches_for_norm_estimate": cfg.n_batches_for_norm_estimate,
            "b_dec_init": "mean of the sampled training activations",
            "sample_tokens": self.sample_tokens,
            "sample_max_norm_ratio": round(self.sample_max_norm_ratio, 1),
            "normalize_activations": "expected_average_only_in (folded into the weights)",
            "num_dead_features": self.sae.cfg.metadata.num_dead_features,
            "seconds": round(self.seconds, 1),
            "tokens_per_s": round(c.training_tokens / self.seconds, 1),
            "seed": c.seed,
        }


def train_topk_sae(
    model: HookedTransformer,
    dataset: Any,
    *,
    hook_name: str,
    config: TopKTrainingConfig | None = None,
    cache: ActivationCache | None = None,
    reseed: bool = True,
) -> TrainedSAE:
    """Train a TopK SAE on ``hook_name`` with sae-lens, from ``cache`` if given.

    The initial SAE is sae-lens's own with ``b_dec`` at the mean of a sample of the training
    activations (:func:`activation_sample`). Training runs ``LanguageModelSAETrainingRunner``
    with the settings of :class:`TopKTrainingConfig` (this module's docstring says why).

    Args:
        model: The model (sae-lens reads its config; with a cache it is never run).
        dataset: The corpus rows: a ``datasets.Dataset`` with an ``input_ids`` column.
        hook_name: The hook, e.g. ``"blocks.6.hook_resid_post"``; a cache must be of it.
        config: The settings (default :class:`TopKTrainingConfig`).
        cache: Cached activations (:func:`~tlsteer.sae.activation_cache.cache_activations`);
            ``None`` runs the model during training.
        reseed: Seed torch's global generator with ``config.seed`` first, so the run depends on
            its arguments only. ``False`` draws from the generator as it is (the weights'
            initialisation and the batch mixing use it).
    """
    config = TopKTrainingConfig() if config is None else config
    if not isinstance(config, TopKTrainingConfig):
        raise TypeError(f"config must be a TopKTrainingConfig, got {type(config).__name__}")
    if hook_name not in model.hook_dict:
        raise KeyError(f"hook {hook_name!r} not in model {model.cfg.model_name!r}")
    if cache is not None and cache.hook_name != hook_name:
        raise ValueError(f"the cache in {str(cache.folder)!r} is of {cache.hook_name!r}, not {hook_name!r}")
    if reseed:
        torch.manual_seed(config.seed)
    context = len(dataset[0]["input_ids"])
    files = getattr(dataset, "cache_files", None) or []
    dataset_path = str(Path(files[0]["filename"]).parent) if files else ""
    cfg = _runner_config(model, hook_name, config, context, cache, dataset_path)
    acts = activation_sample(model, dataset, hook_name, cache=cache, seqpos_slice=config.seqpos_slice)
    norms = acts.norm(dim=-1)
    outlier_ratio = float(norms.max() / norms.median())
    if outlier_ratio > OUTLIER_WARNING:
        LOG.warning("a training token has %.0fx the median norm; an attention sink got in?", outlier_ratio)
    initial = _initial_sae(cfg, acts)
    with warnings.catch_warnings():
        # rows counted against tokens, and 128-token rows against 126-token cached rows: both expected
        warnings.filterwarnings("ignore", message="The training dataset contains fewer samples")
        warnings.filterwarnings("ignore", message="pretokenized dataset has context_size")
        # several epochs over the cache are the plan
        warnings.filterwarnings("ignore", message="All samples in the training dataset have been exhausted")
        # sae-lens's activation store copies a tensor with torch.tensor(...): harmless
        warnings.filterwarnings("ignore", message="To copy construct from a tensor", category=UserWarning)
        runner = sae_lens.LanguageModelSAETrainingRunner(
            cfg, override_model=model, override_dataset=dataset, override_sae=initial
        )
        start = time.perf_counter()
        with torch.enable_grad():
            sae = runner.run()
    seconds = time.perf_counter() - start
    LOG.info(
        "trained on %d tokens in %.0fs (%.0f tokens/s)",
        config.training_tokens,
        seconds,
        config.training_tokens / seconds,
    )
    return TrainedSAE(
        sae=sae,
        config=config,
        runner_config=cfg,
        cache=cache,
        seconds=seconds,
        sample_tokens=int(acts.shape[0]),
        sample_max_norm_ratio=outlier_ratio,
    )


@torch.no_grad()
def fold_sae(sae: Any, *, norm_scaling_factor: float | None = None) -> Any:
    """Fold the activation-norm scaling (if given) and the decoder norms into the weights, in place.

    After it, ``W_dec`` rows have unit norm and the SAE reads raw activations; its reconstruction
    of raw activations is unchanged (a TopK SAE must rescale by decoder norm, as sae-lens's TopK
    SAEs do by default, or its choice of features would change). sae-lens's trainer folds the
    scaling it estimated at the end of training, so an SAE from :func:`train_topk_sae` needs only
    the decoder norms: ``norm_scaling_factor`` is for an SAE trained on activations multiplied by
    that factor elsewhere. Returns ``sae``.
    """
    if norm_scaling_factor is not None:
        if not (isinstance(norm_scaling_factor, (int, float)) and norm_scaling_factor > 0):
            raise ValueError(f"norm_scaling_factor must be a number > 0, got {norm_scaling_factor!r}")
        sae.fold_activation_norm_scaling_factor(float(norm_scaling_factor))
    sae.fold_W_dec_norm()
    return sae


_SAVE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def save_sae(
    sae: Any,
    folder: str | Path,
    *,
    model: HookedTransformer,
    hook_name: str,
    context_size: int,
    seqpos_slice: tuple[int | None, ...] = TRAINING_SEQPOS,
    dataset_path: str = "",
    dtype: torch.dtype | None = None,
) -> torch.dtype:
    """Set the metadata, pick the dtype and write the inference SAE into ``folder`` (replaced).

    The metadata says how the activations were taken (``model_name``, ``hook_name``,
    ``context_size``, ``seqpos_slice``, no BOS prepended, no separator token), so
    ``tlsteer.sae.load_sae(folder)`` gives an SAE that knows where it reads. ``dtype=None`` saves
    float32 unless that would pass :data:`MAX_FP32_MB`, then float16. Files are made readable by
    all (safetensors writes 0600). Returns the dtype saved (the SAE is converted to it).
    """
    if dtype is not None and dtype not in _SAVE_DTYPES:
        raise ValueError(f"dtype must be None or one of {_SAVE_DTYPES}, got {dtype!r}")
    meta = sae.cfg.metadata
    meta.model_name = model.cfg.model_name
    meta.hook_name = hook_name
    meta.context_size = context_size
    meta.seqpos_slice = tuple(seqpos_slice)
    meta.prepend_bos = False
    meta.sequence_separator_token = None  # rows are pre-tokenized conversations, nothing inserted
    meta.model_from_pretrained_kwargs = {}  # not loaded by name: sae-lens warns on non-empty kwargs
    meta.dataset_path = dataset_path
    if dtype is None:
        fp32_mb = sum(p.numel() for p in sae.parameters()) * 4 / 2**20
        dtype = torch.float16 if fp32_mb > MAX_FP32_MB else torch.float32
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    weights, cfg_path = sae.to(dtype).save_inference_model(str(folder))
    for path in (weights, cfg_path):
        path.chmod(0o644)  # safetensors writes 0600; shipped package data must be readable by all
    return dtype


@dataclass(frozen=True)
class ReconstructionCheck:
    """How well an SAE reconstructs the hook on some texts (:func:`reconstruction_check`).

    Attributes:
        texts, tokens: Texts and evaluated tokens (positions ``>= skip_first`` of each text).
        explained_variance: ``1 - sum ||x - x_hat||^2 / sum ||x - mean x||^2`` over those tokens.
        mean_l0: Mean active features per token.
        features_fired: Features active on at least one token.
        sink_norm_ratio: The median over texts of position 0's norm over the median norm of the
            rest (how much of a sink position 0 is).
        max_norm_ratio: The largest evaluated token norm over their median.
    """

    texts: int
    tokens: int
    explained_variance: float
    mean_l0: float
    features_fired: int
    sink_norm_ratio: float
    max_norm_ratio: float

    def to_dict(self) -> dict[str, Any]:
        """Rounded, as a shipped SAE's ``provenance.json`` records it (``evaluation``)."""
        return {
            "texts": self.texts,
            "tokens": self.tokens,
            "explained_variance": round(self.explained_variance, 4),
            "mean_l0": round(self.mean_l0, 2),
            "features_fired": self.features_fired,
            "sink_norm_ratio": round(self.sink_norm_ratio, 1),
            "max_norm_ratio_from_position_1": round(self.max_norm_ratio, 1),
        }


@torch.no_grad()
def reconstruction_check(
    model: HookedTransformer,
    sae: Any,
    texts: Sequence[str],
    *,
    hook_name: str | None = None,
    skip_first: int = EVAL_SKIP_FIRST,
) -> ReconstructionCheck:
    """Explained variance, L0 and sink norms of ``sae`` on ``texts``, one text at a time, no padding.

    A quick check after training; :func:`tlsteer.sae.sae_quality` adds the loss with the SAE
    spliced in (and batches).
    """
    hook = check_sae(model, sae, hook_name)
    if not is_int(skip_first) or skip_first < 1:
        raise ValueError(f"skip_first must be an int >= 1, got {skip_first!r}")
    if not texts:
        raise ValueError("texts is empty: nothing to evaluate")
    acts, sink = [], []
    for text in texts:
        tokens = torch.tensor([tokenize(model, text)])
        _, cache = model.run_with_cache(tokens, names_filter=[hook], stop_at_layer=_stop_layer(hook))
        x = cache[hook][0]
        sink.append(float(x[0].norm() / x[1:].norm(dim=-1).median()))
        acts.append(x[skip_first:])
    x = torch.cat(acts)
    norms = x.norm(dim=-1)
    feats = sae.encode(x)
    recon = sae.decode(feats)
    ev = 1 - (x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    return ReconstructionCheck(
        texts=len(texts),
        tokens=int(x.shape[0]),
        explained_variance=float(ev),
        mean_l0=float((feats != 0).float().sum(-1).mean()),
        features_fired=int((feats != 0).any(0).sum()),
        sink_norm_ratio=sorted(sink)[len(sink) // 2],
        max_norm_ratio=float(norms.max() / norms.median()),
    )


def training_versions() -> dict[str, str]:
    """The versions a training run used (and the git commit of a source checkout)."""
    names = ("sae-lens", "transformer-lens", "torch", "datasets", "transformers")
    found = {n: importlib.metadata.version(n) for n in names}
    found["tlsteer"] = __version__
    found["python"] = platform.python_version()
    with contextlib.suppress(Exception):
        found["git_head"] = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parents[2],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    return found
