"""tlsteer: contrastive activation addition (CAA) steering vectors for TransformerLens models.

Build vectors from contrast pairs with ``run_with_cache``, steer with ``model.hooks`` contexts at
absolute token positions that stay right under KV-cached generation, and save vectors as
safetensors. Importing tlsteer has no side effects.
"""

from tlsteer.aggregators import (
    Aggregator,
    aggregate_activations,
    class_mean_aggregator,
    logistic_aggregator,
    mean_aggregator,
    pca_aggregator,
)
from tlsteer.data import (
    BUILTIN_DATASETS,
    ContrastPair,
    ContrastSet,
    chat_prompt,
    load_builtin_dataset,
    load_caa_dataset,
    tokenize,
)
from tlsteer.extract import ContrastActivations, extract_activations, read_activations
from tlsteer.hooks import (
    Operator,
    SteeringHandle,
    ablation_operator,
    ablation_then_addition_operator,
    addition_operator,
    apply_steering,
    patch_steering,
    remove_all_steering,
    steering_hooks,
)
from tlsteer.models import load_model
from tlsteer.train import train_steering_vector
from tlsteer.vector import SteeringVector, VectorMetadata

__version__ = "0.1.0"

__all__ = [
    "BUILTIN_DATASETS",
    "Aggregator",
    "ContrastActivations",
    "ContrastPair",
    "ContrastSet",
    "Operator",
    "SteeringHandle",
    "SteeringVector",
    "VectorMetadata",
    "__version__",
    "ablation_operator",
    "ablation_then_addition_operator",
    "addition_operator",
    "aggregate_activations",
    "apply_steering",
    "chat_prompt",
    "class_mean_aggregator",
    "extract_activations",
    "load_builtin_dataset",
    "load_caa_dataset",
    "load_model",
    "logistic_aggregator",
    "mean_aggregator",
    "patch_steering",
    "pca_aggregator",
    "read_activations",
    "remove_all_steering",
    "steering_hooks",
    "tokenize",
    "train_steering_vector",
]
