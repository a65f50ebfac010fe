"""The SAEs shipped for the embedded model: which layers there are, where they live, loading them.

Each shipped SAE is a folder ``tlsteer/sae/weights/layer_{L}/`` holding what sae-lens's
``save_inference_model`` writes (``cfg.json``, ``sae_weights.safetensors``), a ``provenance.json``
(the command, corpus hash, tokens, timings, versions and held-out explained variance) and
``heldout_texts.json`` (a few held-out conversations to check it on). Every one is a TopK SAE on
``blocks.{L}.hook_resid_post`` of SmolLM2-135M-Instruct, trained by ``benchmarks/train_sae.py`` on
the chat conversations of ``benchmarks/sae_corpus.py`` (scripts over :mod:`tlsteer.sae.corpus` and
:mod:`tlsteer.sae.training`), with the attention sinks at the start of each training row left out
(``seqpos_slice``): encode a conversation from position 1 on.

sae-lens is imported only when an SAE is loaded.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tlsteer._types import is_int

if TYPE_CHECKING:
    from sae_lens import SAE

__all__ = [
    "EMBEDDED_SAE_MODEL",
    "SAE_MODELS",
    "embedded_sae_layers",
    "embedded_sae_path",
    "embedded_sae_provenance",
    "load_embedded_sae",
]

EMBEDDED_SAE_MODEL = "SmolLM2-135M-Instruct"
"""The model (``model.cfg.model_name``) the default shipped SAEs were trained on."""

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_MODEL = "smollm2-135m-instruct"
SAE_MODELS = {"smollm2-135m-instruct": "SmolLM2-135M-Instruct", "gemma-3-270m": "gemma-3-270m"}
"""Embedded model name (``tlsteer.load_model(name)``) -> its ``cfg.model_name``, for each model with
shipped SAEs. The default model's SAEs live in ``weights/layer_L``, another's in
``weights/<name>/layer_L``."""


def _weights_dir(model: str) -> Path:
    if model not in SAE_MODELS:
        raise ValueError(f"no SAEs are shipped for model {model!r}; models with SAEs: {sorted(SAE_MODELS)}")
    return WEIGHTS_DIR if model == DEFAULT_MODEL else WEIGHTS_DIR / model


BUILD_COMMAND = "python benchmarks/rebuild_saes.py --caa-dir ../shared/caa"
_INSTALL_HINT = 'loading an SAE needs sae-lens; install it with: pip install "tlsteer[sae]"'
_LAYER_FOLDER = re.compile(r"^layer_(\d+)$")


def embedded_sae_layers(model: str = DEFAULT_MODEL) -> tuple[int, ...]:
    """The layers with a shipped SAE for ``model``, lowest first (empty when none has been built).

    Example:
        >>> embedded_sae_layers()  # doctest: +SKIP
        (6, 12)
    """
    weights = _weights_dir(model)
    if not weights.is_dir():
        return ()
    layers = []
    for folder in weights.iterdir():
        match = _LAYER_FOLDER.match(folder.name)
        if match and (folder / "cfg.json").is_file() and (folder / "sae_weights.safetensors").is_file():
            layers.append(int(match.group(1)))
    return tuple(sorted(layers))


def embedded_sae_path(layer: int | None = None, model: str = DEFAULT_MODEL) -> Path:
    """The folder of the SAE shipped for ``layer`` of ``model`` (``None``: the lowest shipped layer).

    Raises:
        FileNotFoundError: No SAE is shipped; the message gives the command that builds them.
        ValueError: No SAE is shipped for ``layer``; the message lists the layers that have one.
    """
    if layer is not None and (not is_int(layer)):
        raise TypeError(f"layer must be an int or None, got {layer!r}")
    layers = embedded_sae_layers(model)
    weights = _weights_dir(model)
    if not layers:
        build = BUILD_COMMAND if model == DEFAULT_MODEL else _build_command(model)
        raise FileNotFoundError(
            f"no SAE is shipped in {str(weights)!r}; build them from a source checkout with: {build}"
        )
    if layer is None:
        layer = layers[0]
    if layer not in layers:
        shipped = ", ".join(str(n) for n in layers)
        of = "" if model == DEFAULT_MODEL else f" of {model}"
        raise ValueError(f"no SAE is shipped for layer {layer}{of}; shipped layers: {shipped}")
    return weights / f"layer_{int(layer)}"


def _build_command(model: str) -> str:
    return (
        f"python benchmarks/sae_corpus.py --model {model} --caa-dir ../shared/caa && "
        f"python benchmarks/train_sae.py --model {model} --layer L"
    )


def embedded_sae_provenance(layer: int | None = None, model: str = DEFAULT_MODEL) -> dict[str, Any]:
    """How the SAE for ``layer`` of ``model`` was built: the contents of its ``provenance.json``."""
    return json.loads((embedded_sae_path(layer, model) / "provenance.json").read_text())


def load_embedded_sae(
    layer: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    model: str = DEFAULT_MODEL,
) -> SAE:
    """A shipped SAE for an embedded model, loaded offline with sae-lens.

    The SAE reads ``blocks.{layer}.hook_resid_post`` (``sae.cfg.metadata.hook_name``); its
    metadata also names the model, the training context size and ``seqpos_slice``. Position 0 of
    a sequence is an attention sink (a norm ~170x the rest at layer 12) that the SAE never saw:
    encode a conversation from position 1 on.

    Args:
        layer: A layer from :func:`embedded_sae_layers` (``None``: the lowest shipped layer).
        model: The embedded model the SAE was trained on: ``"smollm2-135m-instruct"`` (the
            default) or ``"gemma-3-270m"`` (its SAEs are under the Gemma Terms of Use, like the
            model: :func:`tlsteer.models.gemma_terms`).
        device: Where to put the SAE.
        dtype: Its dtype (weights stored in float16 are widened to float32 by default).

    Example:
        >>> sae = load_embedded_sae(6)  # doctest: +SKIP
        >>> sae.cfg.metadata.hook_name  # doctest: +SKIP
        'blocks.6.hook_resid_post'
    """
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype such as torch.float32, got {dtype!r}")
    folder = embedded_sae_path(layer, model)
    try:
        from sae_lens import SAE
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(f"{_INSTALL_HINT} ({err})", name=err.name) from err
    sae = SAE.load_from_disk(
        str(folder), device=str(torch.device(device)), dtype=str(dtype).removeprefix("torch.")
    )
    expected = f"blocks.{folder.name.removeprefix('layer_')}.hook_resid_post"
    if sae.cfg.metadata.hook_name != expected:
        raise ValueError(
            f"the SAE in {str(folder)!r} names hook {sae.cfg.metadata.hook_name!r}, expected {expected!r}; "
            f"rebuild it with: {BUILD_COMMAND}"
        )
    return sae
