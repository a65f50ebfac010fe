"""Evaluation: A/B behavioural probability, side effects, sweeps, diagnostics, generations, plots.

Everything here runs on top of the core (:mod:`tlsteer`) and never the other way round. The judge
(:mod:`tlsteer.eval.judge`) needs the ``judge`` extra and loads its packages when called.
"""

from tlsteer.eval.ab import (
    ABResult,
    ABScore,
    ab_accuracy,
    ab_eval,
    ab_scores,
    kl_on_neutral,
    question_end,
)
from tlsteer.eval.bootstrap import clopper_pearson
from tlsteer.eval.budget import bootstrap_ci, calibrate_to_kl, kl_stats, paired_difference_ci
from tlsteer.eval.cached import cached_ab_scores
from tlsteer.eval.diagnostics import layer_diagnostics, steerability
from tlsteer.eval.generation import GenerationSettings, compare_generations
from tlsteer.eval.judge import ClassJudge, JudgeReport, class_judge, degenerate, judge_report
from tlsteer.eval.sweeps import residual_norms, sweep, sweep_items
from tlsteer.eval.token_view import TokenView, feature_token_view, token_view

__all__ = [
    "ClassJudge",
    "JudgeReport",
    "class_judge",
    "degenerate",
    "judge_report",
    "ABResult",
    "ABScore",
    "GenerationSettings",
    "TokenView",
    "feature_token_view",
    "token_view",
    "ab_accuracy",
    "ab_eval",
    "ab_scores",
    "question_end",
    "bootstrap_ci",
    "calibrate_to_kl",
    "cached_ab_scores",
    "clopper_pearson",
    "compare_generations",
    "kl_on_neutral",
    "kl_stats",
    "layer_diagnostics",
    "paired_difference_ci",
    "residual_norms",
    "steerability",
    "sweep",
    "sweep_items",
]
