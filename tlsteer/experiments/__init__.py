"""Experiments over the core, evaluation and SAE features: the feature-vs-CAA comparison.

This layer sits above :mod:`tlsteer.eval` and :mod:`tlsteer.sae` and may import both; neither
imports it. ``import tlsteer.experiments`` needs sae-lens (``pip install "tlsteer[sae]"``).

- Run: :func:`feature_vs_caa` (one dataset, every method at matched KL budgets, with bootstrap
  intervals); :func:`applicable_methods` (its default method list for a dataset).
- Datasets: a :class:`~tlsteer.ClassDataset`, an :class:`ABTask` (CAA pairs and held-out A/B
  items) or an :class:`AnalogyTask` (one relation); :func:`builtin_instructions` (the prompting
  baseline's instructions).
- Methods: :data:`METHODS` (the families built by :mod:`tlsteer.experiments.methods`).
- Read: :func:`comparison_table`, :func:`plot_comparison`, :func:`plot_transfer_grid`.

Example:
    >>> from tlsteer.experiments import feature_vs_caa  # doctest: +SKIP
    >>> result = feature_vs_caa(model, sae, tlsteer.load_class_dataset("speaking_styles"))  # doctest: +SKIP
"""

from tlsteer.experiments.ab_task import ABTask
from tlsteer.experiments.analogy_task import AnalogyTask
from tlsteer.experiments.comparison_plots import comparison_table, plot_comparison, plot_transfer_grid
from tlsteer.experiments.feature_vs_caa import applicable_methods, builtin_instructions, feature_vs_caa
from tlsteer.experiments.methods import METHODS

__all__ = [
    "METHODS",
    "ABTask",
    "AnalogyTask",
    "applicable_methods",
    "builtin_instructions",
    "comparison_table",
    "feature_vs_caa",
    "plot_comparison",
    "plot_transfer_grid",
]
