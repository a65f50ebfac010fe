"""The SAE as tlsteer sees it: loading, its hook name, checks against a model, and the SAE as a
feature dictionary.

tlsteer uses only ``sae.encode``, ``sae.decode``, ``sae.W_dec``, ``sae.cfg.d_in``, ``sae.cfg.d_sae``
and the hook name in ``sae.cfg.metadata.hook_name`` (or a ``hook_name=`` argument), so every
sae-lens architecture (standard, top-k, JumpReLU, gated, ...) works. This module owns the checks
that refuse an SAE that does not fit a model, the short fingerprint of ``W_dec`` that ties a
feature vector to its SAE, :class:`SAEDictionary` (an SAE as a
:class:`~tlsteer.dictionary.FeatureDictionary`, with the decoder's change per unit of a feature)
and :func:`as_feature_dictionary`, the one entry through which every feature-level function
takes an SAE or any other feature dictionary, feature-value checks, and the logit lens of a
decoder row.
"""

from __future__ import annotations

import json
import numbers
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, TypeGuard

import torch
from jaxtyping import Float, Int
from safetensors import SafetensorError, safe_open
from torch import Tensor
from transformer_lens import HookedTransformer

from tlsteer._types import validate_hook_name
from tlsteer.dictionary import (
    MEMBERS,
    FeatureDictionary,
    check_feature_dictionary,
    feature_dictionary_lacks,
    weights_fingerprint,
)
from tlsteer.errors import closest, format_options
from tlsteer.sae._lens import SAE, sae_lens
from tlsteer.tokens import decode_tokens

__all__ = [
    "SAEDictionary",
    "SAELike",
    "as_feature_dictionary",
    "as_sae",
    "check_feature_values",
    "check_sae",
    "load_sae",
    "logit_lens",
    "sae_dims",
    "sae_fingerprint",
    "sae_hook_name",
]

# The class, not a Protocol: from Python 3.12 on, isinstance against a runtime-checkable protocol no
# longer sees a module's registered parameters (W_dec), so runtime type checks would refuse real SAEs.
SAELike = SAE
"""A sae-lens ``SAE`` of any architecture (each subclasses ``sae_lens.SAE``). tlsteer uses only its
``encode``, ``decode``, ``W_dec``, ``cfg.d_in`` and ``cfg.d_sae`` (and its hook name), which
:func:`as_sae` checks, naming what is missing."""

_INPUT_DEPENDENT = ("layer_norm", "constant_norm_rescale")
_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_SAVED = "a folder with cfg.json and sae_weights.safetensors, as sae.save_model(path) writes"


def _check_saved_sae(folder: Path, dtype_given: bool) -> None:
    """Refuse a folder whose cfg.json or sae_weights.safetensors is not what sae-lens loads."""
    cfg_path, weights_path = folder / "cfg.json", folder / "sae_weights.safetensors"
    for path in (cfg_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"no SAE at {str(folder)!r}: {path.name} is missing; expected {_SAVED}")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"{str(cfg_path)!r} is not valid JSON ({err}); expected the JSON object of an SAE's config "
            f"in {_SAVED}"
        ) from err
    if not isinstance(cfg, dict):
        raise ValueError(
            f"{str(cfg_path)!r} holds a JSON {type(cfg).__name__}; expected the JSON object of an SAE's "
            f"config (with d_in, d_sae, dtype and architecture) in {_SAVED}"
        )
    needed = ("d_in", "d_sae") if dtype_given else ("d_in", "d_sae", "dtype")
    missing = [key for key in needed if key not in cfg]
    if missing:
        has = f"it has {format_options(sorted(cfg))}" if cfg else "it is empty"
        raise ValueError(
            f"{str(cfg_path)!r} lacks {', '.join(repr(k) for k in missing)} ({has}); expected an SAE "
            "config with d_in, d_sae, dtype and architecture, as sae.save_model(path) writes"
        )
    known = list(sae_lens.registry.SAE_CLASS_REGISTRY)
    architecture = cfg.get("architecture", "standard")
    if architecture not in known:
        near = closest(str(architecture), known)
        hint = f"; closest: {near[0]!r}" if near else ""
        raise ValueError(
            f"{str(cfg_path)!r} names architecture {architecture!r}, which sae-lens does not know; "
            f"valid: {format_options(known, limit=len(known))}{hint}"
        )
    try:
        with safe_open(str(weights_path), framework="pt") as handle:
            list(handle.keys())
    except (SafetensorError, OSError) as err:
        raise ValueError(
            f"{str(weights_path)!r} is not a readable safetensors file ({err}); expected the SAE's "
            f"weights in {_SAVED}"
        ) from err


