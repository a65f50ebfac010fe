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
    CAA_BEHAVIOURS,
    ContrastPair,
    ContrastSet,
    chat_prompt,
    load_builtin_dataset,
    load_caa_dataset,
    load_neutral_text,
    tokenize,
)
from tlsteer.diagnostics import (
    cosine_matrix,
    layer_diagnostics,
    normalize_to_mean_norm,
    steerability,
)
from tlsteer.evaluate import ABResult, ab_accuracy, ab_eval, kl_on_neutral
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
from tlsteer.sweeps import calibrate_multiplier, compete, residual_norms, sweep, sweep_items
from tlsteer.train import train_steering_vector
from tlsteer.vector import SteeringVector, VectorMetadata

__version__ = "0.1.0"

__all__ = [
    "ABResult",
    "Aggregator",
    "BUILTIN_DATASETS",
    "CAA_BEHAVIOURS",
    "ContrastActivations",
    "ContrastPair",
    "ContrastSet",
    "Operator",
    "SteeringHandle",
    "SteeringVector",
    "VectorMetadata",
    "__version__",
    "ab_accuracy",
    "ab_eval",
    "ablation_operator",
    "ablation_then_addition_operator",
    "addition_operator",
    "aggregate_activations",
    "apply_steering",
    "calibrate_multiplier",
    "chat_prompt",
    "class_mean_aggregator",
    "compete",
    "cosine_matrix",
    "extract_activations",
    "kl_on_neutral",
    "layer_diagnostics",
    "load_builtin_dataset",
    "load_caa_dataset",
    "load_neutral_text",
    "load_model",
    "logistic_aggregator",
    "mean_aggregator",
    "normalize_to_mean_norm",
    "patch_steering",
    "pca_aggregator",
    "read_activations",
    "remove_all_steering",
    "residual_norms",
    "steerability",
    "steering_hooks",
    "sweep",
    "sweep_items",
    "tokenize",
    "train_steering_vector",
]
