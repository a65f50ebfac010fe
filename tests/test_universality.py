"""tlsteer.universality: CKA, permutation nulls, class geometry, feature matches and linear maps,
checked against exact algebra, independent reference implementations and planted structure."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tlsteer import universality as uni
from tlsteer.universality import (
    MIN_CLASSES,
    best_matches,
    bootstrap_similarity_correlation,
    cka_matrix,
    class_similarity,
    correspondence,
    fit_linear_map,
    linear_cka,
    permutation_null,
    similarity_correlation,
)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def orthogonal(d: int, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(randn(d, d, seed=seed).double())
    return q


# -- references ----------------------------------------------------------------------------------------
def reference_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """CKA through HSIC with an explicit centring matrix: tr(K H L H) / sqrt(tr(K H K H) tr(L H L H))."""
    x, y = x.double(), y.double()
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - torch.full((n, n), 1.0 / n, dtype=torch.float64)
    k, l_ = x @ x.T, y @ y.T

    def hsic(a, b):
        return float(torch.trace(a @ h @ b @ h))

    return hsic(k, l_) / math.sqrt(hsic(k, k) * hsic(l_, l_))


def reference_debiased_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Debiased CKA from the unbiased HSIC formula (Song et al. 2012) on uncentred Gram matrices."""
    x, y = x.double(), y.double()
    n = x.shape[0]
    ones = torch.ones(n, dtype=torch.float64)

    def hsic(k, l_):
        k = k - torch.diag(torch.diag(k))
        l_ = l_ - torch.diag(torch.diag(l_))
        return float(
            torch.trace(k @ l_)
            + (ones @ k @ ones) * (ones @ l_ @ ones) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * (ones @ k @ l_ @ ones)
        ) / (n * (n - 3))

    k, l_ = x @ x.T, y @ y.T
    return hsic(k, l_) / math.sqrt(hsic(k, k) * hsic(l_, l_))


# -- CKA -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("debiased", [False, True])
def test_cka_is_one_under_orthogonal_maps_scale_and_offset(debiased):
    x = randn(60, 8)
    y = (x.double() @ orthogonal(8, seed=1) * 3 + 5).float()
    assert linear_cka(x, y, debiased=debiased) == pytest.approx(1.0, abs=1e-6)


def test_cka_is_symmetric_and_matches_hand_computed_cases():
    x, y = randn(40, 5, seed=1), randn(40, 3, seed=2)
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x), abs=1e-12)
    assert linear_cka(x, y, debiased=True) == pytest.approx(linear_cka(y, x, debiased=True), abs=1e-12)
    # one column each: the squared Pearson correlation, (-1)^2 / (2 * 2/3) = 3/4
    assert linear_cka(
        torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([[1.0], [0.0], [0.0]])
    ) == pytest.approx(0.75, abs=1e-12)
    # Xc^T Xc = 2 I, Yc^T Yc = 2, ||Yc^T Xc||^2 = 4: CKA = 4 / (sqrt(8) * 2) = 1 / sqrt(2)
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    assert linear_cka(x, x[:, :1]) == pytest.approx(1 / math.sqrt(2), abs=1e-12)


@pytest.mark.parametrize(("n", "d1", "d2"), [(30, 4, 6), (12, 20, 30)])
def test_cka_agrees_with_the_hsic_formula_with_an_explicit_centring_matrix(n, d1, d2):
    # (12, 20, 30): d1 * d2 > n^2, the Gram-matrix branch of the cross term
    x = randn(n, d1, seed=3)
    y = x[:, :1] * randn(1, d2, seed=4) + 0.5 * randn(n, d2, seed=5) + 2.0
    assert linear_cka(x, y) == pytest.approx(reference_cka(x, y), abs=1e-10)
    assert linear_cka(x, y, debiased=True) == pytest.approx(reference_debiased_cka(x, y), abs=1e-10)


def test_cka_of_independent_data_is_low_and_the_debiased_one_near_zero():
    x, y = randn(500, 50, seed=6), randn(500, 50, seed=7)
    biased, debiased = linear_cka(x, y), linear_cka(x, y, debiased=True)
    assert 0.02 < biased < 0.3  # the biased estimator is positive for finite n
    assert abs(debiased) < 0.1
    assert abs(debiased) < biased / 2


