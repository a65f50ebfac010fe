"""The paired verdict: stratified cluster bootstrap, Holm, equivalence, the four words."""

from __future__ import annotations

import numpy as np
import pytest

from tlsteer.experiments.verdict import WORDS, _weights, paired_verdict

UNITS = [(t, p) for t in ("a", "b") for p in range(60)]


def test_the_difference_is_the_mean_over_strata_of_the_mean_paired_difference() -> None:
    rng = np.random.default_rng(0)
    units = [("a", p) for p in range(10)] + [("b", p) for p in range(30)]
    ref, other = rng.random(40), rng.random(40)
    row = paired_verdict({"caa": ref, "x": other}, "caa", units, margin=0.05, n_resamples=200).row("x")
    want = np.mean([(other[:10] - ref[:10]).mean(), (other[10:] - ref[10:]).mean()])
    assert row.difference == pytest.approx(want, abs=1e-12)
    assert row.n_units == 40


def test_shared_clusters_are_drawn_once_for_every_stratum() -> None:
    weights, strata = _weights(UNITS, 50, seed=3)
    assert strata == ["a", "b"]
    np.testing.assert_array_equal(weights[:, :60], weights[:, 60:])
    np.testing.assert_array_equal(weights.sum(1), np.full(50, 120))


def test_strata_with_their_own_clusters_each_keep_their_size() -> None:
    units = [("a", p) for p in range(5)] + [("b", p) for p in range(5, 12)]
    weights, _ = _weights(units, 40, seed=1)
    np.testing.assert_array_equal(weights[:, :5].sum(1), np.full(40, 5))
    np.testing.assert_array_equal(weights[:, 5:].sum(1), np.full(40, 7))


def test_planted_effects_get_their_words() -> None:
    rng = np.random.default_rng(1)
    base = (rng.random(120) < 0.5).astype(float)
    better = base.copy()
    better[base == 0] = (rng.random(int((base == 0).sum())) < 0.5).astype(float)  # +0.25
    worse = base * (rng.random(120) < 0.5)  # -0.25
    same = base.copy()  # identical: equivalent at any margin
    noisy = (rng.random(120) < 0.5).astype(float)  # unpaired, independent: undecided at 0.05
    table = paired_verdict(
        {"caa": base, "better": better, "worse": worse, "same": same, "noisy": noisy},
        "caa",
        UNITS,
        margin=0.05,
    )
    words = {r.method: r.word for r in table.rows}
    assert words == {"better": "better", "worse": "worse", "same": "equivalent", "noisy": "undecided"}
    assert set(words.values()) <= set(WORDS)


def test_pairing_detects_a_shift_that_separate_intervals_do_not() -> None:
    rng = np.random.default_rng(2)
    units = [("", p) for p in range(200)]
    prompt_effect = rng.normal(0, 1.0, 200)
    ref = prompt_effect
    other = prompt_effect + 0.1 + rng.normal(0, 0.05, 200)
    row = paired_verdict({"caa": ref, "x": other}, "caa", units, margin=0.05).row("x")
    assert row.word == "better" and row.low > 0
    # unpaired, each mean's 95% interval is about +-0.14: they overlap
    half = 1.96 * prompt_effect.std() / np.sqrt(200)
    assert ref.mean() + half > other.mean() - half


def test_holm_tests_in_steps_and_widens_the_later_intervals() -> None:
    rng = np.random.default_rng(4)
    units = [("", p) for p in range(300)]
    ref = rng.normal(0, 1, 300)
    methods = {"caa": ref}
    for i, shift in enumerate([0.5, 0.3, 0.0, 0.0]):
        methods[f"m{i}"] = ref + shift + rng.normal(0, 1, 300)
    table = paired_verdict(methods, "caa", units, margin=0.05)
    by_p = sorted(table.rows, key=lambda r: r.p_value)
    assert [r.level for r in by_p[:2]] == pytest.approx([1 - 0.05 / 4, 1 - 0.05 / 3])
    assert by_p[0].method == "m0" and by_p[0].word == "better"
    # the corrected interval is wider than the equivalence interval
    assert all(r.high - r.low > r.eq_high - r.eq_low for r in table.rows)
    # after the first failure every later method keeps that step's level
    failed = next(i for i, r in enumerate(by_p) if r.word not in ("better", "worse"))
    assert len({r.level for r in by_p[failed:]}) == 1


