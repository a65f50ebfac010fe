"""Codebook features (Tamkin, Taufeeque and Goodman 2023): the study's third arm.

A :class:`Codebook` describes each token at one hook by the ``k`` most similar of ``n_codes``
vectors; it is a :class:`~tlsteer.dictionary.FeatureDictionary` whose features are its codes, so
every feature-level function of :mod:`tlsteer.sae` works on codes unchanged. Steering by codes:
:func:`bottleneck_steering` (the paper's way, codes forced on) and :func:`code_vector` (codes
added, the activation kept). Training: :func:`kmeans`, :func:`train_codebook`. The codebooks
shipped for the embedded model: :func:`load_embedded_codebook`.
"""

from tlsteer.codebook.codebook import SIMILARITIES, Codebook, load_codebook
from tlsteer.codebook.embedded import (
    embedded_codebook_layers,
    embedded_codebook_provenance,
    load_embedded_codebook,
)
from tlsteer.codebook.steering import bottleneck_steering, code_vector
from tlsteer.codebook.training import TrainingLog, kmeans, next_token_step, train_codebook

__all__ = [
    "SIMILARITIES",
    "Codebook",
    "TrainingLog",
    "bottleneck_steering",
    "code_vector",
    "embedded_codebook_layers",
    "embedded_codebook_provenance",
    "kmeans",
    "load_codebook",
    "load_embedded_codebook",
    "next_token_step",
    "train_codebook",
]