def test_cka_is_not_invariant_to_a_non_orthogonal_invertible_map():
    x = randn(200, 6, seed=8)
    stretch = torch.diag(torch.tensor([10.0, 1.0, 1.0, 1.0, 1.0, 1.0]))
    assert torch.linalg.matrix_rank(stretch) == 6
    assert linear_cka(x, x @ stretch) < 0.9


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_matrix_is_linear_cka_per_pair(debiased):
    x = randn(50, 6, seed=9)
    reps_a = {0: x, 3: randn(50, 4, seed=10)}
    reps_b = {
        1: x @ orthogonal(6, seed=11).float(),
        2: x[:, :2] + randn(50, 2, seed=12),
        5: randn(50, 3, seed=13),
    }
    table = cka_matrix(reps_a, reps_b, debiased=debiased)
    assert list(table.index) == [0, 3] and list(table.columns) == [1, 2, 5]
    assert table.index.name == "layer_a" and table.columns.name == "layer_b"
    for la, a in reps_a.items():
        for lb, b in reps_b.items():
            assert table.loc[la, lb] == pytest.approx(linear_cka(a, b, debiased=debiased), abs=1e-12)
    assert table.loc[0, 1] == pytest.approx(1.0, abs=1e-6)


# -- permutation null ----------------------------------------------------------------------------------
def test_permutation_null_of_a_planted_relation_has_the_smallest_p():
    x = randn(80, 5, seed=14)
    y = x @ orthogonal(5, seed=15).float() + 0.1 * randn(80, 5, seed=16)
    result = permutation_null(linear_cka, x, y, n_perm=50)
    assert result.p_value == pytest.approx(1 / 51)
    assert result.observed > 0.95 and result.null_q95 < 0.5 and result.null_mean < result.null_q95
    assert result.n_perm == 50


def test_permutation_null_of_independent_data_is_not_significant():
    above = 0
    p_values = []
    for seed in range(8):
        x, y = randn(25, 3, seed=100 + seed), randn(25, 3, seed=200 + seed)
        result = permutation_null(linear_cka, x, y, n_perm=39, seed=seed)
        above += result.null_q95 > result.observed
        p_values.append(result.p_value)
    assert above >= 6
    assert max(p_values) > 0.3 and np.median(p_values) > 0.1


def test_permutation_null_shuffles_rows_of_y_with_the_seeded_generator():
    x, y = randn(20, seed=17), randn(20, seed=18)  # 1-D values are accepted

    def stat(a, b):
        return float(a @ b)

    result = permutation_null(stat, x, y, n_perm=5, seed=3)
    generator = torch.Generator().manual_seed(3)
    null = np.array([stat(x, y[torch.randperm(20, generator=generator)]) for _ in range(5)])
    assert result.observed == pytest.approx(stat(x, y))
    assert result.null_mean == pytest.approx(null.mean())
    assert result.null_q95 == pytest.approx(np.quantile(null, 0.95))
    assert result.p_value == pytest.approx((1 + (null >= result.observed).sum()) / 6)


# -- class geometry ------------------------------------------------------------------------------------
def planted_classes(means: torch.Tensor, n: int, seed: int, noise: float = 1.0) -> dict[str, torch.Tensor]:
    """Classes whose rows average exactly to ``means`` (zero-mean noise per class)."""
    out = {}
    for k, mean in enumerate(means):
        e = noise * randn(n, means.shape[1], seed=seed + k).double()
        out[f"class{k}"] = (mean + e - e.mean(0)).float()
    return out


def test_class_similarity_recovers_planted_geometry_and_ignores_a_shared_offset():
    offset = torch.tensor([4.0, -3.0, 7.0])
    means = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, -1.0, 0.0]]) + offset
    reps = planted_classes(means.double(), n=10, seed=20)
    names, sim = class_similarity(reps)
    expected = torch.tensor(
        [[1.0, -1.0, 0.0, 0.0], [-1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0], [0.0, 0.0, -1.0, 1.0]],
        dtype=torch.float64,
    )
    assert names == ["class0", "class1", "class2", "class3"]
    torch.testing.assert_close(sim, expected, atol=1e-6, rtol=0)
    shifted = {c: r + torch.tensor([100.0, 50.0, -20.0]) for c, r in reps.items()}
    torch.testing.assert_close(class_similarity(shifted)[1], sim, atol=1e-5, rtol=0)
    # three vertices of an equilateral triangle around any centre: -1/2 off the diagonal
    angles = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3], dtype=torch.float64)
    triangle = torch.stack([angles.cos(), angles.sin()], 1) + torch.tensor([5.0, 5.0], dtype=torch.float64)
    _, sim3 = class_similarity(planted_classes(triangle, n=6, seed=30))
    torch.testing.assert_close(
        sim3, torch.full((3, 3), -0.5, dtype=torch.float64).fill_diagonal_(1.0), atol=1e-6, rtol=0
    )