def test_under_the_null_holm_keeps_false_decisions_near_alpha() -> None:
    rng = np.random.default_rng(5)
    units = [(t, p) for t in ("a", "b") for p in range(40)]
    false = 0
    runs = 150
    for run in range(runs):
        prompt = rng.normal(0, 1, 40)
        ref = np.concatenate([prompt, prompt]) + rng.normal(0, 1, 80)
        methods = {"caa": ref}
        for i in range(3):
            methods[f"m{i}"] = np.concatenate([prompt, prompt]) + rng.normal(0, 1, 80)
        table = paired_verdict(methods, "caa", units, margin=0.05, n_resamples=400, seed=run)
        false += any(r.word in ("better", "worse") for r in table.rows)
    assert false / runs <= 0.09


def test_a_stratum_table_uses_only_its_units() -> None:
    rng = np.random.default_rng(6)
    ref = rng.random(120)
    other = ref.copy()
    other[60:] += 0.5  # stratum b only
    pooled = paired_verdict({"caa": ref, "x": other}, "caa", UNITS, margin=0.05)
    a = paired_verdict({"caa": ref, "x": other}, "caa", UNITS, margin=0.05, stratum="a")
    b = paired_verdict({"caa": ref, "x": other}, "caa", UNITS, margin=0.05, stratum="b")
    assert pooled.row("x").difference == pytest.approx(0.25)
    assert a.row("x").difference == 0.0 and a.row("x").word == "equivalent"
    assert b.row("x").difference == pytest.approx(0.5) and b.row("x").word == "better"
    assert b.stratum == "b" and b.row("x").n_units == 60


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"margin": 0}, "margin must be a finite number > 0"),
        ({"margin": float("nan")}, "margin must be a finite number > 0"),
        ({"margin": 0.05, "alpha": 1.5}, "alpha must be a number in"),
        ({"margin": 0.05, "n_resamples": 10}, "n_resamples must be an int >= 100"),
        ({"margin": 0.05, "stratum": "zz"}, "stratum 'zz' has no units; strata: \\['a', 'b'\\]"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        paired_verdict({"caa": np.zeros(120), "x": np.ones(120)}, "caa", UNITS, **kwargs)


def test_bad_outcomes_are_refused() -> None:
    with pytest.raises(KeyError, match="reference 'caa' is not among"):
        paired_verdict({"x": np.zeros(120)}, "caa", UNITS, margin=0.05)
    with pytest.raises(ValueError, match="'x' has \\(119,\\) outcomes for 120 units"):
        paired_verdict({"caa": np.zeros(120), "x": np.zeros(119)}, "caa", UNITS, margin=0.05)
    bad = np.zeros(120)
    bad[3] = np.nan
    with pytest.raises(ValueError, match="'x' has non-finite outcomes"):
        paired_verdict({"caa": np.zeros(120), "x": bad}, "caa", UNITS, margin=0.05)
    with pytest.raises(ValueError, match="units repeat"):
        paired_verdict({"caa": np.zeros(2), "x": np.zeros(2)}, "caa", [("a", 1), ("a", 1)], margin=0.05)


def test_the_corrected_interval_excludes_zero_exactly_when_the_word_is_better_or_worse() -> None:
    """Discrete 0/1 outcomes put many resamples on the same values: the words and the printed
    intervals must still agree (quantiles without interpolation)."""
    rng = np.random.default_rng(7)
    units = [(t, p) for t in ("a", "b") for p in range(24)]
    for run in range(40):
        base = (rng.random(48) < 0.5).astype(float)
        methods = {"caa": base}
        for i in range(4):
            flip = rng.random(48) < rng.uniform(0.05, 0.5)
            methods[f"m{i}"] = np.where(flip, rng.random(48) < rng.uniform(0, 1), base).astype(float)
        for row in paired_verdict(methods, "caa", units, margin=0.05, n_resamples=300, seed=run).rows:
            assert (row.word in ("better", "worse")) == (row.low > 0 or row.high < 0), (run, row)
