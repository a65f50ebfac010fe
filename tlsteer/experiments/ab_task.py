"""A CAA behaviour as a dataset of the comparison: p(matching) on held-out A/B items per cell.

An :class:`ABTask` holds training contrast pairs (read at the answer letter:
:func:`~tlsteer.experiments.contrasts.contrast_from_pairs`), held-out A/B items and the prompting
baseline's instruction. :func:`run_ab_task` scores every cell on the held-out items, steered from
the answer position (CAA's protocol), into a :class:`~tlsteer.experiments.cells.Cell` each, with
MMLU accuracy as a side effect when MMLU items are given.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from transformer_lens import HookedTransformer

from tlsteer.data import ABItem, ContrastPair
from tlsteer.eval.ab import ABScore, OutsideAB, ab_scores, question_end
from tlsteer.eval.cached import cached_ab_scores
from tlsteer.experiments.cells import UNSTEERED, Cell, CellKey, calibration_fields, cell_steerings, interval
from tlsteer.experiments.methods import Method
from tlsteer.steering import Steering

__all__ = ["ABTask", "run_ab_task", "steered_ab_scores"]

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class ABTask:
    """A CAA behaviour: training contrast pairs, held-out A/B items and a prompting instruction."""

    name: str
    train_pairs: Sequence[ContrastPair]
    test_items: Sequence[ABItem]
    instruction: str | None = None

    def __post_init__(self) -> None:
        if len(self.train_pairs) < 2 or len(self.test_items) < 2:
            raise ValueError(
                f"{self.name}: needs at least 2 training pairs and 2 test items, "
                f"got {len(self.train_pairs)} and {len(self.test_items)}"
            )


def steered_ab_scores(
    model: HookedTransformer,
    items: Sequence[ABItem],
    steerings: Mapping[K, Steering],
    outside_ab: OutsideAB = "error",
) -> dict[K, list[ABScore]]:
    """A/B scores of ``items`` under each keyed :class:`Steering` (CAA semantics: steered from the
    end of the question), under the same keys (a name, a cell's ``(method, budget)``).

    Steerings that act at one hook (one vector or one edit, no prefix) and the unsteered one share
    a single run of the cached engine (:func:`tlsteer.eval.cached.cached_ab_scores`: each batch's
    prompt prefix runs once for all of them); the others (an instruction prefix, several hooks)
    run on their own with :func:`tlsteer.eval.ab.ab_scores`.
    """
    where = question_end(model)
    at_end = {key: steering.at(where) for key, steering in steerings.items()}
    shared = [k for k, s in at_end.items() if not s.prefix and len(s.edits) <= 1]
    alone = {k: s for k, s in at_end.items() if k not in shared}
    out: dict[K, list[ABScore]] = {}
    if any(at_end[k].edits for k in shared):
        scores = cached_ab_scores(model, list(items), [at_end[k] for k in shared], outside_ab=outside_ab)
        out.update(zip(shared, scores, strict=True))
    else:
        alone.update({k: at_end[k] for k in shared})
    for key, steering in alone.items():
        out[key] = ab_scores(model, list(items), steering, outside_ab=outside_ab)
    return {key: out[key] for key in steerings}


def run_ab_task(
    model: HookedTransformer,
    methods: Mapping[str, Method],
    calibrations: Mapping[str, Mapping[float, Mapping[str, Any]]],
    test_items: Sequence[ABItem],
    *,
    n_resamples: int = 1000,
    mmlu: Sequence[ABItem] | None = None,
) -> dict[CellKey, Cell]:
    """p(matching) on held-out A/B items (steered from the answer position, CAA's protocol) per cell.

    Cells: ``("unsteered", None)``, ``(method, budget)`` for a method with a strength (at the
    calibrated strength) and ``(method, None)`` for prompting; each
    :class:`~tlsteer.experiments.cells.Cell`'s ``success`` is
    p(matching). All cells are scored together (:func:`steered_ab_scores`); MMLU accuracy, if
    given, likewise, with each calibrated cell's change from unsteered.
    """
    plan = cell_steerings(methods, calibrations)
    steerings = {UNSTEERED: Steering(), **{k: v[0] for k, v in plan.items()}}
    scores = steered_ab_scores(model, test_items, steerings, outside_ab="zero")
    correct = steered_ab_scores(model, mmlu, steerings) if mmlu else {}
    accuracy = {k: interval([float(x.p_matching > 0.5) for x in v], n_resamples) for k, v in correct.items()}
    cells: dict[CellKey, Cell] = {}
    for key in steerings:
        fields: dict[str, Any] = {}
        if key in plan:
            fields = calibration_fields(plan[key][1])
            if mmlu:
                fields["mmlu_change"] = accuracy[key].value - accuracy[UNSTEERED].value
        cells[key] = Cell(
            key[0],
            key[1],
            success=interval([x.p_matching for x in scores[key]], n_resamples),
            mmlu=accuracy.get(key),
            **fields,
        )
    return cells