def random_similarity(k: int, seed: int) -> torch.Tensor:
    _, sim = class_similarity({f"c{i}": randn(1, 6, seed=seed * 100 + i) for i in range(k)})
    return sim


def test_similarity_correlation_of_identical_matrices_is_one_with_the_smallest_p():
    sim = random_similarity(8, seed=1)
    for method in ("spearman", "pearson"):
        result = similarity_correlation(sim, sim, n_perm=200, method=method)
        assert result.r == pytest.approx(1.0, abs=1e-12)
        assert result.p_value == pytest.approx(1 / 201)
        assert result.null_q95 < 0.7 and result.n_classes == 8 and result.method == method


def test_similarity_correlation_of_a_relabelled_matrix_is_low():
    sim = random_similarity(8, seed=2)
    perm = torch.tensor([3, 6, 0, 7, 1, 5, 2, 4])
    relabelled = sim[perm][:, perm]
    result = similarity_correlation(sim, relabelled, n_perm=200)
    assert abs(result.r) < 0.4 and result.p_value > 0.05
    # the relabelling undone: back to r = 1
    back = torch.argsort(perm)
    assert similarity_correlation(sim, relabelled[back][:, back], n_perm=10).r == pytest.approx(1.0)


def test_mantel_null_relabels_rows_and_columns_together():
    sim_a, sim_b = random_similarity(6, seed=6), random_similarity(6, seed=7)
    sim_b = 0.5 * sim_b + 0.5 * sim_a  # related, so the observed r is not at the null's centre
    upper = torch.triu_indices(6, 6, offset=1)
    ua = sim_a[upper[0], upper[1]].numpy()

    def pearson(b):
        return float(np.corrcoef(ua, b[upper[0], upper[1]].numpy())[0, 1])

    generator = torch.Generator().manual_seed(5)
    perms = [torch.randperm(6, generator=generator) for _ in range(40)]
    null = np.array([pearson(sim_b[p][:, p]) for p in perms])
    result = similarity_correlation(sim_a, sim_b, n_perm=40, seed=5, method="pearson")
    assert result.r == pytest.approx(pearson(sim_b), abs=1e-12)
    assert result.null_q95 == pytest.approx(np.quantile(null, 0.95), abs=1e-12)
    assert result.p_value == pytest.approx((1 + (null >= result.r - 1e-12).sum()) / 41)


def test_spearman_sees_a_monotone_transform_as_perfect_and_pearson_does_not():
    sim = random_similarity(7, seed=3)
    warped = sim**3
    assert similarity_correlation(sim, warped, n_perm=10).r == pytest.approx(1.0, abs=1e-12)
    assert similarity_correlation(sim, warped, n_perm=10, method="pearson").r < 0.99


def test_similarity_correlation_refuses_too_few_classes():
    sim = random_similarity(MIN_CLASSES - 1, seed=4)
    with pytest.raises(ValueError, match="3 classes; comparing class geometry needs at least 4"):
        similarity_correlation(sim, sim)
    with pytest.raises(ValueError, match="square"):
        similarity_correlation(torch.zeros(4, 5), torch.zeros(4, 5))
    with pytest.raises(ValueError, match="unknown method 'kendal'"):
        similarity_correlation(random_similarity(4, 5), random_similarity(4, 5), method="kendal")


