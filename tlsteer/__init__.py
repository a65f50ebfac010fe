"""tlsteer: contrastive activation addition (CAA) steering vectors for TransformerLens models.

Build vectors from contrast pairs with ``run_with_cache``, steer with ``model.hooks`` contexts at
absolute token positions that stay right under KV-cached generation, generate steered text in
batches, and save vectors as safetensors. Evaluation (A/B scores, sweeps, side effects, judges,
plots) lives in :mod:`tlsteer.eval`, SAE features in ``tlsteer.sae`` (the ``sae`` extra). Importing
tlsteer has no side effects.
"""

from tlsteer._version import __version__
from tlsteer.aggregators import (
    class_mean_aggregator,
    logistic_aggregator,
    mean_aggregator,
    pca_aggregator,
)
from tlsteer.caa import train_steering_vector
from tlsteer.classes import ClassDataset, class_reads, load_class_dataset
from tlsteer.contrast import ContrastActivations
from tlsteer.data import (
    ContrastPair,
    ContrastSet,
    PlainFormat,
    chat_prompt,
    load_builtin_dataset,
    load_caa_dataset,
    load_neutral_text,
    use_plain_format,
)
from tlsteer.decode import generate, generate_tokens
from tlsteer.extract import extract_activations, read_activations
from tlsteer.hooks import remove_all_steering
from tlsteer.invariants import check_invariants
from tlsteer.models import load_model
from tlsteer.operators import ablation_operator, addition_operator
from tlsteer.positions import Positions
from tlsteer.profile import ClassProfile, raw_class_profile
from tlsteer.read import Read
from tlsteer.steering import Steering
from tlsteer.tokens import tokenize
from tlsteer.vector import SteeringVector

__all__ = [
    "ClassDataset",
    "ClassProfile",
    "ContrastActivations",
    "ContrastPair",
    "ContrastSet",
    "PlainFormat",
    "Positions",
    "Read",
    "Steering",
    "SteeringVector",
    "__version__",
    "ablation_operator",
    "addition_operator",
    "chat_prompt",
    "check_invariants",
    "class_mean_aggregator",
    "class_reads",
    "extract_activations",
    "generate",
    "generate_tokens",
    "load_builtin_dataset",
    "load_caa_dataset",
    "load_class_dataset",
    "load_model",
    "load_neutral_text",
    "logistic_aggregator",
    "mean_aggregator",
    "pca_aggregator",
    "raw_class_profile",
    "read_activations",
    "remove_all_steering",
    "tokenize",
    "use_plain_format",
    "train_steering_vector",
]
