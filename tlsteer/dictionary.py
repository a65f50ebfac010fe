"""A feature dictionary as the core sees it: a hook, a width, an encoder and a decoder.

A *feature dictionary* reads the residual stream at one hook and writes it as ``width`` features:
an SAE (:func:`tlsteer.sae.adapter.as_feature_dictionary` adapts a sae-lens SAE), a codebook, a
transcoder. :class:`FeatureDictionary` is the :class:`typing.Protocol` the rest of tlsteer codes
against, so that evaluation (:func:`tlsteer.eval.feature_token_view`, say) never imports the
package that supplies one, and every feature-level function of :mod:`tlsteer.sae` works on any
dictionary. This module owns the protocol (with its one decoding path,
:meth:`FeatureDictionary.decode_change`), the check that an object satisfies it
(:func:`check_feature_dictionary`, with errors that name what is missing), feature-id checks
(:func:`check_feature_ids`) and the fingerprint of a decoder (:func:`fingerprint`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from tlsteer._types import is_int, validate_hook_name

__all__ = [
    "MEMBERS",
    "FeatureDictionary",
    "check_feature_dictionary",
    "check_feature_ids",
    "feature_dictionary_lacks",
    "fingerprint",
    "weights_fingerprint",
]


@runtime_checkable
class FeatureDictionary(Protocol):
    """``width`` features read from, and written to, the ``d_model``-sized residual at ``hook_name``.

    ``encode``, ``decode``, ``decoder_rows`` and ``decode_change`` take inputs on any device (and
    activations in any float dtype): a dictionary moves them to its own, and returns on its own
    device. ``decoder_rows(ids)`` are the directions the features write: ``decode(f + df) -
    decode(f)`` is ``df @ decoder_rows(all ids)`` for a dictionary whose decoder is linear in the
    features. Every place in tlsteer that turns a change of features into a residual direction
    calls :meth:`decode_change`; a class that subclasses this protocol inherits that linear one.

    Example:
        >>> class Identity(FeatureDictionary):  # a linear decoder: it inherits decode_change
        ...     hook_name, width, d_model = "blocks.1.hook_resid_post", 3, 3
        ...     def encode(self, acts): return acts.float()
        ...     def decode(self, features): return features.float()
        ...     def decoder_rows(self, ids): return torch.eye(3)[ids]
        >>> book = check_feature_dictionary(Identity())
        >>> book.decode_change(torch.tensor([2.0, -1.0]), torch.tensor([0, 2])).tolist()
        [2.0, 0.0, -1.0]
    """

    @property
    def hook_name(self) -> str:
        """The full TransformerLens hook the dictionary reads and writes (``"blocks.6.hook_resid_post"``)."""
        ...

    @property
    def width(self) -> int:
        """The number of features."""
        ...

    @property
    def d_model(self) -> int:
        """The size of the activations it reads."""
        ...

    def encode(self, acts: Float[Tensor, "... d_model"]) -> Float[Tensor, "... width"]:
        """Feature activations of residual activations."""
        ...

    def decode(self, features: Float[Tensor, "... width"]) -> Float[Tensor, "... d_model"]:
        """The reconstruction of feature activations."""
        ...

    def decoder_rows(self, ids: Int[Tensor, " n"]) -> Float[Tensor, "n d_model"]:
        """The decoder directions of the features ``ids``."""
        ...

    def decode_change(
        self, df: Float[Tensor, "... n"], ids: Int[Tensor, " n"]
    ) -> Float[Tensor, "... d_model"]:
        """How the reconstruction moves when features ``ids`` move by ``df``: ``decode(f + df) - decode(f)``.

        The one decoding path of tlsteer: a feature vector's steering vector, a feature edit, a
        decoded class direction and an output score all come from it. It does not depend on
        ``f``, and a zero ``df`` gives exactly zero (no bias enters). For a decoder linear in the
        features it is ``df @ decoder_rows(ids)``, the body here. A decoder that is affine in the
        features in another way says so by overriding it (the sae-lens adapter measures a decoder
        that rescales by its decoder norms through ``decode(df) - decode(0)``). A decoder that is
        not affine in the features (one that normalises each input at run time) has no change
        independent of ``f``: what this method returns is what tlsteer adds, so such a
        dictionary returns its linear part, and steering with it is first order, not
        ``decode(f_edited) - decode(f)`` (the sae-lens adapter refuses such SAEs instead).
        """
        rows = self.decoder_rows(ids)
        return df.to(device=rows.device, dtype=rows.dtype) @ rows


_METHODS = ("encode", "decode", "decoder_rows", "decode_change")
_SIZES = ("width", "d_model")
MEMBERS = ", ".join(("hook_name", *_SIZES, *_METHODS))
"""The members of :class:`FeatureDictionary`, as error messages list them."""


def feature_dictionary_lacks(dictionary: object) -> list[str]:
    """The members of :class:`FeatureDictionary` that ``dictionary`` lacks (empty when it has all)."""
    missing = [a for a in ("hook_name", *_SIZES) if not hasattr(dictionary, a)]
    return missing + [a for a in _METHODS if not callable(getattr(dictionary, a, None))]


def check_feature_dictionary(dictionary: Any, model: HookedTransformer | None = None) -> FeatureDictionary:
    """``dictionary`` if it is a :class:`FeatureDictionary` (and fits ``model``), else an error naming
    what is missing or wrong.

    With ``model``: its ``d_model`` must be ``model.cfg.d_model`` and its hook a hook of the model.

    Example:
        >>> check_feature_dictionary(as_feature_dictionary(sae), model)  # doctest: +SKIP
    """
    missing = feature_dictionary_lacks(dictionary)
    if missing:
        hint = (
            "; adapt a sae-lens SAE with tlsteer.sae.adapter.as_feature_dictionary(sae)"
            if hasattr(dictionary, "W_dec")
            else ""
        )
        raise TypeError(
            f"expected a feature dictionary ({MEMBERS}), "
            f"got {type(dictionary).__name__} lacking {', '.join(missing)}" + hint
        )
    name = dictionary.hook_name
    if not isinstance(name, str) or not name:
        raise TypeError(
            f"the dictionary's hook_name must be a hook name like 'blocks.3.hook_resid_post', got {name!r}"
        )
    for size in _SIZES:
        value = getattr(dictionary, size)
        if not is_int(value) or value < 1:
            raise TypeError(f"the dictionary's {size} must be an int >= 1, got {value!r}")
    if model is not None:
        if dictionary.d_model != model.cfg.d_model:
            raise ValueError(
                f"the dictionary has d_model={dictionary.d_model} but model.cfg.d_model={model.cfg.d_model}; "
                "it was trained on another model or at a hook that is not residual-sized"
            )
        validate_hook_name(model, name)
    return dictionary


def check_feature_ids(
    features: Any, width: int, owner: str = "the dictionary", size: str = "width"
) -> list[int]:
    """Feature ids as distinct ints in ``0..width-1``; an int, a list or a 1-D integer tensor.

    ``owner`` and ``size`` name the dictionary and its width in the error messages.
    """
    if isinstance(features, Tensor):
        if features.ndim > 1 or features.is_floating_point() or features.dtype == torch.bool:
            raise TypeError(
                f"feature ids must be a 1-D integer tensor, got {features.dtype} {tuple(features.shape)}"
            )
        features = features.reshape(-1).tolist()
    if is_int(features):
        features = [features]
    if isinstance(features, (str, bytes)) or not isinstance(features, Sequence) or len(features) == 0:
        raise ValueError(f"features must be a feature id or a non-empty list of ids, got {features!r}")
    ids = []
    for f in features:
        if not is_int(f):
            raise TypeError(f"feature ids must be ints, got {f!r}")
        if not 0 <= f < width:
            raise IndexError(
                f"feature {int(f)} is out of range: {owner} has {size}={width} features "
                f"(valid: 0..{width - 1})"
            )
        ids.append(int(f))
    if len(set(ids)) != len(ids):
        twice = sorted({f for f in ids if ids.count(f) > 1})
        raise ValueError(f"feature ids must be distinct; given more than once: {twice}")
    return ids


def weights_fingerprint(weights: Float[Tensor, "width d_model"]) -> str:
    """16 hex digits of the sha256 of ``weights`` as float32 (their shape included)."""
    weights = weights.detach().float().cpu().contiguous()
    digest = hashlib.sha256(str(tuple(weights.shape)).encode())
    digest.update(weights.numpy().tobytes())
    return digest.hexdigest()[:16]


def fingerprint(dictionary: FeatureDictionary) -> str:
    """The fingerprint of a dictionary's decoder rows: ties what was read or built to its dictionary.

    For an adapted SAE it equals :func:`tlsteer.sae.adapter.sae_fingerprint` (the same hash of
    ``W_dec``), so feature vectors and results saved before dictionaries were generic still match.
    """
    rows = dictionary.decoder_rows(torch.arange(dictionary.width))
    return weights_fingerprint(rows)
