"""The FeatureVector value type: a direction in a feature dictionary's space, tied to that dictionary.

A :class:`FeatureVector` owns a finite ``[width]`` float32 copy of its values, names the
dictionary it belongs to (an SAE or any :class:`~tlsteer.dictionary.FeatureDictionary`: its hook
name, ``width`` and the :func:`~tlsteer.dictionary.fingerprint` of its decoder rows) and how it
was made. Its selection methods return new vectors with the other features set to 0 (a vector
with no nonzero feature, or a selection that would leave none, is refused);
:meth:`~FeatureVector.to_steering_vector` decodes it into a core :class:`~tlsteer.SteeringVector`
through the dictionary's one decoding path (``values @ decoder rows`` for a linear decoder), for
that dictionary only.
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
from tlsteer.dictionary import FeatureDictionary, check_feature_ids, fingerprint
from tlsteer.sae.adapter import as_feature_dictionary, logit_lens
from tlsteer.vector import SteeringVector, VectorMetadata

__all__ = ["FeatureVector"]


def _per_feature(values: Any, width: int, name: str) -> Tensor:
    if not isinstance(values, Tensor) or values.ndim != 1 or not values.is_floating_point():
        raise TypeError(f"{name} must be a 1-D float tensor with one entry per feature, got {values!r:.80}")
    if values.shape[0] != width:
        raise ValueError(f"{name} has {values.shape[0]} entries but the vector has width={width}")
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
    """Values over a dictionary's features, with the dictionary's identity and the vector's provenance.

    Make one from a dictionary with :meth:`from_dictionary` (or by a formula:
    :func:`~tlsteer.sae.feature_vector`).

    Example:
        >>> fv = FeatureVector(torch.tensor([0.0, 2.0, -3.0, 0.5]), "blocks.1.hook_resid_post", "abc")
        >>> fv.features
        [1, 2, 3]
        >>> fv.top_k(2).features, fv.sign("positive").features
        ([1, 2], [1, 3])
    """

    values: Any
    """``[width]`` float32 values (a copy is kept)."""
    hook_name: str
    fingerprint: str
    """:func:`~tlsteer.dictionary.fingerprint` of the dictionary's decoder rows (for an SAE,
    :func:`~tlsteer.sae.adapter.sae_fingerprint` of its ``W_dec``)."""
    formula: str = ""
    n_examples: int = 0
    note: str = ""
    model_name: str = ""

    def __post_init__(self) -> None:
        values = self.values
        if not isinstance(values, Tensor) or values.ndim != 1 or not values.is_floating_point():
            raise TypeError(f"values must be a 1-D float tensor [width], got {values!r:.80}")
        bad = (~torch.isfinite(values)).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"values must be finite; feature {bad[0]} is {float(values[bad[0]])}")
        for name in ("hook_name", "fingerprint", "formula", "note", "model_name"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a string, got {getattr(self, name)!r}")
        if not self.hook_name or not self.fingerprint:
            raise ValueError("a FeatureVector needs its dictionary's hook_name and fingerprint")
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
    def from_dictionary(
        cls, dictionary: object, values: Any, hook_name: str | None = None, **provenance: Any
    ) -> FeatureVector:
        """A vector over the features of ``dictionary`` (an SAE or any feature dictionary), with
        its identity filled in; ``hook_name`` for an SAE whose metadata does not name one.

        Example:
            >>> fv = FeatureVector.from_dictionary(sae, torch.ones(sae.cfg.d_sae))  # doctest: +SKIP
        """
        found = as_feature_dictionary(dictionary, hook_name)
        if isinstance(values, Tensor) and values.ndim == 1 and values.shape[0] != found.width:
            raise ValueError(
                f"values have {values.shape[0]} entries but the dictionary has width={found.width}"
            )
        return cls(values, found.hook_name, fingerprint(found), **provenance)

    # -- access ---------------------------------------------------------------------------
    @property
    def width(self) -> int:
        """The number of features of the dictionary (the length of ``values``)."""
        return self.values.shape[0]

    @property
    def d_sae(self) -> int:
        """:attr:`width` under the SAE's name for it."""
        return self.width

    @property
    def features(self) -> list[int]:
        """The ids of the nonzero features, ascending."""
        return self.values.nonzero().flatten().tolist()

    def __repr__(self) -> str:
        return (
            f"FeatureVector(width={self.width}, nonzero={len(self.features)}, hook={self.hook_name!r}, "
            f"formula={self.formula!r}, n_examples={self.n_examples})"
        )

    def __eq__(self, other: object) -> bool:
        """Exact equality of values, dictionary identity and provenance."""
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
        keep = torch.zeros(self.width, dtype=torch.bool)
        keep[self.values.abs().topk(min(int(k), self.width)).indices] = True
        return self._keep(keep & (self.values != 0), f"top_k({k})")

    def sign(self, which: str) -> FeatureVector:
        """Only the ``"positive"`` or only the ``"negative"`` features."""
        if which not in ("positive", "negative"):
            raise ValueError(f"sign must be 'positive' or 'negative', got {which!r}")
        return self._keep(self.values > 0 if which == "positive" else self.values < 0, f"sign({which})")

    def max_density(self, ceiling: Any, densities: Any) -> FeatureVector:
        """Drop features that fire on more than ``ceiling`` of tokens (``densities``: ``[width]``)."""
        ceiling = _threshold(ceiling, "ceiling (a share of tokens)", (0.0, 1.0))
        dens = _per_feature(densities, self.width, "densities")
        return self._keep(dens <= ceiling, f"max_density({ceiling:g})")

    def min_frequency(self, threshold: Any, frequencies: Any) -> FeatureVector:
        """Keep features active in at least ``threshold`` of the examples (``frequencies``: ``[width]``)."""
        threshold = _threshold(threshold, "threshold (a share of examples)", (0.0, 1.0))
        freq = _per_feature(frequencies, self.width, "frequencies")
        return self._keep(freq >= threshold, f"min_frequency({threshold:g})")

    def _drop(self, features: Any, what: str) -> FeatureVector:
        keep = torch.ones(self.width, dtype=torch.bool)
        empty = isinstance(features, (list, tuple, Tensor)) and len(features) == 0
        ids = [] if empty else check_feature_ids(features, self.width, owner="the vector")
        keep[ids] = False
        return self._keep(keep, f"{what}({len(ids)} features)")

    def drop(self, features: Any) -> FeatureVector:
        """These features (an id or a list of ids) set to 0."""
        return self._drop(features, "drop")

    def drop_first_token_features(self, ids: Any) -> FeatureVector:
        """Drop the features that fire on the first token (attention-sink features).

        Find them with :func:`~tlsteer.sae.feature_stats` (``first_token_features()``), or with
        ``encode(model, dictionary, texts, read=Read.at(0))``: the ids where any row is nonzero.
        """
        return self._drop(ids, "drop_first_token_features")

    def by_output_score(self, scores: Any, threshold: Any = None, k: Any = None) -> FeatureVector:
        """Keep features whose output score (``[width]``) is at least ``threshold``, or the ``k`` best.

        The scores measure how much each feature's decoder row moves the output the intended way
        (e.g. Arad et al. 2025's output score); among the nonzero features.
        """
        score = _per_feature(scores, self.width, "scores")
        if (threshold is None) == (k is None):
            raise ValueError("give exactly one of threshold= or k=")
        nonzero = self.values != 0
        if threshold is not None:
            threshold = _threshold(threshold, "threshold")
            return self._keep(nonzero & (score >= threshold), f"by_output_score(>={threshold:g})")
        if not is_int(k) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        ranked = torch.where(nonzero, score, float("-inf"))
        keep = torch.zeros(self.width, dtype=torch.bool)
        keep[ranked.topk(min(int(k), self.width)).indices] = True
        return self._keep(keep & nonzero, f"by_output_score(k={k})")

    # -- the dictionary -------------------------------------------------------------------
    def check_dictionary(self, dictionary: object) -> FeatureDictionary:
        """``dictionary`` as a :class:`~tlsteer.dictionary.FeatureDictionary` once it is the one this
        vector was made with (its width, decoder fingerprint and hook), else an error saying which differs.

        An SAE whose metadata names no hook is taken at the vector's hook.
        """
        found = as_feature_dictionary(dictionary, self.hook_name)
        if found.width != self.width:
            raise ValueError(f"the vector has width={self.width} but the dictionary has width={found.width}")
        found_print = fingerprint(found)
        if found_print != self.fingerprint:
            raise ValueError(
                "this FeatureVector belongs to another dictionary (decoder fingerprint "
                f"{self.fingerprint!r}, this dictionary's is {found_print!r}); features of one "
                "dictionary mean nothing in another"
            )
        return found

    def to_steering_vector(self, dictionary: object) -> SteeringVector:
        """The decoded direction at the dictionary's hook, as a core SteeringVector.

        The direction is ``dictionary.decode_change(values, all ids)``, the one decoding path
        (:meth:`~tlsteer.dictionary.FeatureDictionary.decode_change`): ``values @ decoder rows``
        for a linear decoder, ``values @ W_dec`` for a plain SAE.

        Example:
            >>> fv.to_steering_vector(sae).apply(model, 4.0)  # doctest: +SKIP
        """
        found = self.check_dictionary(dictionary)
        with torch.no_grad():
            direction = found.decode_change(self.values, torch.arange(self.width)).float().cpu()
        meta = VectorMetadata(
            model_name=self.model_name,
            aggregator=f"sae:{self.formula}" if self.formula else "sae",
            n_pairs=int(self.n_examples),
            note=f"FeatureVector at {self.hook_name} ({len(self.features)} features) {self.note}".strip(),
        )
        return SteeringVector({self.hook_name: direction}, meta)

    def table(
        self,
        model: HookedTransformer,
        dictionary: object,
        k: Any = 10,
        densities: Any = None,
        n_tokens: Any = 5,
    ) -> pd.DataFrame:
        """The ``k`` largest features: feature, value, density (when given), top_tokens.

        ``top_tokens`` are the tokens each decoder row promotes most (``decoder_rows(f) @ model.W_U``).
        """
        for name, value in (("k", k), ("n_tokens", n_tokens)):
            if not is_int(value) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        found = self.check_dictionary(dictionary)
        dens = None if densities is None else _per_feature(densities, self.width, "densities")
        order = [
            f for f in self.values.abs().argsort(descending=True, stable=True).tolist() if self.values[f] != 0
        ][:k]
        decoder = found.decoder_rows(torch.tensor(order, dtype=torch.long))
        rows = []
        for f, row_direction in zip(order, decoder, strict=True):
            promoted, _ = logit_lens(model, row_direction, n_tokens)
            row: dict[str, Any] = {"feature": f, "value": float(self.values[f])}
            if dens is not None:
                row["density"] = float(dens[f])
            row["top_tokens"] = " ".join(repr(t) for t, _ in promoted)
            rows.append(row)
        columns = ["feature", "value"] + (["density"] if dens is not None else []) + ["top_tokens"]
        return pd.DataFrame(rows, columns=columns)

    def as_tensor(self) -> Float[Tensor, " width"]:
        """A copy of the values."""
        return self.values.clone()