def shared_geometry(n: int, seed: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Five classes in A (d=8) and the same examples in B (d=10): an orthogonal map and two extra
    columns, plus noise of B's own, so both share the class geometry up to noise."""
    means = randn(5, 8, seed=50)
    reps_a, reps_b = {}, {}
    rotation = orthogonal(8, seed=51).float() * 2.0
    for k in range(5):
        rows = means[k] + 2.0 * randn(n, 8, seed=seed + k)
        reps_a[f"c{k}"] = rows
        mapped = torch.cat([rows @ rotation, randn(n, 2, seed=seed + 20 + k)], 1)
        reps_b[f"c{k}"] = mapped + 0.5 * randn(n, 10, seed=seed + 10 + k)
    return reps_a, reps_b


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_more_examples():
    small = bootstrap_similarity_correlation(*shared_geometry(8, seed=60), n_boot=300, method="pearson")
    large = bootstrap_similarity_correlation(*shared_geometry(120, seed=70), n_boot=300, method="pearson")
    for estimate, low, high in (small, large):
        assert low <= estimate <= high
    assert large[2] - large[1] < (small[2] - small[1]) / 2
    assert large[0] > 0.8


def test_bootstrap_estimate_is_the_correlation_of_the_two_class_similarities():
    reps_a, reps_b = shared_geometry(10, seed=80)
    estimate, _, _ = bootstrap_similarity_correlation(reps_a, reps_b, n_boot=100)
    observed = similarity_correlation(class_similarity(reps_a)[1], class_similarity(reps_b)[1], n_perm=1)
    assert estimate == pytest.approx(observed.r, abs=1e-12)


def test_bootstrap_refuses_different_classes_or_sizes():
    reps_a, reps_b = shared_geometry(10, seed=90)
    swapped = dict(reversed(list(reps_b.items())))
    with pytest.raises(ValueError, match="same classes in the same order"):
        bootstrap_similarity_correlation(reps_a, swapped, n_boot=100)
    shorter = {**reps_b, "c2": reps_b["c2"][:9]}
    with pytest.raises(ValueError, match=r"reps_a\['c2'\] has 10 rows but reps_b\['c2'\] has 9"):
        bootstrap_similarity_correlation(reps_a, shorter, n_boot=100)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_similarity_correlation(reps_a, reps_b, n_boot=100, confidence=1.0)


# -- single features -----------------------------------------------------------------------------------
def planted_features(n: int = 300, f_a: int = 10, f_b: int = 40, seed: int = 0):
    a = randn(n, f_a, seed=seed)
    b = randn(n, f_b, seed=seed + 1)
    b[:, 7] = 2 * a[:, 3] + 0.05 * randn(n, seed=seed + 2)
    b[:, 12] = -a[:, 5] + 0.05 * randn(n, seed=seed + 3)  # anti-correlated: not a match for a's 5
    b[:, 30] = 0.5 * a[:, 5] + 0.05 * randn(n, seed=seed + 4)
    return a, b


def test_best_matches_recovers_planted_features():
    a, b = planted_features()
    table = best_matches(a, b, [3, 5])
    assert list(table.columns) == ["feature_a", "feature_b", "r"]
    assert table["feature_a"].tolist() == [3, 5]
    assert table["feature_b"].tolist() == [7, 30]
    assert (table["r"] > 0.99).all()


def test_best_matches_gives_dead_columns_r_zero_not_nan():
    a, b = planted_features()
    a[:, 2] = 0.0  # dead in A: correlates 0 with everything
    b[:, 7] = 1.5  # the planted partner of a's 3 is dead in B now
    table = best_matches(a, b, [2, 3])
    assert not table["r"].isna().any()
    assert table.loc[0, "r"] == 0.0 and table.loc[0, "feature_b"] == 0  # all zero: the first column
    assert table.loc[1, "feature_b"] != 7 and table.loc[1, "r"] < 0.5
    only_dead = best_matches(a, torch.zeros(300, 4), torch.tensor([3]))
    assert only_dead["r"].tolist() == [0.0] and only_dead["feature_b"].tolist() == [0]


def test_best_matches_agrees_with_a_double_loop_over_numpy_corrcoef(monkeypatch):
    a, b = randn(30, 6, seed=40), randn(30, 25, seed=41)
    b[:, 11] = a[:, 1] + 0.3 * b[:, 11]
    features = [0, 1, 4, 1]
    expected = []
    for f in features:
        r = [np.corrcoef(a[:, f].double().numpy(), b[:, j].double().numpy())[0, 1] for j in range(b.shape[1])]
        expected.append((f, int(np.argmax(r)), max(r)))
    for block in (uni._BLOCK, 64):  # one block of B's columns, and several
        monkeypatch.setattr(uni, "_BLOCK", block)
        table = best_matches(a, b, features)
        assert table["feature_a"].tolist() == features
        assert table["feature_b"].tolist() == [e[1] for e in expected]
        np.testing.assert_allclose(table["r"].to_numpy(), [e[2] for e in expected], atol=1e-6)


def test_correspondence_planted_share_against_the_shuffled_baseline():
    a, b = randn(200, 6, seed=7), randn(200, 300, seed=8)
    for f in range(6):
        b[:, 50 + f] = a[:, f] + 0.3 * randn(200, seed=500 + f)
    result = correspondence(a, b, list(range(6)), threshold=0.5, n_perm=30)
    assert result.share == 1.0
    assert result.null_share_mean < 0.05 and result.null_share_q95 < 0.5
    # the best of 300 chance correlations over 200 examples is far from 0: why the baseline exists
    assert 0.15 < result.null_r_mean < 0.4
    assert result.matches["feature_b"].tolist() == [50, 51, 52, 53, 54, 55]


def test_correspondence_baseline_is_best_matches_on_shuffled_rows_of_b(monkeypatch):
    a, b = planted_features(n=60, f_a=6, f_b=40, seed=9)
    monkeypatch.setattr(uni, "_BLOCK", 300)  # several shuffles and blocks of B per pass
    result = correspondence(a, b, [0, 3, 4], threshold=0.2, n_perm=4, seed=11)
    generator = torch.Generator().manual_seed(11)
    shuffled = [best_matches(a, b[torch.randperm(60, generator=generator)], [0, 3, 4]) for _ in range(4)]
    rs = np.array([t["r"].to_numpy() for t in shuffled])
    assert result.null_r_mean == pytest.approx(rs.mean(), abs=1e-9)
    assert result.null_share_mean == pytest.approx((rs >= 0.2).mean(), abs=1e-12)


def class_driven(
    n_per: int, k: int, seed: int, shared: float
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Two models' features over k classes of n_per examples: column 0 of each is the class indicator
    of class 0 plus the model's own noise, column 1 of each adds an example-level signal (weight
    ``shared``) that both models carry; B has 40 more columns of noise."""
    labels = [c for c in range(k) for _ in range(n_per)]
    n = len(labels)
    indicator = torch.tensor([1.0 if c == 0 else 0.0 for c in labels])
    common = randn(n, seed=seed)
    a, b = randn(n, 2, seed=seed + 1) * 0.3, randn(n, 42, seed=seed + 2) * 0.3
    for m in (a, b):
        m[:, 0] += indicator
        m[:, 1] += indicator + shared * common
    return a, b, labels


def test_grouped_null_keeps_what_the_class_labels_explain():
    a, b, labels = class_driven(n_per=30, k=5, seed=40, shared=0.0)
    plain = correspondence(a, b, [0, 1], threshold=0.5, n_perm=40)
    grouped = correspondence(a, b, [0, 1], threshold=0.5, n_perm=40, groups=labels)
    # both columns track only the class: they match, far above the plain shuffles ...
    assert plain.share == 1.0 and plain.null_share_q95 == 0.0
    # ... and the within-class shuffles keep the match: the labels explain it all
    assert grouped.null_share_mean == 1.0
    cka = permutation_null(linear_cka, a, b, n_perm=40, groups=labels)
    assert cka.p_value > 0.1 and cka.null_mean > 0.5 * cka.observed
    assert permutation_null(linear_cka, a, b, n_perm=40).p_value == pytest.approx(1 / 41)


def test_grouped_null_sees_agreement_on_examples_within_classes():
    a, b, labels = class_driven(n_per=30, k=5, seed=50, shared=1.0)
    grouped = correspondence(a, b, [1], threshold=0.6, n_perm=40, groups=labels)
    assert grouped.share == 1.0 and grouped.null_share_q95 == 0.0
    assert grouped.matches["feature_b"].tolist() == [1]
    assert permutation_null(
        linear_cka, a[:, 1:], b[:, 1:2], n_perm=40, groups=labels
    ).p_value == pytest.approx(1 / 41)


def test_grouped_shuffles_stay_in_their_groups_and_one_group_is_the_plain_shuffle():
    labels = ["x", "y", "x", "z", "y", "x", "z", "z"]
    rows = uni._check_groups(labels, 8)
    for perm in uni._perms(8, 20, 5, rows):
        assert sorted(perm.tolist()) == list(range(8))
        assert all(labels[int(j)] == labels[i] for i, j in enumerate(perm))
    one = uni._check_groups(np.zeros(8), 8)
    assert all(torch.equal(p, q) for p, q in zip(uni._perms(8, 5, 3, one), uni._perms(8, 5, 3), strict=True))
    x, y = randn(8, seed=1), randn(8, seed=2)
    assert permutation_null(lambda u, v: float(u @ v), x, y, n_perm=5, groups=["g"] * 8) == permutation_null(
        lambda u, v: float(u @ v), x, y, n_perm=5
    )


@pytest.mark.parametrize(
    ("groups", "error", "match"),
    [
        ([0, 1, 2], ValueError, "one label per row: 6 rows, got 3"),
        (list(range(6)), ValueError, "group of its own"),
        ("aabbcc", TypeError, "sequence of one label per row"),
        ([[0], [0], [1], [1], [2], [2]], TypeError, "hashable"),
    ],
)
def test_grouped_null_bad_groups(groups, error, match):
    a, b = randn(6, 2, seed=3), randn(6, 3, seed=4)
    with pytest.raises(error, match=match):
        correspondence(a, b, [0], groups=groups)
    with pytest.raises(error, match=match):
        permutation_null(linear_cka, a, b, groups=groups)


# -- linear maps ---------------------------------------------------------------------------------------
def test_fit_linear_map_recovers_a_planted_map_exactly():
    x_a = randn(60, 8, seed=30)
    w, bias = randn(8, 5, seed=31), randn(5, seed=32)
    x_b = x_a @ w + bias
    fitted = fit_linear_map(x_a, x_b, ridge=0.0)
    torch.testing.assert_close(fitted.weight, w.double(), atol=1e-4, rtol=0)
    torch.testing.assert_close(fitted(x_a), x_b, atol=1e-4, rtol=0)
    assert fitted.r2(x_a, x_b) == pytest.approx(1.0, abs=1e-6)
    x1, x2 = randn(8, seed=33), randn(8, seed=34)
    torch.testing.assert_close(fitted.direction(x1 - x2), fitted(x1) - fitted(x2), atol=1e-5, rtol=0)
    assert fitted(x1).dtype == torch.float32 and fitted(x1).shape == (5,)


def test_fit_linear_map_r2_below_one_with_noise_and_ridge_shrinks():
    x_a = randn(60, 8, seed=35)
    x_b = x_a @ randn(8, 5, seed=36) + 0.5 * randn(60, 5, seed=37)
    fitted = fit_linear_map(x_a, x_b)
    assert 0.5 < fitted.r2(x_a, x_b) < 0.99
    # 1 - SSE / SST with SST around x_b's column means: unchanged by an offset of B
    sse = float((fitted(x_a).double() - x_b.double()).square().sum())
    sst = float((x_b.double() - x_b.double().mean(0)).square().sum())
    assert fitted.r2(x_a, x_b) == pytest.approx(1 - sse / sst, abs=1e-9)
    shifted = x_b + 50.0
    assert fit_linear_map(x_a, shifted).r2(x_a, shifted) == pytest.approx(fitted.r2(x_a, x_b), abs=1e-6)
    strong = fit_linear_map(x_a, x_b, ridge=100.0)
    assert strong.weight.norm() < fitted.weight.norm() / 5


@pytest.mark.parametrize(("n", "d_a"), [(40, 6), (5, 12)])
def test_fit_linear_map_ridge_is_the_documented_closed_form(n, d_a):
    # (5, 12): n < d_a, the n x n form
    x_a, x_b = randn(n, d_a, seed=38).double(), randn(n, 3, seed=39).double()
    xc, yc = x_a - x_a.mean(0), x_b - x_b.mean(0)
    lam = 0.1 * float(torch.trace(xc.T @ xc)) / d_a
    expected = torch.linalg.solve(xc.T @ xc + lam * torch.eye(d_a, dtype=torch.float64), xc.T @ yc)
    fitted = fit_linear_map(x_a, x_b, ridge=0.1)
    torch.testing.assert_close(fitted.weight, expected, atol=1e-10, rtol=0)
    torch.testing.assert_close(fitted.mean_b, x_b.mean(0))


# -- bad input -----------------------------------------------------------------------------------------
def test_bad_inputs_get_clear_errors():
    x = randn(10, 3)
    with pytest.raises(
        ValueError, match="x has 10 rows but y has 12; row i must be the same example in both"
    ):
        linear_cka(x, randn(12, 3))
    nan = x.clone()
    nan[4, 1] = float("nan")
    with pytest.raises(
        ValueError, match=r"y has 1 non-finite values \(NaN or inf\), the first at index \(4, 1\)"
    ):
        linear_cka(x, nan)
    with pytest.raises(ValueError, match="must be .n examples, d. .2-D., got shape"):
        linear_cka(x, randn(10, 3, 2))
    with pytest.raises(ValueError, match="x has 3 rows .examples.; debiased CKA needs at least 4"):
        linear_cka(x[:3], x[:3], debiased=True)
    with pytest.raises(ValueError, match="same in every row"):
        linear_cka(torch.ones(10, 3), x)
    with pytest.raises(ValueError, match=r"index 3, out of range for acts_a with 3 columns \(valid: 0..2\)"):
        best_matches(x, x, [0, 3])
    with pytest.raises(TypeError, match="integer column indices"):
        best_matches(x, x, torch.tensor([1.0]))
    with pytest.raises(ValueError, match="features_a is empty"):
        best_matches(x, x, [])
    with pytest.raises(ValueError, match=r"threshold must be a correlation in \[-1, 1\], got 1.5"):
        correspondence(x, x, [0], threshold=1.5)
    with pytest.raises(ValueError, match="n_perm must be an int >= 1, got 0"):
        permutation_null(linear_cka, x, x, n_perm=0)
    with pytest.raises(ValueError, match="ridge must be a number >= 0"):
        fit_linear_map(x, x, ridge=-1.0)
    with pytest.raises(ValueError, match="3 columns but reps\\['a'\\] has 2"):
        class_similarity({"a": randn(3, 2), "b": randn(3, 3)})
    with pytest.raises(ValueError, match="x has 4 columns but the map is from a space of 3"):
        fit_linear_map(x, x)(randn(2, 4))


def test_strata_test_the_geometry_inside_groups_not_between_them():
    """Two groups of 4 classes: both models separate the groups (a shared block structure), but
    within the groups model B's geometry is unrelated to A's. Without strata the block structure
    alone makes the matrices correlate; with strata only within-group pairs count and the
    relabelling stays within groups, so the test sees no shared geometry."""
    gen = torch.Generator().manual_seed(3)
    k = 8
    strata = ["s"] * 4 + ["t"] * 4
    block = torch.tensor([[1.0 if strata[i] == strata[j] else -1.0 for j in range(k)] for i in range(k)])

    def noisy():
        x = torch.randn(k, k, generator=gen) * 0.3
        return block + (x + x.T) / 2

    a, b = noisy(), noisy()
    pooled = similarity_correlation(a, b, n_perm=500)
    within = similarity_correlation(a, b, n_perm=500, strata=strata)
    assert pooled.r > 0.5 and pooled.p_value < 0.01
    assert within.p_value > 0.05
    # the within-group pairs alone: 6 + 6 of the 28
    i, j = torch.triu_indices(k, k, offset=1)
    keep = [strata[p] == strata[q] for p, q in zip(i.tolist(), j.tolist(), strict=True)]
    from scipy.stats import spearmanr

    expected = spearmanr(a[i, j][keep].numpy(), b[i, j][keep].numpy()).statistic
    assert within.r == pytest.approx(float(expected), abs=1e-12)
    same = similarity_correlation(a, a, n_perm=200, strata=strata)
    assert same.r == pytest.approx(1.0) and same.p_value < 0.05


def test_strata_bad_input():
    m = torch.eye(5) + 0.1 * torch.arange(25.0).reshape(5, 5)
    m = (m + m.T) / 2
    with pytest.raises(ValueError, match="strata must be a sequence of K = 5 group labels"):
        similarity_correlation(m, m, strata=["a", "b"])
    with pytest.raises(ValueError, match="leave 0 pairs of classes inside a group"):
        similarity_correlation(m, m, strata=["a", "b", "c", "d", "e"])
