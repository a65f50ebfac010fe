"""Recognising held-out examples by distinctive features: planted ones, a reference loop, ties, reports."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from tests.test_classes import HOOK, orthonormal_sae, toy
from tlsteer import ClassDataset, ClassProfile, class_reads
from tlsteer.profile import DISTINCTIVE_K, DISTINCTIVE_STABLE_ONLY, MIN_STABILITY, N_BOOTSTRAP
from tlsteer.recognition import recognise
from tlsteer.sae import class_profile, distinctive_recognition

PLANTED = {"a": 3, "b": 5, "c": 7}
WIDTH = 16


def codes(seed: int, n: int) -> dict[str, torch.Tensor]:
    """Per class, ``n`` sparse codes: weak noise, one feature shared by all, one planted per class."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for c, f in PLANTED.items():
        code = 0.3 * torch.rand(n, WIDTH, generator=gen) * (torch.rand(n, WIDTH, generator=gen) < 0.3)
        code[:, 0] = 1 + torch.rand(n, generator=gen)
        code[:, f] = 2 + torch.rand(n, generator=gen)
        out[c] = code
    return out


def profile_of(train: dict, n_bootstrap: int = 20) -> ClassProfile:
    return ClassProfile.from_representations(None, HOOK, train, n_bootstrap=n_bootstrap, seed=0)


def test_planted_distinctive_features_are_recovered_and_recognise_held_out_examples():
    profile = profile_of(codes(0, 20))
    for score in ("standardized", "mean"):
        got = recognise(profile, codes(1, 10), k=1, score=score)
        assert dict(got.features) == {c: (f,) for c, f in PLANTED.items()}
        assert dict(got.accuracy) == {"a": 1.0, "b": 1.0, "c": 1.0} and got.overall == 1.0
        assert got.chance == pytest.approx(1 / 3) and got.short == () and got.note() == ""
        assert got.n_held_out == {"a": 10, "b": 10, "c": 10}
        assert got.confusion_frame().to_numpy().tolist() == [[10, 0, 0], [0, 10, 0], [0, 0, 10]]


@pytest.mark.parametrize("score", ["standardized", "mean"])
def test_recognition_equals_a_plain_reference_loop(score):
    gen = torch.Generator().manual_seed(3)
    train = {c: torch.randn(n, 12, generator=gen).abs() for c, n in (("x", 9), ("y", 14), ("z", 6))}
    held = {c: torch.randn(n, 12, generator=gen).abs() for c, n in (("x", 5), ("y", 7), ("z", 4))}
    profile = profile_of(train, n_bootstrap=0)
    got = recognise(profile, held, k=3, stable_only=False, score=score)
    pool = torch.cat(list(train.values()))
    mu, sd = (pool.mean(0), pool.std(0)) if score == "standardized" else (0.0, 1.0)
    feats = {c: profile.distinctive(c, 3, stable_only=False).feature.tolist() for c in train}
    for c, rows in held.items():
        predicted = []
        for x in rows:
            z = (x - mu) / sd
            scores = [sum(float(z[f]) for f in feats[d]) / len(feats[d]) for d in train]
            predicted.append(list(train)[scores.index(max(scores))])
        assert {d: predicted.count(d) for d in train} == pytest.approx(dict(got.confusion[c]), abs=1e-9)
        assert got.accuracy[c] == pytest.approx(predicted.count(c) / len(rows))
    assert got.overall == pytest.approx(sum(got.accuracy.values()) / 3)


def test_fewer_than_k_is_reported_and_a_class_without_features_is_never_chosen():
    profile = profile_of(codes(0, 20))
    tables = {
        "a": pd.DataFrame({"feature": [3, 1, 2], "stability": [1.0, 0.2, 0.4]}),
        "b": pd.DataFrame({"feature": [5, 6, 8], "stability": [0.9, 0.8, 0.8]}),
        "c": pd.DataFrame({"feature": [7, 9, 10], "stability": [0.3, 0.1, 0.0]}),
    }
    got = recognise(profile, codes(1, 10), k=3, stable_only=True, min_stability=0.5, tables=tables)
    assert got.n_features == {"a": 1, "b": 3, "c": 0} and got.short == ("a", "c")
    assert got.note() == "fewer than k=3 features passed the stability filter: a 1, c 0"
    assert "fewer than k=3" in str(got)
    assert got.accuracy["c"] == 0.0 and got.confusion["c"]["c"] == 0.0  # c scores minus infinity
    frame = got.to_frame()
    assert frame["short"].tolist() == [True, False, True] and frame["n_features"].tolist() == [1, 3, 0]
    row = got.to_dict()
    assert (
        row["short"] == ["a", "c"] and row["min_stability"] == 0.5 and row["chance"] == pytest.approx(1 / 3)
    )
    # the filter off keeps every row of the tables
    assert recognise(profile, codes(1, 10), k=3, stable_only=False, tables=tables).short == ()


def test_ties_split_evenly_so_unreached_examples_count_at_chance():
    profile = profile_of(codes(0, 20))
    zeros = {c: torch.zeros(4, WIDTH) for c in PLANTED}
    got = recognise(profile, zeros, k=1, score="mean")  # every class scores 0 on every example
    assert dict(got.accuracy) == pytest.approx({c: 1 / 3 for c in PLANTED}) and got.overall == pytest.approx(
        1 / 3
    )
    tables = {c: pd.DataFrame({"feature": [f], "stability": [1.0]}) for c, f in PLANTED.items()}
    tables["c"] = pd.DataFrame({"feature": [7], "stability": [0.0]})  # filtered out: never chosen
    got = recognise(profile, zeros, k=1, score="mean", stable_only=True, tables=tables)
    assert got.confusion["a"] == pytest.approx({"a": 2.0, "b": 2.0, "c": 0.0})


