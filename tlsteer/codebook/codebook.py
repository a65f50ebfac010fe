"""A codebook at one hook (Tamkin, Taufeeque and Goodman 2023): ``k`` of ``n_codes`` vectors per token.

A :class:`Codebook` replaces an activation by the mean of the ``k`` code vectors most similar to
it, so every token is described by a small set of discrete codes. Similarity is the inner product
with each code's unit vector (``"inner_product"``, the paper's ``InnerProductSnapFunction``) or the
negative Euclidean distance (``"euclidean"``, its ``EuclideanSnapFunction``); with ``layer_norm``
the activation is layer-normalised first, as the paper's ``CodebookLayer`` does before snapping.
The output is the mean of the chosen codes (``sum / k``), as the paper's layer returns it.

As a :class:`~tlsteer.dictionary.FeatureDictionary` (it has every member of the protocol) its
``width`` features are its codes: a code's activation is 1 where it is one of the ``k`` chosen
codes and 0 elsewhere (which codes fire, as the paper defines them; :meth:`Codebook.codes` keeps
the similarity scores for analysis), and the decoder is linear: ``decode(f) = f @ vectors / k``,
so ``decode(encode(x))`` is the reconstruction and :meth:`decoder_rows` are ``vectors / k``. Every
feature-level function of :mod:`tlsteer.sae` (feature vectors, the three formulas, selections,
``class_profile``, ``inspect_feature``) takes a codebook unchanged.

Codebooks save to one safetensors file with their settings in its header (:meth:`Codebook.save`,
:func:`load_codebook`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tlsteer._types import is_int, parse_hook_name
from tlsteer.dictionary import check_feature_ids
from tlsteer.errors import format_options

__all__ = ["SIMILARITIES", "Codebook", "load_codebook"]

SIMILARITIES = ("inner_product", "euclidean")
"""How a codebook scores codes: inner product with the unit code, or negative Euclidean distance."""

_FORMAT = "tlsteer.Codebook/1"


@dataclass(eq=False)
class Codebook:
    """``k`` of ``n_codes`` vectors at ``hook_name``; see the module docstring.

    Attributes:
        vectors: The codes, ``[n_codes, d_model]``, finite.
        k: Codes per token, ``1 <= k <= n_codes``.
        hook_name: The TransformerLens hook it reads and writes (``"blocks.6.hook_resid_post"``).
        similarity: One of :data:`SIMILARITIES`.
        layer_norm: ``(weight, bias)`` of a LayerNorm applied to the activation before it is
            compared with the codes (the paper's ``CodebookLayer.ln``), or ``None`` to compare the
            activation as it is.
        eps: The LayerNorm's epsilon.
        model_name: The model it was trained on (``model.cfg.model_name``), or ``""``.
        info: Free-form provenance kept with the file (JSON-serialisable values).

    Example:
        >>> book = Codebook(torch.eye(4) * 2, k=2, hook_name="blocks.0.hook_resid_post")
        >>> book.codes(torch.tensor([[3.0, 1.0, 0.0, 0.5]]))[0].tolist()
        [[0, 1]]
        >>> book.reconstruct(torch.tensor([[3.0, 1.0, 0.0, 0.5]])).tolist()
        [[1.0, 1.0, 0.0, 0.0]]
    """

    vectors: Float[Tensor, "n_codes d_model"]
    k: int
    hook_name: str
    similarity: str = "inner_product"
    layer_norm: tuple[Tensor, Tensor] | None = None
    eps: float = 1e-5
    model_name: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        v = self.vectors
        if not isinstance(v, Tensor) or v.ndim != 2 or not v.is_floating_point() or 0 in v.shape:
            shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise ValueError(f"vectors must be a float tensor [n_codes, d_model], got {shape}")
        if not torch.isfinite(v).all():
            bad = int((~torch.isfinite(v)).any(-1).nonzero()[0])
            raise ValueError(f"code {bad} is not finite (NaN or inf); every code vector must be finite")
        if not is_int(self.k) or not 1 <= self.k <= v.shape[0]:
            raise ValueError(f"k must be an int in 1..{v.shape[0]} (the number of codes), got {self.k!r}")
        if self.similarity not in SIMILARITIES:
            raise ValueError(
                f"similarity must be one of {format_options(SIMILARITIES)}, got {self.similarity!r}"
            )
        if not isinstance(self.hook_name, str) or not self.hook_name:
            raise ValueError(
                f"hook_name must be a hook name like 'blocks.6.hook_resid_post', got {self.hook_name!r}"
            )
        parse_hook_name(self.hook_name)
        if self.layer_norm is not None:
            weight, bias = self.layer_norm
            if tuple(weight.shape) != (v.shape[1],) or tuple(bias.shape) != (v.shape[1],):
                raise ValueError(
                    f"layer_norm must be (weight, bias) of shape ({v.shape[1]},), got "
                    f"{tuple(weight.shape)} and {tuple(bias.shape)}"
                )
        if not (isinstance(self.eps, float) and self.eps > 0 and math.isfinite(self.eps)):
            raise ValueError(f"eps must be a finite float > 0, got {self.eps!r}")
        self.k = int(self.k)

    # -- sizes ------------------------------------------------------------------------------

    @property
    def n_codes(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def width(self) -> int:
        """The number of features: one per code."""
        return self.n_codes

    @property
    def d_model(self) -> int:
        return int(self.vectors.shape[1])

    # -- snapping ---------------------------------------------------------------------------

    def _acts(self, acts: Any) -> Tensor:
        if not isinstance(acts, Tensor) or not acts.is_floating_point():
            raise TypeError(f"activations must be a float tensor [..., {self.d_model}], got {acts!r:.80}")
        if acts.ndim == 0 or acts.shape[-1] != self.d_model:
            raise ValueError(
                f"activations of shape {tuple(acts.shape)} do not fit this codebook's d_model={self.d_model} "
                f"(it reads {self.hook_name})"
            )
        acts = acts.to(device=self.vectors.device, dtype=self.vectors.dtype)
        if not torch.isfinite(acts).all():
            raise ValueError("the activations hold NaN or inf; a codebook snaps finite activations only")
        return acts

    def normalized(self, acts: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """What is compared with the codes: the activation, layer-normalised with ``layer_norm``."""
        acts = self._acts(acts)
        if self.layer_norm is None:
            return acts
        weight, bias = (t.to(device=acts.device, dtype=acts.dtype) for t in self.layer_norm)
        return torch.nn.functional.layer_norm(acts, (self.d_model,), weight, bias, self.eps)

    def scores(self, acts: Float[Tensor, "... d_model"]) -> Float[Tensor, "... n_codes"]:
        """Every code's similarity to each activation (larger is closer)."""
        x = self.normalized(acts)
        codes = self.vectors.detach()
        if self.similarity == "inner_product":
            return (x @ codes.T) / torch.linalg.vector_norm(codes, dim=-1).clamp_min(1e-30)
        flat = x.reshape(-1, self.d_model)
        return -torch.cdist(flat[None], codes[None], p=2)[0].reshape(*x.shape[:-1], self.n_codes)

    def codes(
        self, acts: Float[Tensor, "... d_model"], forced: Any = ()
    ) -> tuple[Int[Tensor, "... k"], Float[Tensor, "... k"]]:
        """The ``k`` chosen codes of each activation, most similar first, and their scores.

        ``forced`` codes (ids) are made to fire: a forced code that is already chosen stays where
        it is; any other takes the slot of the least similar chosen code that is not forced, so
        exactly ``k`` codes fire and the rest of the choice is unchanged. Its score is its own
        similarity.
        """
        scores = self.scores(acts)
        top, ids = scores.topk(self.k, dim=-1)
        wanted = self.check_forced(forced)
        if not wanted:
            return ids, top
        ids = ids.clone()
        for code in wanted:
            here = (ids == code).any(-1)
            taken = torch.zeros_like(ids, dtype=torch.bool)
            for other in wanted:
                taken |= ids == other
            # the last (least similar) slot not holding a forced code
            slot = (self.k - 1) - torch.flip(~taken, dims=[-1]).to(torch.int8).argmax(-1)
            ids = torch.where(
                (~here)[..., None] & (torch.arange(self.k, device=ids.device) == slot[..., None]),
                torch.full_like(ids, code),
                ids,
            )
        return ids, scores.gather(-1, ids)

    def check_forced(self, forced: Any) -> list[int]:
        """Forced code ids as distinct ints in range, at most ``k`` of them (``()``: none)."""
        if isinstance(forced, Tensor) and forced.numel() == 0:
            return []
        if not is_int(forced) and isinstance(forced, Sequence) and len(forced) == 0:
            return []
        ids = check_feature_ids(forced, self.n_codes, "the codebook", "n_codes")
        if len(ids) > self.k:
            raise ValueError(
                f"{len(ids)} forced codes do not fit: a token holds k={self.k} codes; force at most {self.k}"
            )
        return ids

    def reconstruct(
        self, acts: Float[Tensor, "... d_model"], forced: Any = ()
    ) -> Float[Tensor, "... d_model"]:
        """The codebook's output: the mean of each activation's ``k`` chosen codes (with ``forced``)."""
        ids, _ = self.codes(acts, forced)
        return torch.nn.functional.embedding(ids, self.vectors.detach()).sum(-2) / self.k

    # -- the feature-dictionary protocol ----------------------------------------------------

    def encode(self, acts: Float[Tensor, "... d_model"]) -> Float[Tensor, "... width"]:
        """1.0 at each activation's ``k`` chosen codes, 0.0 elsewhere."""
        ids, _ = self.codes(acts)
        out = torch.zeros(*ids.shape[:-1], self.n_codes, dtype=self.vectors.dtype, device=ids.device)
        return out.scatter_(-1, ids, 1.0)

    def decode(self, features: Float[Tensor, "... width"]) -> Float[Tensor, "... d_model"]:
        """``features @ vectors / k``: the reconstruction of :meth:`encode`'s output."""
        if not isinstance(features, Tensor) or features.shape[-1:] != (self.n_codes,):
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(f"features must be [..., {self.n_codes}] (one per code), got {shape}")
        return (
            features.to(device=self.vectors.device, dtype=self.vectors.dtype) @ self.vectors.detach() / self.k
        )

    def decoder_rows(self, ids: Int[Tensor, " n"]) -> Float[Tensor, "n d_model"]:
        """The codes ``ids`` as they enter the output: ``vectors[ids] / k``."""
        return self.vectors.detach()[ids.to(device=self.vectors.device, dtype=torch.long)] / self.k

    def decode_change(
        self, df: Float[Tensor, "... n"], ids: Int[Tensor, " n"]
    ) -> Float[Tensor, "... d_model"]:
        """``decode(f + df) - decode(f)``: ``df @ decoder_rows(ids)`` (the decoder is linear)."""
        rows = self.decoder_rows(ids)
        return df.to(device=rows.device, dtype=rows.dtype) @ rows

    # -- files ------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """One safetensors file: the codes (and LayerNorm), the settings and ``info`` in its header."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {"vectors": self.vectors.detach().float().cpu().contiguous()}
        if self.layer_norm is not None:
            tensors["ln_weight"] = self.layer_norm[0].detach().float().cpu().contiguous()
            tensors["ln_bias"] = self.layer_norm[1].detach().float().cpu().contiguous()
        settings = {
            "format": _FORMAT,
            "k": self.k,
            "hook_name": self.hook_name,
            "similarity": self.similarity,
            "eps": self.eps,
            "model_name": self.model_name,
            "info": self.info,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata={"codebook": json.dumps(settings)})
        return path


def load_codebook(path: str | Path, device: str | torch.device = "cpu") -> Codebook:
    """A codebook written by :meth:`Codebook.save`.

    Example:
        >>> book = load_codebook("codebook.safetensors")  # doctest: +SKIP
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no codebook file at {str(path)!r}")
    try:
        with safe_open(str(path), framework="pt", device=str(torch.device(device))) as handle:
            header = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except Exception as err:  # safetensors raises its own error types for bad files
        raise ValueError(f"{str(path)!r} is not a readable safetensors file: {err}") from err
    if "codebook" not in header or "vectors" not in tensors:
        raise ValueError(
            f"{str(path)!r} is a safetensors file but not a tlsteer codebook (header: {sorted(header)})"
        )
    settings = json.loads(header["codebook"])
    if settings.get("format") != _FORMAT:
        raise ValueError(
            f"{str(path)!r} has codebook format {settings.get('format')!r}, expected {_FORMAT!r}"
        )
    ln = (tensors["ln_weight"], tensors["ln_bias"]) if "ln_weight" in tensors else None
    return Codebook(
        tensors["vectors"],
        k=int(settings["k"]),
        hook_name=str(settings["hook_name"]),
        similarity=str(settings["similarity"]),
        layer_norm=ln,
        eps=float(settings["eps"]),
        model_name=str(settings.get("model_name", "")),
        info=dict(settings.get("info", {})),
    )