def load_sae(
    path: str | Path,
    hook_name: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> SAE:
    """Load an SAE saved with ``sae.save_model(path)`` (offline ``SAE.load_from_disk``).

    Args:
        path: The folder holding ``cfg.json`` and ``sae_weights.safetensors``.
        hook_name: Where the SAE reads, for an SAE whose metadata does not say; an SAE whose
            metadata names another hook is refused.
        device: Where to put the SAE.
        dtype: Its dtype (default: the one in its config).

    Example:
        >>> sae = load_sae("saes/layer1", hook_name="blocks.1.hook_resid_post")  # doctest: +SKIP
    """
    folder = Path(path)
    if not (folder / "cfg.json").is_file():
        raise FileNotFoundError(
            f"no SAE at {str(folder)!r}: expected a folder with cfg.json and sae_weights.safetensors "
            "(what sae.save_model(path) writes)"
        )
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype such as torch.float32, got {dtype!r}")
    _check_saved_sae(folder, dtype is not None)
    dtype_name = None if dtype is None else str(dtype).removeprefix("torch.")
    try:
        sae = SAE.load_from_disk(str(folder), device=str(torch.device(device)), dtype=dtype_name)
    except (KeyError, TypeError, ValueError, RuntimeError, SafetensorError) as err:
        raise ValueError(
            f"sae-lens could not load the SAE in {str(folder)!r} ({type(err).__name__}: {err}); its "
            "cfg.json and sae_weights.safetensors do not make one SAE (a config field or a weight's "
            f"shape is wrong or missing); expected {_SAVED}"
        ) from err
    if hook_name is not None:
        name = sae_hook_name(sae, hook_name)
        sae.cfg.metadata.hook_name = name
    return sae


def _lacks(sae: object) -> list[str]:
    """What ``sae`` lacks of ``encode``, ``decode``, ``W_dec``, ``cfg.d_in`` and ``cfg.d_sae``."""
    cfg = getattr(sae, "cfg", None)
    missing = [a for a in ("encode", "decode") if not callable(getattr(sae, a, None))]
    missing += [] if isinstance(getattr(sae, "W_dec", None), Tensor) else ["W_dec"]
    missing += [f"cfg.{a}" for a in ("d_in", "d_sae") if not isinstance(getattr(cfg, a, None), int)]
    return missing


def _has_what_tlsteer_uses(sae: object) -> TypeGuard[SAELike]:
    """Duck-typed: an object with all of what tlsteer uses of an SAE is used as one."""
    return not _lacks(sae)


def as_sae(sae: object) -> SAELike:
    """``sae`` itself once it is an SAE tlsteer can use, else an error naming what is missing.

    It needs ``encode``, ``decode``, a ``W_dec`` of shape ``[cfg.d_sae, cfg.d_in]`` and a decoder
    that is affine in the features (no per-input normalization).
    """
    if not _has_what_tlsteer_uses(sae):
        raise TypeError(
            f"expected a sae-lens SAE (with encode, decode, W_dec, cfg.d_in and cfg.d_sae), got "
            f"{type(sae).__name__} lacking {', '.join(_lacks(sae))}"
        )
    cfg = sae.cfg
    d_in, d_sae = cfg.d_in, cfg.d_sae
    if tuple(sae.W_dec.shape) != (d_sae, d_in):
        raise ValueError(
            f"sae.W_dec has shape {tuple(sae.W_dec.shape)}, expected [d_sae, d_in] = {[d_sae, d_in]}"
        )
    norm = getattr(cfg, "normalize_activations", "none")
    if norm in _INPUT_DEPENDENT:
        raise ValueError(
            f"the SAE rescales each input at run time (normalize_activations={norm!r}), so its decoder "
            "is not affine in the features; tlsteer needs one that is ('none' or 'expected_average_only_in')"
        )
    return sae


def sae_dims(sae: object) -> tuple[int, int]:
    """``(d_in, d_sae)`` of an SAE with what tlsteer needs, else an error naming what is missing."""
    cfg = as_sae(sae).cfg
    return cfg.d_in, cfg.d_sae


def sae_hook_name(sae: object, hook_name: object = None) -> str:
    """The hook the SAE reads: ``sae.cfg.metadata.hook_name``, else ``hook_name``.

    A ``hook_name`` that disagrees with the SAE's metadata is refused, and so is an SAE with no
    hook name when none is given.

    Example:
        >>> sae_hook_name(sae)  # doctest: +SKIP
        'blocks.1.hook_resid_post'
    """
    meta = getattr(as_sae(sae).cfg, "metadata", None)
    if meta is not None and hasattr(meta, "get"):
        own = meta.get("hook_name")
    else:
        own = getattr(meta, "hook_name", None)
    if own is not None and not isinstance(own, str):
        raise TypeError(f"sae.cfg.metadata.hook_name must be a string, got {own!r}")
    if hook_name is not None:
        if not isinstance(hook_name, str) or not hook_name:
            raise TypeError(
                f"hook_name must be a hook name like 'blocks.3.hook_resid_post', got {hook_name!r}"
            )
        if own and own != hook_name:
            raise ValueError(
                f"hook_name={hook_name!r} disagrees with the SAE's own hook {own!r} "
                "(sae.cfg.metadata.hook_name); leave hook_name out or give the same hook"
            )
        return hook_name
    if not own:
        raise ValueError(
            "the SAE has no hook name (sae.cfg.metadata.hook_name is not set) and none was given; pass "
            "hook_name='blocks.<layer>.hook_resid_post' naming where it was trained"
        )
    return own


def check_sae(model: HookedTransformer, sae: object, hook_name: object = None) -> str:
    """The SAE's hook name, after checking that the SAE fits ``model`` (``d_in``, hook)."""
    d_in, _ = sae_dims(sae)
    name = sae_hook_name(sae, hook_name)
    if d_in != model.cfg.d_model:
        raise ValueError(
            f"the SAE has d_in={d_in} but model.cfg.d_model={model.cfg.d_model}; it was trained on "
            "another model or at a hook that is not residual-sized"
        )
    validate_hook_name(model, name)
    return name


def sae_fingerprint(sae: SAELike) -> str:
    """16 hex digits of the sha256 of ``W_dec`` (as float32): ties a feature vector to its SAE.

    Example:
        >>> sae_fingerprint(sae)  # doctest: +SKIP
        '3f1c0a9be2d47c55'
    """
    sae_dims(sae)
    return weights_fingerprint(sae.W_dec)


def check_feature_values(values: Any, n: int, name: str = "values") -> Float[Tensor, " n"]:
    """``values`` as ``n`` finite float32 numbers: one number for all, or one per feature."""
    if isinstance(values, Tensor):
        tensor = values.detach().float().cpu().reshape(-1) if values.ndim <= 1 else None
        if tensor is None or values.dtype == torch.bool or values.is_complex():
            raise TypeError(
                f"{name} must be a number or a 1-D real tensor, got {values.dtype} {tuple(values.shape)}"
            )
    elif isinstance(values, numbers.Real) and not isinstance(values, bool):
        tensor = torch.tensor([float(values)])
    elif isinstance(values, Sequence) and not isinstance(values, (str, bytes)):
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, numbers.Real)]
        if bad:
            raise TypeError(f"{name} must be real numbers, got {bad[0]!r}")
        tensor = torch.tensor([float(v) for v in values])
    else:
        raise TypeError(f"{name} must be a number or one number per feature, got {values!r}")
    if tensor.numel() == 1:
        tensor = tensor.expand(n).clone()
    if tensor.numel() != n:
        raise ValueError(
            f"{name} has {tensor.numel()} entries for {n} features; give one number or one per feature"
        )
    bad_at = (~torch.isfinite(tensor)).nonzero().flatten().tolist()
    if bad_at:
        raise ValueError(f"{name} must be finite; entry {bad_at[0]} is {float(tensor[bad_at[0]])}")
    return tensor


