"""Steering along an order: the sweep equals a plain loop, multiplier 0 is unsteered, bad input fails."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tlsteer
from tlsteer.eval.ordinal import ordinal_sweep

HOOK = "blocks.1.hook_resid_post"


class LengthJudge:
    """Graded level = the text's length mod 4: deterministic, so a reference loop must match exactly."""

    classes = ("l0", "l1", "l2", "l3")
    held_out_accuracy = 0.9

    def graded(self, texts):
        return np.array([float(len(t) % 4) for t in texts])


def test_ordinal_sweep_equals_a_plain_loop(tiny_llama):
    vec = tlsteer.SteeringVector(
        {HOOK: torch.randn(tiny_llama.cfg.d_model, generator=torch.Generator().manual_seed(3))}
    )
    prompts = ["hello there", "a b c", "what is up today"]
    strengths = [-1.0, 0.0, 2.0]
    sweep = ordinal_sweep(
        tiny_llama, LengthJudge(), prompts, vec, strengths, scale=1.5, max_new_tokens=5, batch_size=2
    )
    assert sweep.multipliers == (-1.0, 0.0, 2.0) and sweep.scores.shape == (3, 3)
    for row, m in enumerate(strengths):
        steer = vec.steering(m * 1.5, positions=tlsteer.Positions.last()) if m else None
        alone = [tlsteer.generate(tiny_llama, [p], steer, max_new_tokens=5, chat=True)[0] for p in prompts]
        assert sweep.generations[row] == alone
        np.testing.assert_array_equal(sweep.scores[row], LengthJudge().graded(alone))
    unsteered = tlsteer.generate(tiny_llama, prompts, max_new_tokens=5, chat=True)
    assert sweep.generations[1] == unsteered
    np.testing.assert_allclose(sweep.mean_scores, sweep.scores.mean(1))
    d = sweep.to_dict()
    assert d["multipliers"] == strengths and d["judge_held_out_accuracy"] == 0.9
    # positions= moves the steering (default: the last prompt token on)
    everywhere = ordinal_sweep(
        tiny_llama, LengthJudge(), prompts[:1], vec, [0.0, 2.0], scale=1.5, max_new_tokens=5,
        positions=tlsteer.Positions.all(),
    )  # fmt: skip
    alone = tlsteer.generate(tiny_llama, prompts[:1], vec.steering(3.0), max_new_tokens=5, chat=True)
    assert everywhere.generations[1] == alone


def test_ordinal_sweep_spearman_is_exact():
    from tlsteer.eval.ordinal import OrdinalSweep

    rising = OrdinalSweep(
        (-1.0, 0.0, 1.0), np.array([[0.0, 0.5], [1.0, 1.5], [2.0, 2.5]]), ("a", "b"), 1.0, [[]] * 3
    )
    assert rising.spearman_of_means == pytest.approx(1.0)
    # ranks of scores 0, .5, 1, 1.5, 2, 2.5 vs multiplier ranks 1.5, 1.5, 3.5, 3.5, 5.5, 5.5
    assert rising.spearman == pytest.approx(np.corrcoef([1.5, 1.5, 3.5, 3.5, 5.5, 5.5], range(6))[0, 1])
    falling = OrdinalSweep((-1.0, 0.0, 1.0), np.array([[2.0], [1.0], [0.0]]), ("a", "b"), 1.0, [[]] * 3)
    assert falling.spearman == pytest.approx(-1.0)


def test_ordinal_sweep_bad_input(tiny_llama):
    vec = tlsteer.SteeringVector({HOOK: torch.ones(tiny_llama.cfg.d_model)})
    with pytest.raises(ValueError, match="at least 2 distinct"):
        ordinal_sweep(tiny_llama, LengthJudge(), ["hi"], vec, [1.0, 1.0])
    with pytest.raises(ValueError, match="nan"):
        ordinal_sweep(tiny_llama, LengthJudge(), ["hi"], vec, [0.0, float("nan")])
    with pytest.raises(ValueError, match="non-empty list"):
        ordinal_sweep(tiny_llama, LengthJudge(), [], vec, [0.0, 1.0])
    with pytest.raises(ValueError, match="scale must be > 0"):
        ordinal_sweep(tiny_llama, LengthJudge(), ["hi"], vec, [0.0, 1.0], scale=-2.0)


def test_ordinal_and_analogy_plots_draw_their_inputs(tmp_path):
    from tlsteer.eval.class_plots import plot_analogies, plot_ordinal
    from tlsteer.eval.ordinal import OrdinalSweep

    projections = {
        "lstsq": {"l0": np.array([0.0, 1.0]), "l1": np.array([2.0, 3.0]), "l2": np.array([4.0, 5.0])}
    }
    sweep = OrdinalSweep(
        (-1.0, 0.0, 1.0), np.array([[0.0, 1.0], [1.0, 1.0], [2.0, 2.0]]), ("l0", "l1", "l2"), 1.0, [[]] * 3
    )
    fig = plot_ordinal(projections, {"lstsq": sweep}, "t", path=tmp_path / "ordinal.png")
    means_line = fig.axes[0].lines[0].get_ydata()
    assert list(np.diff(means_line) > 0) == [True, True]  # level means rise with the level
    np.testing.assert_allclose(fig.axes[1].lines[0].get_ydata(), [0.5, 1.0, 2.0])
    assert (tmp_path / "ordinal.png").stat().st_size > 0
    score = {"top1": 0.1, "top5": 0.3, "n": 4}
    result = {
        "domains": {d: {m: score for m in ("none", "random", "relation", "few_shot")} for d in ("a", "b")},
        "cross_domain": {"rows_vector_columns_prompts": ["a", "b"], "top5": [[0.3, 0.0], [0.1, 0.2]]},
    }
    fig = plot_analogies(result, path=tmp_path / "analogies.png")
    assert fig.axes[1].images[0].get_array().tolist() == [[0.3, 0.0], [0.1, 0.2]]