def test_precomputed_tables_give_the_same_recognition():
    profile = profile_of(codes(0, 20), n_bootstrap=15)
    held = codes(2, 6)
    tables = {c: profile.distinctive(c, 4, stable_only=False) for c in PLANTED}
    for threshold in (0.3, 0.6, 0.9):
        direct = recognise(profile, held, k=4, stable_only=True, min_stability=threshold)
        shared = recognise(profile, held, k=4, stable_only=True, min_stability=threshold, tables=tables)
        assert direct == shared


def test_recognition_defaults_are_the_profiles():
    profile = profile_of(codes(0, 20), n_bootstrap=N_BOOTSTRAP)
    got = recognise(profile, codes(1, 3))
    assert (
        got.k == min(DISTINCTIVE_K, WIDTH) and got.n_bootstrap == N_BOOTSTRAP and got.score == "standardized"
    )
    assert got.min_stability is None  # no stability filter by default
    for c in PLANTED:
        assert list(got.features[c]) == profile.distinctive(c).feature.tolist()


def test_distinctive_defaults_keep_the_top_k_and_filter_at_the_threshold_when_asked():
    # the defaults chosen by benchmarks/distinctive_generalisation.py: k = 20, no filter, else 0.3
    assert (DISTINCTIVE_K, DISTINCTIVE_STABLE_ONLY, MIN_STABILITY, N_BOOTSTRAP) == (20, False, 0.3, 50)
    gen = torch.Generator().manual_seed(5)
    train = {c: torch.rand(12, 200, generator=gen) for c in "xyz"}
    profile = profile_of(train, n_bootstrap=N_BOOTSTRAP)
    table = profile.distinctive("x")
    assert len(table) == 20 and (table.stability < MIN_STABILITY).any()  # unstable rows kept
    stable = profile.distinctive("x", stable_only=True)
    assert stable.feature.tolist() == table[table.stability >= MIN_STABILITY].feature.tolist()
    got = recognise(profile, train, stable_only=True)
    assert got.n_features == {c: len(profile.distinctive(c, stable_only=True)) for c in "xyz"}
    assert got.short == tuple(c for c in "xyz" if got.n_features[c] < 20) and got.short


def test_recognition_bad_input():
    profile = profile_of(codes(0, 20), n_bootstrap=0)
    held = codes(1, 3)
    with pytest.raises(ValueError, match=r"^the held-out reads have no class 'c'; they need exactly"):
        recognise(profile, {c: held[c] for c in ("a", "b")}, stable_only=False)
    with pytest.raises(ValueError, match=r"^the held-out reads have unknown class 'd'"):
        recognise(profile, {**held, "d": held["a"]}, stable_only=False)
    with pytest.raises(
        ValueError, match=r"^held-out reads\['a'\] must be \[n >= 1, 16\] .*got shape \(3, 5\)"
    ):
        recognise(profile, {**held, "a": held["a"][:, :5]}, stable_only=False)
    with pytest.raises(ValueError, match=r"^unknown score 'median'; valid: "):
        recognise(profile, held, stable_only=False, score="median")
    with pytest.raises(ValueError, match=r"needs a stability estimate"):
        recognise(profile, held, stable_only=True)
    with pytest.raises(TypeError, match=r"^profile must be a ClassProfile, got dict"):
        recognise({}, held)
    tables = {c: profile.distinctive(c, 2, stable_only=False) for c in PLANTED}
    with pytest.raises(
        ValueError, match=r"^tables\['a'\] has 2 rows, but k=3 needs the unfiltered table of 3"
    ):
        recognise(profile, held, k=3, stable_only=False, tables=tables)
    with pytest.raises(
        ValueError, match=r"^tables\['a'\] has no stability \(a profile built with n_bootstrap=0\)"
    ):
        recognise(profile, held, k=2, stable_only=True, tables=tables)


def test_distinctive_recognition_reads_the_held_out_set_through_the_dictionary(tiny_llama):
    sae = orthonormal_sae(d_in=tiny_llama.cfg.d_model)
    ds = toy()
    profile = class_profile(tiny_llama, sae, ds, batch_size=2, n_bootstrap=4)
    with torch.no_grad():
        feats = class_reads(tiny_llama, ds, HOOK, transform=sae.encode)
    got = distinctive_recognition(tiny_llama, profile, ds, k=2, stable_only=False, batch_size=3)
    assert got == recognise(profile, feats, k=2, stable_only=False)
    raw = distinctive_recognition(tiny_llama, profile, ds, k=2, space="raw", stable_only=False)
    assert raw == recognise(profile, class_reads(tiny_llama, ds, HOOK), k=2, space="raw", stable_only=False)
    with pytest.raises(TypeError, match=r"^profile must be an SAEClassProfile from class_profile"):
        distinctive_recognition(tiny_llama, ClassProfile.from_representations(feats, HOOK), ds)
    other = ClassDataset.from_dict({"x": ["one text", "two texts"], "y": ["three", "four five"]})
    with pytest.raises(ValueError, match=r"^held_out has classes \['x', 'y'\] but the profile has"):
        distinctive_recognition(tiny_llama, profile, other)
