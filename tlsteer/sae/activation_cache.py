"""Activations at one hook over a token corpus, cached on disk once and streamed back by any trainer.

:func:`cache_activations` runs the model once over the corpus rows (up to the hook's block only)
with sae-lens's ``CacheActivationsRunner`` and writes the folder that sae-lens's training runner
reads with ``use_cached_activations=True``; :func:`load_activation_cache` opens such a folder and
:func:`iter_activations` streams it in batches of rows, for any trainer (sae-lens or not).

The cache format (a folder):

- ``data-*.arrow``, ``dataset_info.json``, ``state.json``: a ``datasets.Dataset``
  (``datasets.load_from_disk(folder)``) with one row per corpus row, in corpus order, and two
  columns: the hook name (e.g. ``"blocks.6.hook_resid_post"``), an ``Array2D`` of shape
  ``[positions, d_model]`` in the cache dtype, and ``"token_ids"``, ``[positions]`` int32 (the
  token at each cached position). ``positions`` is the corpus context size with the
  ``seqpos_slice`` positions kept: ``len(range(context_size)[slice(*seqpos_slice)])``.
- ``tlsteer_cache.json``: ``{"key": {...}, "tokens", "rows_dropped", "shards", "seconds",
  "tokens_per_s"}``. The key (``rows_sha256`` of the corpus, ``hook_name``, ``dtype``,
  ``context_size``, ``seqpos_slice``, ``rows``) decides whether a cache can be reused.

Only whole model batches that fill the shards evenly are cached (the runner cycles the data to
fill a shard): the last few rows of the corpus (``rows_dropped``) may be left out.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from unittest import mock

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from tlsteer._types import check_batch_size
from tlsteer.sae._lens import sae_lens

__all__ = [
    "CACHE_INFO_FILE",
    "ActivationBatch",
    "ActivationCache",
    "cache_activations",
    "iter_activations",
    "load_activation_cache",
    "sliced_positions",
]

LOG = logging.getLogger(__name__)

CACHE_INFO_FILE = "tlsteer_cache.json"
"""The file in a cache folder that records what was cached (its key) and what it cost."""

_CACHE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def sliced_positions(context_size: int, seqpos_slice: tuple[int | None, ...]) -> int:
    """How many positions of a row of ``context_size`` tokens ``seqpos_slice`` keeps."""
    return len(range(context_size)[slice(*seqpos_slice)])


@dataclass(frozen=True)
class ActivationCache:
    """A cache folder (:func:`cache_activations`, :func:`load_activation_cache`).

    Attributes:
        folder: The folder (its format: this module's docstring).
        info: The contents of ``tlsteer_cache.json``.
    """

    folder: Path
    info: Mapping[str, Any]

    @property
    def hook_name(self) -> str:
        return str(self.info["key"]["hook_name"])

    @property
    def context_size(self) -> int:
        """The corpus rows' length (before ``seqpos_slice``)."""
        return int(self.info["key"]["context_size"])

    @property
    def seqpos_slice(self) -> tuple[int | None, ...]:
        return tuple(self.info["key"]["seqpos_slice"])

    @property
    def positions(self) -> int:
        """Cached positions per row."""
        return sliced_positions(self.context_size, self.seqpos_slice)

    @property
    def rows(self) -> int:
        return int(self.info["key"]["rows"])

    @property
    def tokens(self) -> int:
        return int(self.info["tokens"])

    @property
    def dtype(self) -> torch.dtype:
        """The dtype on disk."""
        return getattr(torch, self.info["key"]["dtype"])


@dataclass(frozen=True)
class ActivationBatch:
    """Consecutive cached rows: ``acts[i, p]`` is the activation at token ``token_ids[i, p]``.

    ``first_row`` is the index (in the corpus) of the batch's first row.
    """

    acts: Float[Tensor, "row pos d_model"]
    token_ids: Int[Tensor, "row pos"]
    first_row: int


def load_activation_cache(folder: str | Path) -> ActivationCache:
    """Open a cache folder written by :func:`cache_activations`.

    Raises:
        FileNotFoundError: ``folder`` holds no cache (no ``tlsteer_cache.json``).
    """
    folder = Path(folder)
    info_path = folder / CACHE_INFO_FILE
    if not info_path.is_file():
        raise FileNotFoundError(
            f"no activation cache in {str(folder)!r}: expected {CACHE_INFO_FILE} and the datasets "
            "files that cache_activations writes"
        )
    return ActivationCache(folder, json.loads(info_path.read_text()))


def iter_activations(
    cache: ActivationCache | str | Path,
    *,
    batch_rows: int = 64,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> Iterator[ActivationBatch]:
    """Stream the cached activations in order, ``batch_rows`` rows at a time (the last batch may
    be shorter), converted to ``dtype`` on ``device``.

    Example:
        >>> for batch in iter_activations("build/sae_activations/layer_6", batch_rows=32):  # doctest: +SKIP
        ...     x = batch.acts.flatten(0, 1)  # [tokens, d_model]
    """
    from datasets import load_from_disk

    batch_rows = check_batch_size(batch_rows)
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype such as torch.float32, got {dtype!r}")
    if not isinstance(cache, ActivationCache):
        cache = load_activation_cache(cache)
    hook = cache.hook_name
    data = load_from_disk(str(cache.folder)).with_format("torch", columns=[hook, "token_ids"])
    for first in range(0, len(data), batch_rows):
        part = data[first : first + batch_rows]
        # the torch format gives tensors, not the lists that datasets annotates
        acts, token_ids = cast(Tensor, part[hook]), cast(Tensor, part["token_ids"])
        yield ActivationBatch(
            acts=acts.to(device=device, dtype=dtype),
            token_ids=token_ids.to(device=device, dtype=torch.long),
            first_row=first,
        )


def _check_finite(folder: Path, hook_name: str, dtype: torch.dtype) -> None:
    """Refuse (and delete) a cache with a value that is not finite: in float16, activations beyond
    its range (65,504) overflow to inf when written (gemma-3-270m's residual stream reaches that by
    layer 7), and an SAE trained on them turns its loss to NaN."""
    import datasets

    data = datasets.load_from_disk(str(folder))
    data.set_format("numpy", columns=[hook_name])
    bad, largest = 0, 0.0
    for start in range(0, len(data), 256):
        block = np.asarray(data[start : start + 256][hook_name], dtype=np.float32)
        finite = np.isfinite(block)
        bad += int((~finite).sum())
        if finite.any():
            largest = max(largest, float(np.abs(block[finite]).max()))
    if bad:
        del data
        shutil.rmtree(folder, ignore_errors=True)
        hint = (
            f"they overflow {str(dtype).removeprefix('torch.')} (its largest value is "
            f"{torch.finfo(dtype).max:,.0f}): cache with dtype=torch.float32"
            if dtype != torch.float32
            else "the model itself produced them"
        )
        raise ValueError(
            f"{bad} cached values of {hook_name} are not finite (the largest finite |value| is "
            f"{largest:,.0f}); {hint}. The cache in {folder} was deleted."
        )


def _plan_shards(
    n_rows: int, batch_rows: int, row_tokens: int, bytes_per_token: int, max_gb: float
) -> tuple[int, int, int]:
    """Shards of whole model batches that split the rows evenly: ``(rows_used, n_shards, batches_per_shard)``.

    ``CacheActivationsRunner`` fills every shard completely (cycling the data if it runs out), so
    the rows it is given must be an exact number of shards; the few rows left over are dropped.
    """
    n_batches = n_rows // batch_rows
    if n_batches < 1:
        raise ValueError(f"the corpus has {n_rows} rows, fewer than one model batch ({batch_rows})")
    per_shard_max = max(1, int(max_gb * 1e9 // (batch_rows * row_tokens * bytes_per_token)))
    n_shards = math.ceil(n_batches / per_shard_max)
    per_shard = n_batches // n_shards
    return n_shards * per_shard * batch_rows, n_shards, per_shard


def _dataset_path(dataset: Any) -> str:
    """The folder a dataset was loaded from ("" if in memory): sae-lens's configs record it."""
    files = getattr(dataset, "cache_files", None) or []
    return str(Path(files[0]["filename"]).parent) if files else ""


def cache_activations(
    model: HookedTransformer,
    dataset: Any,
    *,
    hook_name: str,
    folder: str | Path,
    rows_sha256: str,
    seqpos_slice: tuple[int | None, ...] = (2, None),
    dtype: torch.dtype = torch.float16,
    model_batch: int = 16,
    max_shard_gb: float = 0.5,
    seed: int = 0,
    recache: bool = False,
) -> ActivationCache:
    """Write ``hook_name``'s activations over the corpus rows to ``folder`` (or reuse a matching cache).

    A cache already in ``folder`` is reused when its key matches (the corpus hash, hook, dtype,
    context size, ``seqpos_slice`` and rows); otherwise (or with ``recache``) the folder is
    replaced. The model runs once, ``model_batch`` rows per forward, without a BOS added (corpus
    rows are token ids already), and only up to the hook's block.

    Args:
        model: The model (sae-lens's runner is pointed at it; it loads nothing by name).
        dataset: The corpus rows: a ``datasets.Dataset`` with an ``input_ids`` column
            (:attr:`tlsteer.sae.corpus.LoadedCorpus.dataset`).
        hook_name: The hook to cache, e.g. ``"blocks.6.hook_resid_post"``.
        folder: The cache folder.
        rows_sha256: The corpus's hash (:attr:`tlsteer.sae.corpus.Corpus.rows_sha256`): a changed
            corpus is cached again.
        seqpos_slice: The positions of each row to cache. The default leaves out positions 0 and
            1: packed rows begin mid-text, and then position 0 is an attention sink and position 1
            is one in ~2% of rows (see :mod:`tlsteer.sae.training`).
        dtype: The dtype on disk (``torch.float16`` halves the disk and the reading time).
        model_batch: Rows per model forward.
        max_shard_gb: The largest shard the runner holds in memory (as ``dtype``) before writing.
        seed: sae-lens's seed (the runner shuffles nothing here: rows stay in corpus order).
        recache: Cache again even if a matching cache is there.
    """
    if dtype not in _CACHE_DTYPES:
        raise ValueError(f"dtype must be one of {_CACHE_DTYPES}, got {dtype!r}")
    if hook_name not in model.hook_dict:
        raise KeyError(f"hook {hook_name!r} not in model {model.cfg.model_name!r}")
    model_batch = check_batch_size(model_batch)
    folder = Path(folder)
    dtype_name = str(dtype).removeprefix("torch.")
    context = len(dataset[0]["input_ids"])
    row_tokens = sliced_positions(context, seqpos_slice)
    bytes_per_token = model.cfg.d_model * torch.finfo(dtype).bits // 8
    rows, n_shards, per_shard = _plan_shards(
        len(dataset), model_batch, row_tokens, bytes_per_token, max_shard_gb
    )
    key = {
        "rows_sha256": rows_sha256,
        "hook_name": hook_name,
        "dtype": dtype_name,
        "context_size": context,
        "seqpos_slice": list(seqpos_slice),
        "rows": rows,
    }
    info_path = folder / CACHE_INFO_FILE
    if info_path.exists() and not recache:
        info = json.loads(info_path.read_text())
        if info["key"] == key:
            LOG.info("reusing cached activations in %s (%d tokens)", folder, info["tokens"])
            return ActivationCache(folder, info)
        LOG.info("cached activations in %s are for another corpus or setting; caching again", folder)
    if folder.exists():
        shutil.rmtree(folder)
    cfg = sae_lens.CacheActivationsRunnerConfig(
        dataset_path=_dataset_path(dataset),
        model_name=model.cfg.model_name,
        model_batch_size=model_batch,
        hook_name=hook_name,
        d_in=model.cfg.d_model,
        training_tokens=rows * row_tokens,
        context_size=context,
        new_cached_activations_path=str(folder),
        shuffle=False,  # the runner shuffles only the object it returns, never the files
        seed=seed,
        dtype=dtype_name,
        device="cpu",
        buffer_size_gb=(per_shard + 0.5) * model_batch * row_tokens * bytes_per_token / 1e9,
        prepend_bos=False,
        seqpos_slice=tuple(seqpos_slice),
        streaming=False,
    )
    if (cfg.n_buffers, cfg.n_batches_in_buffer) != (n_shards, per_shard):
        raise RuntimeError(
            f"cache plan {(n_shards, per_shard)} != sae-lens's {(cfg.n_buffers, cfg.n_batches_in_buffer)}"
        )
    start = time.perf_counter()
    from sae_lens import cache_activations_runner as car

    with warnings.catch_warnings():
        # rows counted against tokens (as in training): expected
        warnings.filterwarnings("ignore", message="The training dataset contains fewer samples")
        # sae-lens's activation store copies a tensor with torch.tensor(...): harmless
        warnings.filterwarnings("ignore", message="To copy construct from a tensor", category=UserWarning)
        # the runner takes a model name, not a model: point its loader at ours for this one call
        with mock.patch.object(car, "load_model", lambda **_: model):
            runner = sae_lens.CacheActivationsRunner(cfg, override_dataset=dataset.select(range(rows)))
        runner.run()
    _check_finite(folder, hook_name, dtype)
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
    LOG.info("cached %d tokens of %s in %.0fs (%.0f tokens/s)", tokens, hook_name, seconds, tokens / seconds)
    return ActivationCache(folder, info)
