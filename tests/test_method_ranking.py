"""benchmarks/method_ranking.py on hand-made outcomes whose answer is known."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tlsteer.profile import spearman

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def mr():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("method_ranking")
    finally:
        sys.path.remove(str(BENCHMARKS))


CELLS = ["caa@0.5", "feature_top8@0.5", "random@0.5", "prompting"]
TARGETS = ["formal", "pirate", "casual"]


def result(outcomes: np.ndarray, targets=TARGETS, cells=CELLS, extra_cells=("unsteered",)) -> dict:
    """A feature_vs_caa-like result from ``outcomes[cell, target, prompt]`` (units target-major)."""
    n_prompts = outcomes.shape[2]
    units = [[t, p] for t in targets for p in range(n_prompts)]
    data = {c: {"outcomes": outcomes[i].reshape(-1).tolist()} for i, c in enumerate(cells)}
    for c in extra_cells:
        data[c] = {"outcomes": [0.0] * len(units)}
    return {"targets": list(targets), "units": units, "cells": data}


def ranked_outcomes(n_prompts: int = 12, seed: int = 0) -> np.ndarray:
    """Outcomes whose cells have clearly different success (0.1 .. 0.9), random per prompt."""
    rng = np.random.default_rng(seed)
    probs = np.array([0.9, 0.6, 0.1, 0.35])[:, None, None]
    return (rng.random((len(CELLS), len(TARGETS), n_prompts)) < probs).astype(float)


def tables(mr, a: np.ndarray, b: np.ndarray, n_prompts: int):
    cells = mr.shared_cells(mr.scored_cells(result(a)), mr.scored_cells(result(b)))
    return mr.outcome_table(result(a), cells, n_prompts), mr.outcome_table(result(b), cells, n_prompts)


def test_identical_outcomes_hold_with_spearman_one(mr):
    out = ranked_outcomes()
    a, b = tables(mr, out, out, 12)
    assert a.cells == tuple(CELLS)  # unsteered left out
    rho = mr.ranking_test(a, b, n_resamples=500, seed=0)
    assert rho["value"] == pytest.approx(1.0)
    # one draw resamples both models: every resample of identical runs correlates perfectly
    assert rho["low"] == pytest.approx(1.0) and rho["high"] == pytest.approx(1.0)
    assert rho["word"] == "holds"


def test_reversed_order_is_negative(mr):
    out = ranked_outcomes()
    a, b = tables(mr, out, 1.0 - out, 12)  # model B's success is 1 - A's: the reverse order
    np.testing.assert_allclose(mr.success(b), 1.0 - mr.success(a))
    rho = mr.ranking_test(a, b, n_resamples=500, seed=0)
    assert rho["value"] == pytest.approx(-1.0)
    assert rho["high"] == pytest.approx(-1.0) and rho["word"] == "reversed"


def test_success_is_the_mean_over_targets_of_per_target_means(mr):
    # target 0 has two units on prompt 0 (a duplicate), so pooling units would weigh it differently
    res = {
        "targets": ["x", "y"],
        "units": [["x", 0], ["x", 0], ["x", 1], ["y", 0], ["y", 1], ["x", 5]],
        "cells": {c: {"outcomes": [1, 1, 0, 0, 0, 1]} for c in CELLS},
    }
    table = mr.outcome_table(res, CELLS, 2)  # the unit on prompt 5 is left out
    assert table.counts.sum() == 5
    np.testing.assert_allclose(mr.success(table), (2 / 3 + 0) / 2)


def test_a_drawn_prompt_brings_its_units_in_every_target_in_both_models(mr):
    rng = np.random.default_rng(1)
    out_a = rng.integers(0, 2, (len(CELLS), len(TARGETS), 5)).astype(float)
    out_b = rng.integers(0, 2, (len(CELLS), len(TARGETS), 5)).astype(float)
    a, b = tables(mr, out_a, out_b, 5)
    for p in range(5):  # a resample of prompt p alone: its outcome in every target, in each model
        only = np.eye(5)[[p]]
        np.testing.assert_allclose(mr.success(a, only)[0], out_a[:, :, p].mean(1))
        np.testing.assert_allclose(mr.success(b, only)[0], out_b[:, :, p].mean(1))
    # a resample is one draw of prompts: prompt 2 twice and prompt 4 once weighs them 2:1 in every target
    w = np.array([[0, 0, 2, 0, 1]], dtype=float)
    np.testing.assert_allclose(mr.success(a, w)[0], (2 * out_a[:, :, 2] + out_a[:, :, 4]).mean(1) / 3)
    # the weights are counts of n_prompts draws with replacement, the same for both models
    weights = mr.prompt_weights(5, 300, seed=3)
    assert weights.shape == (300, 5) and (weights.sum(1) == 5).all()
    np.testing.assert_array_equal(weights, mr.prompt_weights(5, 300, seed=3))
    expected = mr.spearman_rows(mr.success(a, weights), mr.success(b, weights))
    rho = mr.ranking_test(a, b, n_resamples=300, seed=3)
    kept = expected[np.isfinite(expected)]
    assert rho["dropped_resamples"] == 300 - kept.size
    assert rho["low"] == pytest.approx(np.quantile(kept, 0.025))
    assert rho["high"] == pytest.approx(np.quantile(kept, 0.975))


def test_vectorised_spearman_matches_the_library_with_ties(mr):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 4, (50, 7)).astype(float), rng.integers(0, 4, (50, 7)).astype(float)
    got = mr.spearman_rows(x, y)
    want = np.array([spearman(a, b) for a, b in zip(x, y, strict=True)])
    np.testing.assert_allclose(got, want, equal_nan=True)


def test_a_constant_model_is_undefined_and_undecided(mr):
    out = ranked_outcomes()
    flat = np.ones_like(out)  # every cell succeeds everywhere: no ranking, every resample dropped
    a, b = tables(mr, out, flat, 12)
    rho = mr.ranking_test(a, b, n_resamples=200, seed=0)
    assert rho["value"] is None and rho["word"] == "undecided"
    assert rho["dropped_resamples"] == 200 and rho["low"] is None
    json.dumps(rho, allow_nan=False)


def test_words_reading_and_agreement(mr):
    assert mr.word(0.1, 0.9) == "holds"
    assert mr.word(-0.9, -0.1) == "reversed"
    assert mr.word(-0.1, 0.9) == "undecided"
    assert mr.word(0.0, 0.9) == "undecided"
    verdict = {
        "datasets": {
            "speaking_styles": {
                "verdict": {
                    "pooled": {
                        "reference": "caa@0.5",
                        "rows": [
                            {"method": "prompting", "word": "better"},
                            {"method": "random@0.5", "word": "worse"},
                        ],
                    }
                }
            }
        }
    }
    words_a = mr.verdict_words(verdict, "speaking_styles")
    words_b = {"caa@0.5": "reference", "prompting": "better", "random@0.5": "undecided"}
    table, count = mr.words_table(CELLS, words_a, words_b)
    assert table["caa@0.5"]["agree"] is None and table["feature_top8@0.5"]["agree"] is None
    assert table["prompting"]["agree"] is True and table["random@0.5"]["agree"] is False
    assert count == {"agree": 1, "compared": 2}
    assert mr.verdict_words({}, "speaking_styles") == {}


def test_refusals(mr):
    with pytest.raises(ValueError, match="at least 3"):
        mr.shared_cells(
            ["unsteered", "caa@0.5", "prompting", "clamp@0.5"], ["unsteered", "caa@0.5", "prompting"]
        )
    out = ranked_outcomes(n_prompts=4)
    with pytest.raises(ValueError, match="no unit on some of the first 6 prompts"):
        mr.outcome_table(result(out), CELLS, 6)
    res = result(out)
    res["units"] = [u for u in res["units"] if u != ["pirate", 2]]
    res["cells"] = {c: {"outcomes": v["outcomes"][:-1]} for c, v in res["cells"].items()}
    with pytest.raises(ValueError, match="pirate"):
        mr.outcome_table(res, CELLS, 4)


def test_main_on_written_runs(mr, tmp_path):
    out = ranked_outcomes()
    for side, data in (("a", out), ("b", out)):
        folder = tmp_path / side
        folder.mkdir()
        (folder / "feature_vs_caa_speaking_styles.json").write_text(json.dumps(result(data)))
    path = mr.main(
        [
            "--a",
            str(tmp_path / "a"),
            "--b",
            str(tmp_path / "b"),
            "--n-prompts",
            "12",
            "--n-resamples",
            "200",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    written = json.loads(path.read_text())
    assert written["spearman"]["word"] == "holds" and written["cells"] == CELLS
    assert written["plan"]["path"] == "benchmarks/plans/gemma-ranking-1.toml"
    assert written["words_agree"] == {"agree": 0, "compared": 0}  # no verdict.json: no words
    assert (tmp_path / "out" / "method_ranking.png").is_file()
    with pytest.raises(SystemExit):  # fewer prompts in the runs than asked
        mr.main(["--a", str(tmp_path / "a"), "--b", str(tmp_path / "b"), "--out", str(tmp_path / "out")])


def split_runs(out: np.ndarray) -> tuple[dict, dict]:
    """The cells of one run split into two runs that share CAA (and ``unsteered``)."""
    first, second = [0, 1], [0, 2, 3]  # caa in both
    return (
        result(out[first], cells=[CELLS[i] for i in first]),
        result(out[second], cells=[CELLS[i] for i in second]),
    )


def test_merged_runs_equal_the_run_they_were_split_from(mr):
    out, other = ranked_outcomes(seed=0), ranked_outcomes(seed=5)
    merged = mr.merge_runs(list(split_runs(out)), ["first", "second"])
    assert [c for c in mr.scored_cells(merged) if c != "unsteered"] == CELLS  # first seen first
    assert "unsteered" in merged["cells"]
    whole = mr.outcome_table(result(out), CELLS, 12)
    table = mr.outcome_table(merged, CELLS, 12)
    np.testing.assert_array_equal(table.sums, whole.sums)
    b = mr.outcome_table(result(other), CELLS, 12)
    assert mr.ranking_test(table, b, 300, 0) == mr.ranking_test(whole, b, 300, 0)
    assert mr.merge_runs([result(out)], ["only"]) == result(out)  # one run: as it is


def test_merging_refuses_runs_that_disagree(mr):
    out = ranked_outcomes()
    first, second = split_runs(out)
    changed = json.loads(json.dumps(second))
    changed["cells"]["caa@0.5"]["outcomes"][3] = 1.0 - changed["cells"]["caa@0.5"]["outcomes"][3]
    with pytest.raises(ValueError, match=r"'caa@0.5' has different outcomes in first and second \(1 units"):
        mr.merge_runs([first, changed], ["first", "second"])
    fewer = json.loads(json.dumps(second))
    fewer["units"] = fewer["units"][:-1]
    with pytest.raises(ValueError, match="different units"):
        mr.merge_runs([first, fewer], ["first", "second"])
    renamed = json.loads(json.dumps(second))
    renamed["targets"] = renamed["targets"][::-1]
    with pytest.raises(ValueError, match="different targets"):
        mr.merge_runs([first, renamed], ["first", "second"])


def test_main_merges_several_folders_per_model(mr, tmp_path):
    out = ranked_outcomes()
    for name, data in zip(("a1", "a2"), split_runs(out), strict=True):
        (tmp_path / name).mkdir()
        (tmp_path / name / "feature_vs_caa_speaking_styles.json").write_text(json.dumps(data))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "feature_vs_caa_speaking_styles.json").write_text(json.dumps(result(out)))
    path = mr.main(
        ["--a", str(tmp_path / "a1"), str(tmp_path / "a2"), "--b", str(tmp_path / "b"), "--n-prompts", "12"]
        + ["--n-resamples", "200", "--out", str(tmp_path / "out"), "--name", "ranking_merged"]
    )
    assert path.name == "ranking_merged.json" and (tmp_path / "out" / "ranking_merged.png").is_file()
    written = json.loads(path.read_text())
    assert written["cells"] == CELLS and written["spearman"]["value"] == pytest.approx(1.0)
    assert len(written["inputs"]["a"]["folders"]) == 2
    assert str(tmp_path / "a2") in written["command"]