def logit_lens(
    model: HookedTransformer, direction: Float[Tensor, " d_model"], k: int = 10
) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """The ``k`` tokens a direction promotes most and suppresses most: ``direction @ model.W_U``.

    No final norm is applied (a decoder row's logit lens is read as it is).
    """
    scores = direction.detach().float().to(model.W_U.device) @ model.W_U.detach().float()
    k = min(k, scores.shape[0])
    top, low = scores.topk(k), (-scores).topk(k)

    def named(ids: Tensor, vals: Tensor) -> list[tuple[str, float]]:
        return [(decode_tokens(model, [int(i)]), float(v)) for i, v in zip(ids, vals, strict=True)]

    return named(top.indices, top.values), named(low.indices, -low.values)


@dataclass(frozen=True)
class SAEDictionary:
    """A sae-lens SAE as a :class:`~tlsteer.dictionary.FeatureDictionary` (see :func:`as_feature_dictionary`).

    ``width`` is ``cfg.d_sae``, ``d_model`` is ``cfg.d_in``, ``decoder_rows`` are rows of ``W_dec``
    (so :func:`~tlsteer.dictionary.fingerprint` is :func:`sae_fingerprint`); ``encode``,
    ``decode`` and ``decode_change`` move their input to the SAE's device and dtype first.
    """

    sae: SAELike = field(repr=False)
    hook_name: str

    @property
    def width(self) -> int:
        return int(self.sae.cfg.d_sae)

    @property
    def d_model(self) -> int:
        return int(self.sae.cfg.d_in)

    def encode(self, acts: Float[Tensor, "... d_model"]) -> Float[Tensor, "... width"]:
        w_dec = self.sae.W_dec
        return self.sae.encode(acts.to(device=w_dec.device, dtype=w_dec.dtype))

    def decode(self, features: Float[Tensor, "... width"]) -> Float[Tensor, "... d_model"]:
        w_dec = self.sae.W_dec
        return self.sae.decode(features.to(device=w_dec.device, dtype=w_dec.dtype))

    def decoder_rows(self, ids: Int[Tensor, " n"]) -> Float[Tensor, "n d_model"]:
        w_dec = self.sae.W_dec
        return w_dec.detach()[ids.to(device=w_dec.device, dtype=torch.long)]

    @cached_property
    def plain_decoder(self) -> bool:
        """Whether ``decode`` is ``f @ W_dec + b_dec``, probed on a few features the first time it is asked.

        A decoder that is affine in the features in another way (one that divides them by the
        decoder norms, say) is not plain: :meth:`decode_change` measures it through ``decode``.
        """
        d_sae, w_dec = self.width, self.sae.W_dec.detach()
        ids = torch.unique(torch.linspace(0, d_sae - 1, min(d_sae, 8)).long()).to(w_dec.device)
        probe = torch.zeros(len(ids) + 1, d_sae, dtype=w_dec.dtype, device=w_dec.device)
        probe[torch.arange(len(ids), device=w_dec.device), ids] = 1.0
        with torch.no_grad():
            try:
                out = self.sae.decode(probe)
            except (AttributeError, RuntimeError) as err:
                raise ValueError(
                    f"sae.decode failed on feature activations alone ({type(err).__name__}: {err}); "
                    "tlsteer needs a decoder that is affine in the features"
                ) from err
            measured = (out[:-1] - out[-1]).float()
        rows = w_dec[ids].float()
        scale = float(rows.abs().max()) or 1.0
        return bool(torch.allclose(measured, rows, rtol=1e-3, atol=1e-4 * scale))

    def decode_change(
        self, df: Float[Tensor, "... n"], ids: Int[Tensor, " n"]
    ) -> Float[Tensor, "... d_model"]:
        """``decode(f + df) - decode(f)`` for a change ``df`` of the features ``ids``.

        For a plain decoder (:attr:`plain_decoder`) that is ``df @ W_dec[ids]``, computed in that
        form so that the bias never enters and a zero change is exactly zero; any other decoder
        that is affine in the features is measured as ``decode(df) - decode(0)``, ``df`` placed at
        ``ids`` among zeros.
        """
        w_dec = self.sae.W_dec.detach()
        ids = ids.to(device=w_dec.device, dtype=torch.long)
        df = df.to(device=w_dec.device, dtype=w_dec.dtype)
        if self.plain_decoder:
            return df @ w_dec[ids]
        full = torch.zeros(*df.shape[:-1], w_dec.shape[0], dtype=w_dec.dtype, device=w_dec.device)
        full[..., ids] = df
        zero = torch.zeros(1, w_dec.shape[0], dtype=w_dec.dtype, device=w_dec.device)
        return self.sae.decode(full) - self.sae.decode(zero)[0]


