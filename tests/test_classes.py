"""Equivalence classes: datasets, splits, reads, class profiles (planted features), K = 2 against CAA."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

import tlsteer
from tlsteer import (
    ClassDataset,
    ClassProfile,
    ContrastSet,
    class_reads,
    load_class_dataset,
    raw_class_profile,
)
from tlsteer.classes import class_reads_by_hook
from tlsteer.data import reply_span
from tlsteer.profile import auroc
from tlsteer.sae import SAEClassProfile, class_profile

HOOK = "blocks.1.hook_resid_post"
TOY = {
    "calm": [
        {"prompt": "how was it", "response": "it was fine, thanks"},
        {"prompt": "any news", "response": "nothing much today"},
        {"prompt": "ok?", "response": "all good here"},
    ],
    "angry": [
        {"prompt": "how was it", "response": "awful!! never again"},
        {"prompt": "any news", "response": "stop asking me"},
    ],
    "plain": ["just a plain text", "another text, no chat", "third one"],
}


def toy(**kw):
    return ClassDataset.from_dict({"name": "toy", "examples": TOY, **kw})


# -- datasets -------------------------------------------------------------------------------
def test_dict_json_and_csv_give_the_same_set(tmp_path):
    ds = toy()
    assert ds.classes == ("calm", "angry", "plain") and ds.sizes == {"calm": 3, "angry": 2, "plain": 3}
    path = tmp_path / "toy.json"
    path.write_text(json.dumps({"name": "toy", "examples": TOY}))
    assert ClassDataset.from_json(path) == ds
    with (tmp_path / "toy.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "prompt", "text"])
        for c, examples in TOY.items():
            for e in examples:
                e = e if isinstance(e, dict) else {"prompt": "", "response": e}
                writer.writerow([c, e["prompt"], e["response"]])
    assert ClassDataset.from_csv(tmp_path / "toy.csv").examples == ds.examples
    ordered = ClassDataset.from_csv(tmp_path / "toy.csv", order=["plain", "calm", "angry"])
    assert ordered.ordinal and ordered.classes == ("plain", "calm", "angry") and ordered.level("angry") == 2


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        ({"examples": {"a": ["x", "y"]}}, ValueError, "at least 2 classes"),
        ({"examples": {"a": ["x"], "b": ["y", "z"]}}, ValueError, "class 'a' has 1 example"),
        ({"classes": ["a", "a"], "examples": {"a": ["x", "y"]}}, ValueError, "duplicate class name 'a'"),
        (
            {"classes": ["a", "b"], "examples": {"a": ["x", "y"], "b": ["y", "z"], "c": ["q", "r"]}},
            ValueError,
            "unknown class 'c'",
        ),
        ({"examples": {"a": ["x", "  "], "b": ["y", "z"]}}, ValueError, "non-empty string"),
        (
            {"examples": {"a": ["x", "y"], "b": ["y", "z"]}, "ordinal": True},
            ValueError,
            "ordinal set needs 'classes'",
        ),
        ({"examples": {"a": ["x", "y"], "b": ["y", {"prompt": "p"}]}}, ValueError, "got keys \\['prompt'\\]"),
        (
            {"examples": {"a": ["x", "y"], "b": ["y", "z"]}, "judge_texts": {"q": ["t"]}},
            ValueError,
            "judge_texts name unknown class 'q'",
        ),
        ({"examples": {"a": ["x", "y"], "b": ["y", "z"]}, "colour": 1}, ValueError, "unknown key 'colour'"),
    ],
)
def test_bad_class_sets_are_refused(data, error, match):
    with pytest.raises(error, match=match):
        ClassDataset.from_dict(data)


def test_levels_and_unknown_classes():
    ds = toy(classes=["calm", "angry", "plain"], ordinal=True)
    assert [ds.level(c) for c in ds.classes] == [0, 1, 2]
    with pytest.raises(ValueError, match="unknown class 'rage'; classes of 'toy'"):
        ds.level("rage")
    with pytest.raises(ValueError, match="not ordinal"):
        toy().level("calm")


def test_splits_are_seeded_disjoint_and_aligned_across_classes():
    ds = load_class_dataset("speaking_styles")
    train, val, test = ds.split(seed=3)
    again = ds.split(seed=3)
    assert (train, val, test) == again and ds.split(seed=4)[2] != test
    for c in ds.classes:
        parts = [p.examples[c] for p in (train, val, test)]
        assert sorted(map(repr, sum(parts, ()))) == sorted(map(repr, ds.examples[c]))
        assert len(parts[2]) == round(0.2 * len(ds.examples[c]))
    prompts = {c: [e.prompt for e in test.examples[c]] for c in ds.classes}
    assert all(p == prompts["formal"] for p in prompts.values())  # a test prompt is a test prompt everywhere
    with pytest.raises(ValueError, match="too few"):
        toy().split()


@pytest.mark.parametrize("name", tlsteer.classes.CLASS_DATASETS)
def test_builtin_class_sets(name):
    ds = load_class_dataset(name)
    assert len(ds.classes) >= 3 and min(ds.sizes.values()) >= 40
    assert all(len(ds.judge_texts[c]) >= 40 for c in ds.classes)
    examples = {e.response for es in ds.examples.values() for e in es}
    assert not examples & {t for ts in ds.judge_texts.values() for t in ts}  # judge texts kept apart
    assert ds.ordinal == (name == "aggression")


# -- reads and profiles ---------------------------------------------------------------------
def reference_reads(model, ds, hook, transform=lambda rows: rows):
    out = {}
    for c in ds.classes:
        rows = []
        for e in ds.examples[c]:
            text = e.text(model)
            ids = tlsteer.tokenize(model, text)
            _, cache = model.run_with_cache(torch.tensor([ids]), names_filter=[hook])
            start = 1 if e.prompt is None else reply_span(model)(text, ids)[0]
            rows.append(transform(cache[hook][0, start:]).mean(0))
        out[c] = torch.stack(rows)
    return out


def test_class_reads_equal_one_example_at_a_time(tiny):
    ds = toy()
    got = class_reads(tiny, ds, HOOK, batch_size=2)
    want = reference_reads(tiny, ds, HOOK)
    for c in ds.classes:
        torch.testing.assert_close(got[c], want[c], atol=1e-4, rtol=1e-4)
    last = class_reads(tiny, ds, HOOK, read=tlsteer.Read.last(), batch_size=3)
    assert last["calm"].shape == (3, tiny.cfg.d_model)
    whole = class_reads(tiny, ds, HOOK, read=tlsteer.Read.mean(), batch_size=3)  # every token, BOS too
    assert not torch.allclose(whole["calm"], got["calm"])
    with pytest.raises(TypeError, match="read"):
        class_reads(tiny, ds, HOOK, read="mean")
    with pytest.raises(KeyError, match="out of range"):
        class_reads(tiny, ds, "blocks.9.hook_resid_post")


def test_class_reads_by_hook_equal_class_reads_per_hook(tiny):
    ds = toy()
    hooks = ["blocks.2.hook_resid_post", HOOK, "blocks.0.hook_resid_pre"]
    got = class_reads_by_hook(tiny, ds, hooks, batch_size=2)
    assert list(got) == hooks
    for hook in hooks:
        want = class_reads(tiny, ds, hook, batch_size=3)
        assert list(got[hook]) == list(ds.classes)
        for c in ds.classes:
            torch.testing.assert_close(got[hook][c], want[c], atol=1e-6, rtol=1e-6)
    double = class_reads_by_hook(tiny, ds, hooks[:2], transform=lambda rows: 2 * rows, d_out=tiny.cfg.d_model)
    torch.testing.assert_close(double[HOOK]["calm"], 2 * got[HOOK]["calm"], atol=1e-5, rtol=1e-5)
    with pytest.raises(KeyError, match="out of range"):
        class_reads_by_hook(tiny, ds, [HOOK, "blocks.9.hook_resid_post"])
    with pytest.raises(KeyError, match="closest"):
        class_reads_by_hook(tiny, ds, ["blocks.1.hook_resid_psot"])
    with pytest.raises(TypeError, match="list of hook names"):
        class_reads_by_hook(tiny, ds, HOOK)
    with pytest.raises(ValueError, match="empty"):
        class_reads_by_hook(tiny, ds, [])
    with pytest.raises(ValueError, match="twice"):
        class_reads_by_hook(tiny, ds, [HOOK, HOOK])
    with pytest.raises(ValueError, match="d_out"):
        class_reads_by_hook(tiny, ds, [HOOK], d_out=3)


def test_two_classes_reproduce_the_caa_class_mean_formula(tiny_llama):
    ds = ClassDataset.from_dict({"examples": {k: TOY[k] for k in ("calm", "angry")}})
    profile = raw_class_profile(tiny_llama, ds, HOOK)
    texts = {c: ds.texts(tiny_llama, c) for c in ds.classes}
    caa = tlsteer.train_steering_vector(  # a ContrastSet: the difference of class means
        tiny_llama,
        ContrastSet(texts["angry"], texts["calm"]),
        layers=[1],
        read=tlsteer.Read.mean(reply_span(tiny_llama)),
    )
    assert caa.hooks == [HOOK]
    torch.testing.assert_close(profile.direction("calm", "angry")[HOOK], caa[HOOK], atol=1e-5, rtol=0)
    half = profile.mean_centred("angry")[HOOK]
    torch.testing.assert_close(half, caa[HOOK] / 2, atol=1e-5, rtol=0)


def orthonormal_sae(d_in=32, d_sae=16, seed=0):
    """encode(codes @ W_dec) == codes for nonnegative codes: W_dec has orthonormal rows, W_enc = W_dec.T."""
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(hook_name=HOOK)))
    q, _ = torch.linalg.qr(torch.randn(d_in, d_sae, generator=torch.Generator().manual_seed(seed)))
    with torch.no_grad():
        sae.W_dec.copy_(q.T)
        sae.W_enc.copy_(q)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


SHARED, PLANTED, GROUP = 0, {"a": 3, "b": 5, "c": 7}, 9  # GROUP: in a and b, not c


def planted_profile(seed=0, n_bootstrap=50):
    gen = torch.Generator().manual_seed(seed)
    sae = orthonormal_sae()
    sizes = {"a": 12, "b": 20, "c": 7}
    codes = {}
    for c, n in sizes.items():
        code = 0.3 * torch.rand(n, 16, generator=gen) * (torch.rand(n, 16, generator=gen) < 0.2)
        code[:, SHARED] = 1 + torch.rand(n, generator=gen)
        code[:, PLANTED[c]] = 2 + torch.rand(n, generator=gen)
        if c != "c":
            code[:, GROUP] = 0.6 + 0.2 * torch.rand(n, generator=gen)
        codes[c] = code
    raw = {c: codes[c] @ sae.W_dec.detach() for c in sizes}
    with torch.no_grad():
        feats = {c: sae.encode(raw[c]) for c in sizes}
    for c in sizes:
        torch.testing.assert_close(feats[c], codes[c], atol=1e-5, rtol=0)
    profile = SAEClassProfile.from_representations(
        raw, HOOK, feats, n_bootstrap=n_bootstrap, seed=seed, sae=sae
    )
    return profile, sae, codes


@pytest.mark.parametrize("rank_by", ["effect", "mean_diff", "auroc"])
def test_planted_distinctive_and_shared_features_are_recovered(rank_by):
    profile, _, _ = planted_profile()
    for c, f in PLANTED.items():
        table = profile.distinctive(c, k=1, rank_by=rank_by)
        assert table.feature.tolist() == [f] and table.stability[0] == 1.0
        assert table.frequency_in[0] == 1.0
    shared = profile.shared(k=1)
    assert shared.feature.tolist() == [SHARED] and shared.stability[0] == 1.0
    assert profile.shared(k=1, classes=["a", "b"]).feature.tolist() == [SHARED]
    # shared by the group a, b and absent from c: the contrast ranking finds it, min_mean does not
    group = profile.shared(k=1, classes=["a", "b"], rank_by="contrast")
    assert group.feature.tolist() == [GROUP] and group.stability[0] == 1.0
    feats = profile.reps["feature"]
    assert group.max_rest_mean[0] == pytest.approx(float(feats["c"][:, GROUP].mean()))
    assert profile.shared(k=2, classes=["a", "b"]).feature.tolist() == [SHARED, GROUP]
    two = profile.distinctive("a", k=3, stable_only=False)
    assert two.feature[0] == PLANTED["a"] and len(two) == 3


def test_profile_statistics_equal_their_definitions():
    profile, sae, codes = planted_profile(seed=1)
    table = profile.distinctive("b", k=16, stable_only=False)
    feats = profile.reps["feature"]
    inside, outside = feats["b"], torch.cat([feats["a"], feats["c"]])
    for _, row in table.iterrows():
        f = int(row.feature)
        x, y = inside[:, f], outside[:, f]
        pooled = (((len(x) - 1) * x.var() + (len(y) - 1) * y.var()) / (len(x) + len(y) - 2)).sqrt()
        assert row.mean_diff == pytest.approx(float(x.mean() - y.mean()), abs=1e-5)
        assert row.effect == pytest.approx(float((x.mean() - y.mean()) / max(float(pooled), 1e-8)), rel=1e-4)
        pairs = [(a > b) + 0.5 * (a == b) for a in x.tolist() for b in y.tolist()]
        assert row.auroc == pytest.approx(sum(pairs) / len(pairs), abs=1e-6)
    assert float(auroc(inside[:, :2], outside[:, :2])[0]) == pytest.approx(
        float(table.auroc[table.feature == 0].iloc[0])
    )
    # directions: feature space decoded through W_dec (no bias), raw space the mean difference
    decoded = profile.direction("a", "c", space="feature")[HOOK]
    want = (codes["c"].mean(0) - codes["a"].mean(0)) @ sae.W_dec.detach()
    torch.testing.assert_close(decoded, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(profile.direction("a", "c")[HOOK], want, atol=1e-5, rtol=0)
    fv = profile.feature_vector("a")
    rest = torch.cat([codes["b"], codes["c"]]).mean(0)
    torch.testing.assert_close(fv.values, codes["a"].mean(0) - rest, atol=1e-5, rtol=0)
    sim = profile.similarity("feature")
    assert sim.shape == (3, 3) and sim.loc["a", "a"] == pytest.approx(1.0)


def test_stability_is_reproducible_under_a_seed():
    one = planted_profile(seed=2)[0].distinctive("a", k=5, stable_only=False)
    two = planted_profile(seed=2)[0].distinctive("a", k=5, stable_only=False)
    assert one.equals(two)


def test_profile_bad_input():
    profile, _, _ = planted_profile()
    with pytest.raises(ValueError, match="unknown class 'z'"):
        profile.distinctive("z")
    with pytest.raises(ValueError, match="unknown space 'latent'"):
        profile.means("latent")
    with pytest.raises(ValueError, match="unknown rank_by 'size'"):
        profile.distinctive("a", rank_by="size")
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        profile.shared(k=0)
    with pytest.raises(ValueError, match="distinct class names"):
        profile.shared(classes=["a", "a"])
    with pytest.raises(ValueError, match="unknown rank_by 'max'"):
        profile.shared(rank_by="max")
    with pytest.raises(ValueError, match="needs a group smaller than all classes"):
        profile.shared(rank_by="contrast")
    raw_only = ClassProfile.from_representations({"a": torch.ones(2, 3), "b": torch.zeros(2, 3)}, HOOK)
    with pytest.raises(ValueError, match="no 'feature' space"):
        raw_only.shared()
    with pytest.raises(ValueError, match="non-finite"):
        ClassProfile.from_representations(
            {"a": torch.full((2, 3), float("nan")), "b": torch.zeros(2, 3)}, HOOK
        )


def test_class_profile_runs_the_model_once_per_batch_in_both_spaces(tiny_llama):
    sae = orthonormal_sae(d_in=tiny_llama.cfg.d_model)
    ds = toy()
    profile = class_profile(tiny_llama, sae, ds, batch_size=2, n_bootstrap=5)
    raw = class_reads(tiny_llama, ds, HOOK)
    with torch.no_grad():
        feats = reference_reads(tiny_llama, ds, HOOK, sae.encode)  # the mean of the encoded tokens
    for c in ds.classes:
        torch.testing.assert_close(profile.reps["raw"][c], raw[c], atol=1e-5, rtol=0)
        torch.testing.assert_close(profile.reps["feature"][c], feats[c], atol=1e-4, rtol=1e-4)
    assert profile.distinctive("angry", k=2, stable_only=False).shape[0] == 2


def test_class_plots_draw_what_the_profile_holds(tmp_path):
    from tlsteer.eval.class_plots import plot_class_features, plot_class_map, plot_class_similarity

    profile, _, _ = planted_profile(n_bootstrap=5)
    fig = plot_class_features(profile, k=1, path=tmp_path / "features.png")
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == [f"{f} ({c}, 1.00)" for c, f in PLANTED.items()]
    image = fig.axes[0].images[0].get_array()
    assert image.shape == (3, 3) and all(image[i].argmax() == i for i in range(3))  # each class tops its own
    assert len(plot_class_map(profile).axes) == 2
    sim = plot_class_similarity(profile, path=tmp_path / "sim.png")
    assert len(sim.axes) == 2 and (tmp_path / "features.png").stat().st_size > 0


def test_spearman_equals_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    from tlsteer.profile import spearman

    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 5, (40,), generator=gen).float()
    y = x + torch.randint(0, 3, (40,), generator=gen).float()
    assert spearman(x, y) == pytest.approx(float(stats.spearmanr(x, y).statistic), abs=1e-12)
    with pytest.raises(ValueError, match="same length"):
        spearman([1, 2], [1, 2, 3])


def ordinal_reps(seed, sizes=(15, 9, 12, 10), d=24):
    gen = torch.Generator().manual_seed(seed)
    axis = torch.nn.functional.normalize(torch.randn(d, generator=torch.Generator().manual_seed(99)), dim=0)
    return {f"level{i}": 2.0 * i * axis + torch.randn(n, d, generator=gen) for i, n in enumerate(sizes)}, axis


@pytest.mark.parametrize("method", ["lstsq", "centroid"])
def test_ordinal_direction_recovers_a_planted_axis_and_ranks_held_out_examples(method):
    train_reps, axis = ordinal_reps(0)
    test_reps, _ = ordinal_reps(1)
    classes = list(train_reps)
    train = ClassProfile.from_representations(train_reps, HOOK, ordinal=True, classes=classes)
    test = ClassProfile.from_representations(test_reps, HOOK, ordinal=True, classes=classes)
    weights = train.ordinal_weights(method)
    cos = float(torch.nn.functional.cosine_similarity(weights, axis, dim=0))
    assert cos > 0.8
    assert test.ordinal_spearman(weights) > 0.8
    random_dir = torch.randn(24, generator=torch.Generator().manual_seed(5))
    assert abs(test.ordinal_spearman(random_dir - (random_dir @ axis) * axis)) < 0.3
    vec = train.ordinal_direction(method)
    torch.testing.assert_close(vec[HOOK], weights)
    if method == "centroid":
        torch.testing.assert_close(weights, train_reps["level3"].mean(0) - train_reps["level0"].mean(0))


def test_ordinal_needs_an_ordered_set():
    reps, _ = ordinal_reps(0)
    profile = ClassProfile.from_representations(reps, HOOK)
    with pytest.raises(ValueError, match="not ordinal"):
        profile.ordinal_weights()
    ordered = ClassProfile.from_representations(reps, HOOK, ordinal=True)
    with pytest.raises(ValueError, match="unknown method 'pca'"):
        ordered.ordinal_weights("pca")


class ParityJudge:
    """Labels a text by its length: deterministic, so a reference loop must match exactly."""

    classes = ("calm", "angry", "plain")
    held_out_accuracy = 1.0

    def predict(self, texts):
        return [self.classes[len(t) % 3] for t in texts]


def test_transfer_matrix_equals_a_one_prompt_at_a_time_loop(tiny_llama):
    from tlsteer.eval.transfer import class_switch_methods, source_prompts, transfer_matrix

    ds = ClassDataset.from_dict(
        {c: [{"prompt": f"q{i} {c}", "response": f"r{i} {c}"} for i in range(4)] for c in ParityJudge.classes}
    )
    prompts = source_prompts(tiny_llama, ds, n=2, seed=1)
    assert prompts == source_prompts(tiny_llama, ds, n=2, seed=1)
    assert all(len(p) == 2 and all("r" in t for t in p) for p in prompts.values())  # primed with a reply
    profile = raw_class_profile(tiny_llama, ds, HOOK)
    steer = class_switch_methods(profile, 0.5, norm=3.0)["centroid"]
    result = transfer_matrix(tiny_llama, ParityJudge(), prompts, steer, max_new_tokens=4, batch_size=3)
    judge = ParityJudge()
    for i, rows in prompts.items():
        for j in ds.classes:
            how = steer(i, j)
            assert isinstance(how, tlsteer.Steering) and not how.prefix
            assert how.is_unsteered or how.positions == tlsteer.Positions.last()
            alone = [tlsteer.generate(tiny_llama, [p], how, max_new_tokens=4, chat=False)[0] for p in rows]
            assert result.generations[(i, j)] == alone
            assert result.matrix.loc[i, j] == pytest.approx(judge.predict(alone).count(j) / len(alone))
    assert steer("calm", "calm") == tlsteer.Steering()
    switch = steer("calm", "angry")
    ((hook, edit),) = switch.edits
    assert hook == HOOK and switch.positions == tlsteer.Positions.last()
    # the direction, rescaled to strength * norm = 0.5 * 3.0 (the edit holds multiplier * direction)
    assert float(edit.direction.norm()) == pytest.approx(1.5, rel=1e-5)
    assert float(edit.direction @ profile.direction("calm", "angry")[HOOK]) > 0


# -- bad input: n_bootstrap, dataset shape, key typos, file encodings, one-token texts -------
def test_a_profile_without_resamples_refuses_a_stability_filter(tiny_llama):
    profile, _, _ = planted_profile(n_bootstrap=0)
    with pytest.raises(
        ValueError,
        match=r"^distinctive with stable_only=True needs a stability estimate, but this profile was built "
        r"with n_bootstrap=0 .*build it with n_bootstrap >= 1 \(default 50\), or pass stable_only=False",
    ):
        profile.distinctive("a", stable_only=True)
    with pytest.raises(ValueError, match=r"^shared with stable_only=True needs a stability estimate"):
        profile.shared(k=3)
    table = profile.distinctive("a", k=3, stable_only=False)
    assert len(table) == 3 and table.stability.isna().all()  # no estimate, not a zero one
    assert profile.shared(k=1, stable_only=False).stability.isna().all()
    for build in (
        lambda n: raw_class_profile(tiny_llama, toy(), HOOK, n_bootstrap=n),
        lambda n: class_profile(tiny_llama, orthonormal_sae(), toy(), n_bootstrap=n),
    ):
        with pytest.raises(ValueError, match=r"needs a stability estimate.*n_bootstrap=0"):
            build(0).distinctive("calm", space="raw", stable_only=True)
        with pytest.raises(ValueError, match=r"^n_bootstrap must be an int >= 0 .*got -1$"):
            build(-1)
    with pytest.raises(ValueError, match=r"^n_bootstrap must be an int >= 0"):
        ClassProfile.from_representations(
            {"a": torch.ones(2, 3), "b": torch.zeros(2, 3)}, HOOK, n_bootstrap=-3
        )


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.1, 1.5])
def test_min_stability_must_be_a_share(bad):
    profile, _, _ = planted_profile(n_bootstrap=3)
    with pytest.raises(ValueError, match=r"^min_stability must be a number in \[0, 1\], got "):
        profile.distinctive("a", min_stability=bad)
    with pytest.raises(ValueError, match=r"^min_stability must be a number in \[0, 1\], got "):
        profile.shared(min_stability=bad)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: ClassDataset.from_dict({"examples": ["fine", "NO!"]}), r"examples must be a mapping"),
        (
            lambda: ClassDataset("toy", ["a", "b"], []),
            r"^toy: examples must be a mapping \{class_name: \[examples\]\}, got list",
        ),
        (
            lambda: ClassDataset("toy", ["a", "b"], {"a": ["x", "y"], "b": ["z", "w"]}, judge_texts=["t"]),
            r"judge_texts must be a mapping",
        ),
        (
            lambda: ClassDataset.from_dict([["fine", "ok"], ["NO!", "ugh"]]),
            r"^expected a mapping \{class_name: \[examples\]\} or \{'examples'",
        ),
    ],
)
def test_a_class_set_from_a_list_says_it_wants_a_mapping(build, match):
    with pytest.raises(TypeError, match=match):
        build()


def test_a_misspelled_key_is_named_with_the_closest_valid_key():
    examples = {"calm": ["fine", "ok"], "angry": ["NO!", "ugh"]}
    with pytest.raises(
        ValueError,
        match=r"^unknown key 'exmaples' \(its value is a dict, not a list of examples"
        r".*closest valid key: 'examples'",
    ):
        ClassDataset.from_dict({"exmaples": examples})
    with pytest.raises(
        ValueError,
        match=r"^the dict has the top-level key 'name' but no 'examples' "
        r"\(is 'exmaples' a misspelling of 'examples'\?\)",
    ):
        ClassDataset.from_dict({"name": "toy", "exmaples": examples})
    with pytest.raises(
        ValueError, match=r"^unknown key 'clases'; closest: 'classes'; valid keys: 'classes', "
    ):
        ClassDataset.from_dict({"examples": examples, "clases": ["calm", "angry"]})
    assert ClassDataset.from_dict(examples).classes == ("calm", "angry")  # a bare dict still works


CSV_BODY = "class,text\ncalm,caf\u00e9 is fine\ncalm,all good\nangry,NO!\nangry,ugh\n"


def test_a_csv_with_a_byte_order_mark_loads_like_one_without(tmp_path):
    (tmp_path / "plain.csv").write_bytes(CSV_BODY.encode())
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + CSV_BODY.encode())  # as spreadsheets save it
    plain = ClassDataset.from_csv(tmp_path / "plain.csv", name="toy")
    assert ClassDataset.from_csv(tmp_path / "bom.csv", name="toy") == plain
    assert plain.examples["calm"][0].response == "caf\u00e9 is fine"


def test_a_latin1_csv_names_the_file_and_the_byte_or_is_read_with_its_encoding(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(CSV_BODY.encode("latin-1"))
    with pytest.raises(
        ValueError,
        match=r"latin\.csv' is not valid UTF-8: byte b'\\xe9' at offset 19 \(line 2\) cannot be decoded .*"
        r"save the file as UTF-8, or pass encoding=",
    ):
        ClassDataset.from_csv(path)
    assert ClassDataset.from_csv(path, encoding="latin-1").examples["calm"][0].response == "caf\u00e9 is fine"
    with pytest.raises(ValueError, match=r"^unknown encoding 'utf-9'"):
        ClassDataset.from_csv(path, encoding="utf-9")


def test_a_one_token_plain_text_is_named_when_its_response_is_read(tiny_llama):
    ds = ClassDataset.from_dict({"a": ["hello", "x"], "b": ["yo there", "ok go"]}, name="toy")
    with pytest.raises(
        ValueError,
        match=r"^toy: class 'a', example 1 \('x'\) is a plain text of 1 token: Read.reply\(\) "
        r"averages every token of a plain text but the first .*read=Read.last\(\)",
    ):
        class_reads(tiny_llama, ds, HOOK)
    last = class_reads(
        tiny_llama, ds, HOOK, read=tlsteer.Read.last()
    )  # its one token can be read at a position
    assert last["a"].shape == (2, tiny_llama.cfg.d_model)
