"""Class profiles in a feature dictionary's space: :func:`class_profile` and its feature-space directions.

:func:`class_profile` reads every example of a :class:`~tlsteer.ClassDataset` once (one batched
stream; each row is kept as its residual and its encoding by the dictionary: an SAE or any
:class:`~tlsteer.dictionary.FeatureDictionary`) and returns an :class:`SAEClassProfile`: the core
:class:`~tlsteer.ClassProfile` in both spaces, whose feature-space directions are decoded through
the dictionary's one decoding path (:meth:`FeatureVector.to_steering_vector
<tlsteer.sae.FeatureVector.to_steering_vector>`) into core ``SteeringVector``\\ s, and which
builds the feature-level vectors of the SAE module from any two classes or a class against the
rest (formula ``class_means``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from tlsteer._types import check_batch_size
from tlsteer.classes import ClassDataset, class_reads
from tlsteer.profile import ClassProfile, check_n_bootstrap
from tlsteer.read import Read
from tlsteer.sae.adapter import as_feature_dictionary
from tlsteer.sae.features import FeatureVector
from tlsteer.vector import SteeringVector

__all__ = ["SAEClassProfile", "class_profile"]


@dataclass(frozen=True, eq=False)
class SAEClassProfile(ClassProfile):
    """A :class:`~tlsteer.ClassProfile` in raw and feature space, with the dictionary that made the features.

    ``sae`` is that SAE or :class:`~tlsteer.dictionary.FeatureDictionary` (the field keeps its name
    from when only SAEs were profiled); :func:`class_profile` keeps it as a checked dictionary.
    """

    sae: Any = field(default=None, repr=False)

    def feature_vector(self, a: str, b: str | None = None) -> FeatureVector:
        """Feature means of class ``a`` minus those of ``b`` (or of all other examples pooled)."""
        rows = self._space("feature")
        a = self.check_class(a)
        if b is None:
            other = torch.cat([rows[c] for c in self.classes if c != a])
            label = "the rest"
        else:
            if self.check_class(b) == a:
                raise ValueError(f"a and b must differ, got {a!r} twice")
            other, label = rows[b], b
        values = rows[a].mean(0) - other.mean(0)
        return FeatureVector.from_dictionary(
            self.sae,
            values,
            self.hook_name,
            formula="class_means",
            n_examples=int(rows[a].shape[0] + other.shape[0]),
            note=f"{self.dataset_name}: {a} vs {label}",
            model_name=self.model_name,
        )

    def _decoded(self, values: Tensor, note: str) -> SteeringVector:
        fv = FeatureVector.from_dictionary(self.sae, values, self.hook_name, formula="class_means", note=note)
        vec = fv.to_steering_vector(self.sae)
        return self._vector(vec[self.hook_name], note)

    def direction(self, a: str, b: str, space: str = "raw") -> SteeringVector:
        """From ``a`` to ``b``: the raw mean difference, or the feature mean difference, decoded."""
        if space != "feature":
            return super().direction(a, b, space)
        rows = self._space("feature")
        values = rows[self.check_class(b)].mean(0) - rows[self.check_class(a)].mean(0)
        return self._decoded(values, f"{self.dataset_name}: {a} -> {b} (features decoded)")

    def mean_centred(self, name: str, space: str = "raw") -> SteeringVector:
        """Class mean minus the mean of the class means; in feature space, decoded by the dictionary."""
        if space != "feature":
            return super().mean_centred(name, space)
        means = self.means("feature")
        values = means[self.classes.index(self.check_class(name))] - means.mean(0)
        return self._decoded(values, f"{self.dataset_name}: {name} mean-centred (features decoded)")


def class_profile(
    model: HookedTransformer,
    dictionary: object,
    dataset: ClassDataset,
    *,
    read: Read | None = None,
    batch_size: int = 8,
    n_bootstrap: int = 50,
    seed: int = 0,
    hook_name: str | None = None,
) -> SAEClassProfile:
    """Profile the classes of ``dataset`` in raw and feature space at the dictionary's hook.

    Args:
        model: A ``HookedTransformer`` with a tokenizer.
        dictionary: A sae-lens SAE or a :class:`~tlsteer.dictionary.FeatureDictionary` that fits
            the model.
        dataset: The classes.
        read: Where each example is read (default :meth:`Read.reply <tlsteer.Read.reply>`: the
            mean over the reply tokens).
        batch_size: Examples per forward pass.
        n_bootstrap: Resamples for the stability of distinctive and shared features; 0 builds a
            profile without stability (enough for directions and feature vectors), whose
            ``distinctive`` and ``shared`` then need ``stable_only=False``.
        seed: Seeds the resamples.
        hook_name: Where an SAE reads, if its metadata does not say.

    Example:
        >>> profile = class_profile(model, sae, load_class_dataset("speaking_styles"))  # doctest: +SKIP
        >>> profile.distinctive("pirate", k=10)  # doctest: +SKIP
        >>> profile.direction("formal", "pirate", space="feature").apply(model, 4.0)  # doctest: +SKIP
    """
    found = as_feature_dictionary(dictionary, hook_name, model)
    hook, d_in, width = found.hook_name, found.d_model, found.width
    check_n_bootstrap(n_bootstrap)
    batch_size = check_batch_size(batch_size)

    def both(rows: Tensor) -> Tensor:
        encoded = found.encode(rows).float().to(rows.device)
        return torch.cat([rows.float(), encoded], dim=-1)

    joint = class_reads(
        model, dataset, hook, read=read, transform=both, d_out=d_in + width, batch_size=batch_size
    )
    reps = {
        "raw": {c: t[:, :d_in] for c, t in joint.items()},
        "feature": {c: t[:, d_in:] for c, t in joint.items()},
    }
    return SAEClassProfile(
        dataset.name,
        dataset.classes,
        hook,
        reps,
        dataset.ordinal,
        model.cfg.model_name or "",
        int(n_bootstrap),
        seed,
        sae=found,
    )
