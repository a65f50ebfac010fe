"""The FeatureVector value type: a direction in an SAE's feature space, tied to that SAE.

A :class:`FeatureVector` owns a finite ``[d_sae]`` float32 copy of its values, names the SAE it
belongs to (hook name, ``d_sae`` and a fingerprint of ``W_dec``) and how it was made. Its selection
methods return new vectors with the other features set to 0 (a vector with no nonzero feature,
or a selection that would leave none, is refused); :meth:`~FeatureVector.to_steering_vector`
decodes it into a core :class:`~tlsteer.SteeringVector` (``values @ W_dec``) for that SAE only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import numbers
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from tlsteer._types import is_int
from tlsteer.sae.adapter import (
    SAELike,
    check_feature_ids,
    decoder_change,
    logit_lens,
    sae_dims,
    sae_fingerprint,
    sae_hook_name,
)
from tlsteer.vector import SteeringVector, VectorMetadata

__all__ = ["FeatureVector"]


def _per_feature(values: Any, d_sae: int, name: str) -> Tensor:
    if not isinstance(values, Tensor) or values.ndim != 1 or not values.is_floating_point():
        raise TypeError(f"{name} must be a 1-D float tensor with one entry per feature, got {values!r:.80}")
    if values.shape[0] != d_sae:
        raise ValueError(f"{name} has {values.shape[0]} entries but the vector has d_sae={d_sae}")
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"{name} has non-finite entries")
    return values.detach().float().cpu()


def _threshold(value: Any, name: str, bounds: tuple[float, float] | None = None) -> float:
    """``value`` as a finite float within ``bounds`` (inclusive, optional), else an error naming both."""
    valid = "a finite number" if bounds is None else f"a finite number in [{bounds[0]:g}, {bounds[1]:g}]"
    if isinstance(value, Tensor) and value.ndim == 0 and value.dtype != torch.bool and not value.is_complex():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {valid}, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or (bounds is not None and not bounds[0] <= number <= bounds[1]):
        raise ValueError(f"{name} must be {valid}, got {value!r}")
    return number


@dataclass(frozen=True, eq=False)
class FeatureVector:
    """Values over an SAE's features, with the SAE's identity and the vector's provenance.

    Example:
        >>> fv = FeatureVector(torch.tensor([0.0, 2.0, -3.0, 0.5]), "blocks.1.hook_resid_post", "abc")
        >>> fv.features
        [1, 2, 3]
        >>> fv.top_k(2).features, fv.sign("positive").features
        ([1, 2], [1, 3])
    """

    values: Any
    """``[d_sae]`` float32 values (a copy is kept)."""
    hook_name: str
    fingerprint: str
    """:func:`~tlsteer.sae.adapter.sae_fingerprint` of the SAE's ``W_dec``."""
    formula: str = ""
    n_examples: int = 0
    note: str = ""
    model_name: str = ""

    def __post_init__(self) -> None:
        values = self.values
        if not isinstance(values, Tensor) or values.ndim != 1 or not values.is_floating_point():
            raise TypeError(f"values must be a 1-D float tensor [d_sae], got {values!r:.80}")
        bad = (~torch.isfinite(values)).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"values must be finite; feature {bad[0]} is {float(values[bad[0]])}")
        for name in ("hook_name", "fingerprint", "formula", "note", "model_name"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a string, got {getattr(self, name)!r}")
        if not self.hook_name or not self.fingerprint:
            raise ValueError("a FeatureVector needs the SAE's hook_name and fingerprint")
        if not isinstance(self.n_examples, numbers.Integral) or self.n_examples < 0:
            raise ValueError(f"n_examples must be an int >= 0, got {self.n_examples!r}")
        if not bool(values.any()):
            made = f" (formula={self.formula!r}, note={self.note!r})" if self.formula or self.note else ""
            raise ValueError(
                f"a FeatureVector needs at least one nonzero feature; all {values.shape[0]} values are 0"
                f"{made}: steering with it would change nothing"
            )
        object.__setattr__(self, "values", values.detach().float().cpu().clone())

    @classmethod
    def from_sae(
        cls, sae: SAELike, values: Any, hook_name: str | None = None, **provenance: Any
    ) -> FeatureVector:
        """A vector over ``sae``'s features, with the SAE's identity filled in."""
        _, d_sae = sae_dims(sae)
        if isinstance(values, Tensor) and values.ndim == 1 and values.shape[0] != d_sae:
            raise ValueError(f"values have {values.shape[0]} entries but the SAE has d_sae={d_sae}")
        return cls(values, sae_hook_name(sae, hook_name), sae_fingerprint(sae), **provenance)

    # -- access ---------------------------------------------------------------------------
    @property
    def d_sae(self) -> int:
        return self.values.shape[0]

    @property
    def features(self) -> list[int]:
        """The ids of the nonzero features, ascending."""
        return self.values.nonzero().flatten().tolist()

    def __repr__(self) -> str:
        return (
            f"FeatureVector(d_sae={self.d_sae}, nonzero={len(self.features)}, hook={self.hook_name!r}, "
            f"formula={self.formula!r}, n_examples={self.n_examples})"
        )

    def __eq__(self, other: object) -> bool:
        """Exact equality of values, SAE identity and provenance."""
        if not isinstance(other, FeatureVector):
            return NotImplemented
        fields = [f.name for f in dataclasses.fields(self) if f.name != "values"]
        return all(getattr(self, f) == getattr(other, f) for f in fields) and torch.equal(
            self.values, other.values
        )

    def __hash__(self) -> int:
        digest = hashlib.sha256(repr([getattr(self, f.name) for f in dataclasses.fields(self)][1:]).encode())
        digest.update(self.values.numpy().tobytes())
        return int.from_bytes(digest.digest()[:8], "little")

    # -- selection ------------------------------------------------------------------------
    def _keep(self, keep: Tensor, what: str) -> FeatureVector:
        before = int((self.values != 0).sum())
        if not bool((keep & (self.values != 0)).any()):
            raise ValueError(
                f"{what} removed all {before} nonzero features of the vector, which would steer with "
                "nothing; loosen that selection"
            )
        note = f"{self.note}; {what}" if self.note else what
        return dataclasses.replace(self, values=torch.where(keep, self.values, 0.0), note=note)

    def top_k(self, k: int) -> FeatureVector:
        """Only the ``k`` features of largest magnitude (fewer if fewer are nonzero)."""
        if not is_int(k) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        keep = torch.zeros(self.d_sae, dtype=torch.bool)
        keep[self.values.abs().topk(min(int(k), self.d_sae)).indices] = True
        return self._keep(keep & (self.values != 0), f"top_k({k})")

    def sign(self, which: str) -> FeatureVector:
        """Only the ``"positive"`` or only the ``"negative"`` features."""
        if which not in ("positive", "negative"):
            raise ValueError(f"sign must be 'positive' or 'negative', got {which!r}")
        return self._keep(self.values > 0 if which == "positive" else self.values < 0, f"sign({which})")

    def max_density(self, ceiling: Any, densities: Any) -> FeatureVector:
        """Drop features that fire on more than ``ceiling`` of tokens (``densities``: ``[d_sae]``)."""
        ceiling = _threshold(ceiling, "ceiling (a share of tokens)", (0.0, 1.0))
        dens = _per_feature(densities, self.d_sae, "densities")
        return self._keep(dens <= ceiling, f"max_density({ceiling:g})")

    def min_frequency(self, threshold: Any, frequencies: Any) -> FeatureVector:
        """Keep features active in at least ``threshold`` of the examples (``frequencies``: ``[d_sae]``)."""
        threshold = _threshold(threshold, "threshold (a share of examples)", (0.0, 1.0))
        freq = _per_feature(frequencies, self.d_sae, "frequencies")
        return self._keep(freq >= threshold, f"min_frequency({threshold:g})")

    def _drop(self, features: Any, what: str) -> FeatureVector:
        keep = torch.ones(self.d_sae, dtype=torch.bool)
        empty = isinstance(features, (list, tuple, Tensor)) and len(features) == 0
        ids = [] if empty else check_feature_ids(features, self.d_sae)
        keep[ids] = False
        return self._keep(keep, f"{what}({len(ids)} features)")

    def drop(self, features: Any) -> FeatureVector:
        """These features (an id or a list of ids) set to 0."""
        return self._drop(features, "drop")

    def drop_first_token_features(self, ids: Any) -> FeatureVector:
        """Drop the features that fire on the first token (attention-sink features).

        Find them with ``encode(model, sae, texts, read=Read.at(0))``: the ids where any row is nonzero.
        """
        return self._drop(ids, "drop_first_token_features")

    def by_output_score(self, scores: Any, threshold: Any = None, k: Any = None) -> FeatureVector:
        """Keep features whose output score (``[d_sae]``) is at least ``threshold``, or the ``k`` best.

        The scores measure how much each feature's decoder row moves the output the intended way
        (e.g. Arad et al. 2025's output score); among the nonzero features.
        """
        score = _per_feature(scores, self.d_sae, "scores")
        if (threshold is None) == (k is None):
            raise ValueError("give exactly one of threshold= or k=")
        nonzero = self.values != 0
        if threshold is not None:
            threshold = _threshold(threshold, "threshold")
            return self._keep(nonzero & (score >= threshold), f"by_output_score(>={threshold:g})")
        if not is_int(k) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        ranked = torch.where(nonzero, score, float("-inf"))
        keep = torch.zeros(self.d_sae, dtype=torch.bool)
        keep[ranked.topk(min(int(k), self.d_sae)).indices] = True
        return self._keep(keep & nonzero, f"by_output_score(k={k})")

    # -- the SAE --------------------------------------------------------------------------
    def check_sae(self, sae: SAELike) -> None:
        """Refuse an SAE other than the one this vector was made with."""
        _, d_sae = sae_dims(sae)
        if d_sae != self.d_sae:
            raise ValueError(f"the vector has d_sae={self.d_sae} but the SAE has d_sae={d_sae}")
        found = sae_fingerprint(sae)
        if found != self.fingerprint:
            raise ValueError(
                f"this FeatureVector belongs to another SAE (W_dec fingerprint {self.fingerprint!r}, this "
                f"SAE's is {found!r}); features of one SAE mean nothing in another"
            )
        sae_hook_name(sae, self.hook_name)  # refuses an SAE whose metadata names another hook

    def to_steering_vector(self, sae: SAELike) -> SteeringVector:
        """The decoded direction ``values @ W_dec`` at the SAE's hook, as a core SteeringVector.

        Example:
            >>> fv.to_steering_vector(sae).apply(model, 4.0)  # doctest: +SKIP
        """
        self.check_sae(sae)
        with torch.no_grad():
            direction = decoder_change(sae)(self.values.to(sae.W_dec.device)).float().cpu()
        meta = VectorMetadata(
            model_name=self.model_name,
            aggregator=f"sae:{self.formula}" if self.formula else "sae",
            n_pairs=int(self.n_examples),
            note=f"FeatureVector at {self.hook_name} ({len(self.features)} features) {self.note}".strip(),
        )
        return SteeringVector({self.hook_name: direction}, meta)

    def table(
        self, model: HookedTransformer, sae: SAELike, k: Any = 10, densities: Any = None, n_tokens: Any = 5
    ) -> pd.DataFrame:
        """The ``k`` largest features: feature, value, density (when given), top_tokens.

        ``top_tokens`` are the tokens each decoder row promotes most (``W_dec[f] @ model.W_U``).
        """
        for name, value in (("k", k), ("n_tokens", n_tokens)):
            if not is_int(value) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.check_sae(sae)
        dens = None if densities is None else _per_feature(densities, self.d_sae, "densities")
        order = [
            f for f in self.values.abs().argsort(descending=True, stable=True).tolist() if self.values[f] != 0
        ]
        rows = []
        for f in order[:k]:
            promoted, _ = logit_lens(model, sae.W_dec[f], n_tokens)
            row: dict[str, Any] = {"feature": f, "value": float(self.values[f])}
            if dens is not None:
                row["density"] = float(dens[f])
            row["top_tokens"] = " ".join(repr(t) for t, _ in promoted)
            rows.append(row)
        columns = ["feature", "value"] + (["density"] if dens is not None else []) + ["top_tokens"]
        return pd.DataFrame(rows, columns=columns)

    def as_tensor(self) -> Float[Tensor, " d_sae"]:
        """A copy of the values."""
        return self.values.clone()