def as_feature_dictionary(
    dictionary: object, hook_name: object = None, model: HookedTransformer | None = None
) -> FeatureDictionary:
    """A checked :class:`~tlsteer.dictionary.FeatureDictionary` for a sae-lens SAE or any dictionary.

    Every feature-level function of :mod:`tlsteer.sae` takes its dictionary through here once,
    then uses only the protocol.

    Args:
        dictionary: A sae-lens SAE whose decoder is affine in its features (see :func:`as_sae`),
            adapted as an :class:`SAEDictionary`; or any object with the members of the protocol,
            returned as it is once :func:`~tlsteer.dictionary.check_feature_dictionary` passes.
        hook_name: Where it reads, for an SAE whose metadata does not say; a hook that disagrees
            with the SAE's metadata or with a dictionary's ``hook_name`` is refused.
        model: When given, the dictionary must fit it (``d_model`` and a hook of the model).

    Example:
        >>> view = feature_token_view(model, as_feature_dictionary(sae), [12, 40], "Hi")  # doctest: +SKIP
    """
    if not isinstance(dictionary, SAEDictionary) and (
        isinstance(dictionary, SAE) or (hasattr(dictionary, "W_dec") and feature_dictionary_lacks(dictionary))
    ):
        sae = as_sae(dictionary)
        name = sae_hook_name(sae, hook_name) if model is None else check_sae(model, sae, hook_name)
        return SAEDictionary(sae, name)
    missing = feature_dictionary_lacks(dictionary)
    if missing:
        raise TypeError(
            f"expected a sae-lens SAE or a feature dictionary ({MEMBERS}), got "
            f"{type(dictionary).__name__}, which has no W_dec and lacks {', '.join(missing)}"
        )
    if isinstance(dictionary, SAEDictionary) and model is not None:
        check_sae(model, dictionary.sae, dictionary.hook_name)
    checked = check_feature_dictionary(dictionary, model)
    if hook_name is not None and hook_name != checked.hook_name:
        raise ValueError(
            f"hook_name={hook_name!r} disagrees with the dictionary's own hook {checked.hook_name!r}; "
            "leave hook_name out or give the same hook"
        )
    return checked
