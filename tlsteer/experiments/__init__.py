"""Experiments over the core, evaluation and SAE features: the feature-vs-CAA comparison.

This layer sits above :mod:`tlsteer.eval` and :mod:`tlsteer.sae` and may import both; neither
imports it. ``import tlsteer.experiments`` needs sae-lens (``pip install "tlsteer[sae]"``).

- Run: :func:`feature_vs_caa` (one dataset, every method at matched KL budgets, with bootstrap
  intervals), set up by a :class:`ComparisonConfig` (methods, budgets, prompts, seeds, split);
  :func:`applicable_methods` (its default method list for a dataset).
- Datasets: a :class:`~tlsteer.ClassDataset`, an :class:`ABTask` (CAA pairs and held-out A/B
  items) or an :class:`AnalogyTask` (one relation); :func:`builtin_instructions` (the prompting
  baseline's instructions).
- Methods: :data:`METHODS` (the families built by :mod:`tlsteer.experiments.methods`).
- Decide: :func:`verdict` (every method against CAA on the same units: paired bootstrap over
  prompts stratified by target, Holm, an equivalence margin, one word per method), answering a
  pre-registered plan read by :func:`load_plan`.
- Spread: the cells run in process by default or on Ray workers (:class:`RayExecutor`,
  ``pip install "tlsteer[ray]"``) with the same results (:mod:`tlsteer.experiments.executor`:
  ``InProcess``, ``make_executor``, ``WorkerError``).
- Read: a :class:`ComparisonResult`, its :class:`Cell`\\ s keyed by ``(method, budget)``, and its
  ``to_frame()``, ``to_markdown()``, ``plot()``, ``plot_transfer()``, ``save()`` and
  ``ComparisonResult.load()``.

Example:
    >>> from tlsteer.experiments import ComparisonConfig, feature_vs_caa  # doctest: +SKIP
    >>> styles = tlsteer.load_class_dataset("speaking_styles")  # doctest: +SKIP
    >>> result = feature_vs_caa(model, sae, styles, ComparisonConfig(budgets=[0.5]))  # doctest: +SKIP
    >>> result.to_frame()  # doctest: +SKIP
"""

from tlsteer.experiments.ab_task import ABTask
from tlsteer.experiments.analogy_task import AnalogyTask
from tlsteer.experiments.cells import Cell
from tlsteer.experiments.comparison_config import ComparisonConfig
from tlsteer.experiments.comparison_result import ComparisonResult
from tlsteer.experiments.executor import RayExecutor
from tlsteer.experiments.feature_vs_caa import applicable_methods, builtin_instructions, feature_vs_caa
from tlsteer.experiments.methods import METHODS
from tlsteer.experiments.plan import load_plan
from tlsteer.experiments.verdict import verdict

__all__ = [
    "METHODS",
    "ABTask",
    "AnalogyTask",
    "Cell",
    "ComparisonConfig",
    "ComparisonResult",
    "RayExecutor",
    "applicable_methods",
    "builtin_instructions",
    "feature_vs_caa",
    "load_plan",
    "verdict",
]
