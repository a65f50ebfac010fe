"""The codebooks shipped for the embedded model: which layers there are, where they live, loading them.

Each shipped codebook is a folder ``tlsteer/codebook/weights/layer_{L}/`` holding
``codebook.safetensors`` (:meth:`~tlsteer.codebook.Codebook.save`) and ``provenance.json`` (the
command, the activation cache it was trained on, the settings, timings, versions and its quality
on held-out conversations). Every one reads ``blocks.{L}.hook_resid_post`` of
SmolLM2-135M-Instruct, trained by ``benchmarks/train_codebook.py`` on the activations the shipped
SAEs were trained on (the chat corpus of ``benchmarks/sae_corpus.py``, positions 0 and 1 of each
training row left out), with the model frozen.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from tlsteer._types import is_int
from tlsteer.codebook.codebook import Codebook, load_codebook

__all__ = ["embedded_codebook_layers", "embedded_codebook_provenance", "load_embedded_codebook"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_MODEL = "smollm2-135m-instruct"
CODEBOOK_MODELS = ("smollm2-135m-instruct", "gemma-3-270m")
"""The embedded models codebooks can ship for: the default's in ``weights/layer_L``, another's in
``weights/<model>/layer_L``."""
BUILD_COMMAND = "python benchmarks/train_codebook.py --layer L (after benchmarks/rebuild_saes.py)"
_LAYER_FOLDER = re.compile(r"^layer_(\d+)$")


def _weights_dir(model: str) -> Path:
    if model not in CODEBOOK_MODELS:
        raise ValueError(f"no codebooks are shipped for model {model!r}; models: {list(CODEBOOK_MODELS)}")
    return WEIGHTS_DIR if model == DEFAULT_MODEL else WEIGHTS_DIR / model


def embedded_codebook_layers(model: str = DEFAULT_MODEL) -> tuple[int, ...]:
    """The layers with a shipped codebook for ``model``, lowest first (empty when none has been built)."""
    weights = _weights_dir(model)
    if not weights.is_dir():
        return ()
    found = []
    for folder in weights.iterdir():
        match = _LAYER_FOLDER.match(folder.name)
        if match and (folder / "codebook.safetensors").is_file():
            found.append(int(match.group(1)))
    return tuple(sorted(found))


def _folder(layer: int | None, model: str = DEFAULT_MODEL) -> Path:
    if layer is not None and not is_int(layer):
        raise TypeError(f"layer must be an int or None, got {layer!r}")
    layers = embedded_codebook_layers(model)
    weights = _weights_dir(model)
    if not layers:
        build = (
            BUILD_COMMAND
            if model == DEFAULT_MODEL
            else BUILD_COMMAND.replace("--layer", f"--model {model} --layer")
        )
        raise FileNotFoundError(
            f"no codebook is shipped in {str(weights)!r}; build them from a source checkout with: {build}"
        )
    layer = layers[0] if layer is None else int(layer)
    if layer not in layers:
        raise ValueError(
            f"no codebook is shipped for layer {layer}{'' if model == DEFAULT_MODEL else f' of {model}'}; "
            "shipped layers: "
            f"{', '.join(map(str, layers))}"
        )
    return weights / f"layer_{layer}"


def embedded_codebook_provenance(layer: int | None = None, model: str = DEFAULT_MODEL) -> dict[str, Any]:
    """How the codebook for ``layer`` of ``model`` was built: the contents of its ``provenance.json``."""
    return json.loads((_folder(layer, model) / "provenance.json").read_text())


def load_embedded_codebook(
    layer: int | None = None, device: str | torch.device = "cpu", *, model: str = DEFAULT_MODEL
) -> Codebook:
    """A shipped codebook for an embedded model (``model``: ``"smollm2-135m-instruct"``, the
    default, or ``"gemma-3-270m"``), loaded offline.

    It reads ``blocks.{layer}.hook_resid_post``; position 0 of a conversation is an attention
    sink it never saw: read codes from position 1 on.

    Example:
        >>> book = load_embedded_codebook(6)  # doctest: +SKIP
        >>> book.hook_name, book.k  # doctest: +SKIP
        ('blocks.6.hook_resid_post', 8)
    """
    folder = _folder(layer, model)
    book = load_codebook(folder / "codebook.safetensors", device=device)
    expected = f"blocks.{folder.name.removeprefix('layer_')}.hook_resid_post"
    if book.hook_name != expected:
        raise ValueError(f"the codebook in {str(folder)!r} reads {book.hook_name!r}, expected {expected!r}")
    return book
