"""Evaluation: A/B behavioural probability, side effects, sweeps, diagnostics, generations, plots.

Everything here runs on top of the core (:mod:`tlsteer`) and never the other way round. The judge
(:mod:`tlsteer.eval.judge`) needs the ``judge`` extra and loads its packages when called.
"""

from tlsteer.eval.ab import (
    ABAccuracy,
    ABResult,
    ABScore,
    ab_accuracy,
    ab_eval,
    ab_scores,
    kl_on_neutral,
    question_end,
)
from tlsteer.eval.budget import (
    Calibration,
    KLStats,
    bootstrap_ci,
    calibrate_to_kl,
    kl_stats,
    paired_difference_ci,
)
from tlsteer.eval.cached import cached_ab_scores
from tlsteer.eval.diagnostics import (
    Steerability,
    cosine_matrix,
    layer_diagnostics,
    normalize_to_mean_norm,
    steerability,
)
from tlsteer.eval.generation import Generation, GenerationReport, GenerationSettings, compare_generations
from tlsteer.eval.judge import MIN_JUDGE_ACCURACY, ClassJudge, class_judge
from tlsteer.eval.plots import (
    plot_behaviour_curves,
    plot_cosine_matrix,
    plot_layer_diagnostics,
    plot_pca,
    plot_slope_histogram,
    plot_sweep_heatmap,
)
from tlsteer.eval.shared_attention import shared_attention_unsupported
from tlsteer.eval.sweeps import (
    calibrate_multiplier,
    compete,
    residual_norms,
    summarize_sweep,
    sweep,
    sweep_items,
)
from tlsteer.eval.token_view import FeatureTokenView, TokenView, feature_token_view, next_token_kl, token_view

__all__ = [
    "MIN_JUDGE_ACCURACY",
    "ClassJudge",
    "class_judge",
    "ABAccuracy",
    "ABResult",
    "ABScore",
    "Calibration",
    "KLStats",
    "Generation",
    "GenerationReport",
    "GenerationSettings",
    "Steerability",
    "FeatureTokenView",
    "TokenView",
    "feature_token_view",
    "next_token_kl",
    "token_view",
    "ab_accuracy",
    "ab_eval",
    "ab_scores",
    "question_end",
    "bootstrap_ci",
    "calibrate_to_kl",
    "cached_ab_scores",
    "calibrate_multiplier",
    "compare_generations",
    "compete",
    "cosine_matrix",
    "kl_on_neutral",
    "kl_stats",
    "layer_diagnostics",
    "normalize_to_mean_norm",
    "paired_difference_ci",
    "plot_behaviour_curves",
    "plot_cosine_matrix",
    "plot_layer_diagnostics",
    "plot_pca",
    "plot_slope_histogram",
    "plot_sweep_heatmap",
    "residual_norms",
    "shared_attention_unsupported",
    "steerability",
    "summarize_sweep",
    "sweep",
    "sweep_items",
]
