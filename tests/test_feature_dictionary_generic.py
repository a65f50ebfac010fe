"""Every feature-level function of ``tlsteer.sae`` on a dictionary that is not an SAE.

:class:`PlainDictionary` is a ReLU autoencoder in plain torch (no sae-lens): it satisfies
:class:`~tlsteer.dictionary.FeatureDictionary` and nothing else. Each function is checked on it by
exact algebra (a steering vector is ``values @ decoder rows``, a feature edit adds the decode
change) and by parity with a sae-lens SAE holding the same weights, which must give the same
numbers and the same fingerprint (so vectors saved before dictionaries were generic still match).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.test_classes import toy
from tests.test_sae import HOOK, PAIRS, PROMPT, TEXTS, random_sae, resid, tokens_of
from tlsteer import ContrastPair, ContrastSet, Positions
from tlsteer.dictionary import FeatureDictionary, check_feature_dictionary, fingerprint, weights_fingerprint
from tlsteer.experiments.contrasts import contrast_from_pairs
from tlsteer.experiments.methods import build_methods
from tlsteer.sae import (
    FeatureVector,
    class_profile,
    encode_steering_vector,
    feature_edit,
    feature_stats,
    feature_steering,
    feature_vector,
    inspect_feature,
    output_scores,
)
from tlsteer.sae.adapter import SAEDictionary, as_feature_dictionary, logit_lens, sae_fingerprint
from tlsteer.vector import SteeringVector

ROOT = Path(__file__).resolve().parents[1]
SCORE_PROMPTS = ["hello there friend", "the rain in spain", "numbers 1 2 3"]


class PlainDictionary:
    """``encode = relu((acts - b_dec) @ W_enc + b_enc)``, ``decode = f @ W_dec + b_dec``: a sae-lens
    StandardSAE's algebra, written here with no sae-lens."""

    def __init__(self, w_enc, b_enc, w_dec, b_dec, hook_name=HOOK):
        self.w_enc, self.b_enc = w_enc.detach().float().clone(), b_enc.detach().float().clone()
        self.w_dec, self.b_dec = w_dec.detach().float().clone(), b_dec.detach().float().clone()
        self._hook_name = hook_name

    @property
    def hook_name(self) -> str:
        return self._hook_name

    @property
    def width(self) -> int:
        return self.w_dec.shape[0]

    @property
    def d_model(self) -> int:
        return self.w_dec.shape[1]

    def encode(self, acts):
        return torch.relu((acts.float().cpu() - self.b_dec) @ self.w_enc + self.b_enc)

    def decode(self, features):
        return features.float().cpu() @ self.w_dec + self.b_dec

    def decoder_rows(self, ids):
        return self.w_dec[ids.long().cpu()]

    def decode_change(self, df, ids):
        return df.float().cpu() @ self.w_dec[ids.long().cpu()]


class ScaledDictionary(PlainDictionary):
    """Affine but not plain: ``decode = (f * scale) @ W_dec + b_dec``, so its decode change is not
    ``df @ decoder_rows``; it says so through ``decode_change``."""

    def __init__(self, *weights, scale, hook_name=HOOK):
        super().__init__(*weights, hook_name=hook_name)
        self.scale = scale

    def decode(self, features):
        return (features.float().cpu() * self.scale) @ self.w_dec + self.b_dec

    def decode_change(self, df, ids):
        ids = ids.long().cpu()
        return (df.float().cpu() * self.scale[ids]) @ self.w_dec[ids]


class Inheriting(FeatureDictionary):
    """Subclasses the protocol and leaves ``decode_change`` out: it inherits ``df @ decoder_rows``."""

    def __init__(self, plain: PlainDictionary):
        self.plain = plain

    @property
    def hook_name(self) -> str:
        return self.plain.hook_name

    @property
    def width(self) -> int:
        return self.plain.width

    @property
    def d_model(self) -> int:
        return self.plain.d_model

    def encode(self, acts):
        return self.plain.encode(acts)

    def decode(self, features):
        return self.plain.decode(features)

    def decoder_rows(self, ids):
        return self.plain.decoder_rows(ids)


def plain_from(sae, hook_name=HOOK) -> PlainDictionary:
    """The plain dictionary with the weights of a sae-lens StandardSAE."""
    assert sae.cfg.apply_b_dec_to_input  # the algebra PlainDictionary writes out
    return PlainDictionary(sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, hook_name)


@pytest.fixture(scope="module")
def sae():
    return random_sae("standard", seed=7)


@pytest.fixture(scope="module")
def plain(sae):
    return plain_from(sae)


def test_the_plain_dictionary_is_a_dictionary_and_encodes_like_the_sae(tiny_llama, sae, plain):
    assert not hasattr(plain, "W_dec") and "sae_lens" not in type(plain).__module__
    assert check_feature_dictionary(plain, tiny_llama) is plain
    assert as_feature_dictionary(plain) is plain and as_feature_dictionary(plain, HOOK, tiny_llama) is plain
    assert isinstance(as_feature_dictionary(sae), SAEDictionary)
    h = resid(tiny_llama, PROMPT)
    with torch.no_grad():
        assert torch.equal(plain.encode(h), sae.encode(h))  # the parity below compares like with like
        assert torch.equal(plain.decode(plain.encode(h)), sae.decode(sae.encode(h)))


def test_the_fingerprint_of_an_sae_is_still_the_hash_of_w_dec(sae, plain):
    for kind in (
        sae,
        random_sae("topk", seed=2),
        random_sae("topk", seed=3, rescale_acts_by_decoder_norm=True),
    ):
        adapted = as_feature_dictionary(kind)
        assert fingerprint(adapted) == sae_fingerprint(kind) == weights_fingerprint(kind.W_dec)
        fv = FeatureVector.from_dictionary(kind, torch.ones(64))
        assert fv.fingerprint == sae_fingerprint(kind) and fv.width == fv.d_sae == 64
    # the same decoder as a plain dictionary: the same identity, so a vector moves between them
    assert fingerprint(plain) == sae_fingerprint(sae)
    fv = FeatureVector.from_dictionary(plain, torch.linspace(-1.0, 1.0, 64))
    assert fv == FeatureVector.from_dictionary(sae, torch.linspace(-1.0, 1.0, 64))
    assert torch.equal(fv.to_steering_vector(sae)[HOOK], fv.to_steering_vector(plain)[HOOK])
    assert fingerprint(plain_from(random_sae("standard", seed=8))) != fingerprint(plain)


@pytest.mark.embedded
def test_the_shipped_sae_keeps_the_fingerprint_its_committed_results_name():
    from tlsteer.sae import embedded_sae_layers, load_embedded_sae

    saved = json.loads((ROOT / "benchmarks/results/token_view.json").read_text())
    if saved["layer"] not in embedded_sae_layers():
        pytest.skip(f"no shipped SAE at layer {saved['layer']}")
    shipped = load_embedded_sae(saved["layer"])
    expected = saved["feature_view"]["sae_fingerprint"]
    assert fingerprint(as_feature_dictionary(shipped)) == sae_fingerprint(shipped) == expected


def test_the_three_formulas_on_a_dictionary_equal_their_definitions(tiny_llama, sae, plain):
    model = tiny_llama
    with torch.no_grad():
        pos = torch.stack([plain.encode(resid(model, p)[-1]) for p, _ in PAIRS])
        neg = torch.stack([plain.encode(resid(model, n)[-1]) for _, n in PAIRS])
    paired = feature_vector(model, plain, PAIRS, "paired", batch_size=2)
    sums = feature_vector(model, plain, PAIRS, "sums")
    torch.testing.assert_close(paired.values, (pos - neg).mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sums.values, (pos.sum(0) - neg.sum(0)) / len(PAIRS), atol=1e-5, rtol=1e-5)
    positives, negatives = ["good day", "fine", "a lovely one"], ["bad", "awful weather"]
    means = feature_vector(model, plain, ContrastSet(positives, negatives), "class_means")
    with torch.no_grad():
        p = torch.stack([plain.encode(resid(model, t)[-1]) for t in positives])
        n = torch.stack([plain.encode(resid(model, t)[-1]) for t in negatives])
    torch.testing.assert_close(means.values, p.mean(0) - n.mean(0), atol=1e-5, rtol=1e-5)
    assert (paired.hook_name, paired.fingerprint, paired.width) == (HOOK, fingerprint(plain), 64)
    assert (paired.values != 0).any() and (means.values != 0).any()
    # the same weights as a sae-lens SAE: the same vectors, provenance and identity included
    for formula, data in (
        ("paired", PAIRS),
        ("sums", PAIRS),
        ("class_means", ContrastSet(positives, negatives)),
    ):
        assert feature_vector(model, plain, data, formula) == feature_vector(model, sae, data, formula)
    direction = torch.randn(32, generator=torch.Generator().manual_seed(0))
    control = encode_steering_vector(plain, SteeringVector({HOOK: direction}))
    with torch.no_grad():
        assert torch.equal(control.values, plain.encode(direction[None])[0])


def test_selections_and_to_steering_vector_decode_through_the_decoder_rows(tiny_llama, sae, plain):
    fv = feature_vector(tiny_llama, plain, PAIRS)
    chosen = fv.sign("positive").top_k(5)
    assert (
        chosen.features == sorted(f for f in fv.values.topk(5).indices.tolist() if fv.values[f] > 0)
        and len(chosen.features) > 0
    )
    vec = chosen.to_steering_vector(plain)
    assert vec.hooks == [HOOK] and vec.metadata.aggregator == "sae:paired"
    assert torch.equal(vec[HOOK], chosen.values @ plain.w_dec)  # values @ decoder rows, exactly
    assert torch.equal(vec[HOOK], chosen.to_steering_vector(sae)[HOOK])  # the SAE with the same weights
    assert torch.equal(vec[HOOK], chosen.to_steering_vector(Inheriting(plain))[HOOK])  # the inherited path
    table = chosen.table(tiny_llama, plain, k=2)
    assert table.equals(chosen.table(tiny_llama, sae, k=2)) and len(table) == 2
    top = (plain.w_dec[table["feature"][0]] @ tiny_llama.W_U.detach()).topk(5).indices.tolist()
    assert table["top_tokens"][0] == " ".join(repr(tiny_llama.tokenizer.decode([t])) for t in top)


def test_a_decoder_that_is_affine_another_way_is_decoded_by_its_decode_change(tiny_llama, plain):
    scale = 0.5 + torch.rand(64, generator=torch.Generator().manual_seed(3))
    scaled = ScaledDictionary(plain.w_enc, plain.b_enc, plain.w_dec, plain.b_dec, scale=scale)
    fv = feature_vector(tiny_llama, scaled, PAIRS)
    direction = fv.to_steering_vector(scaled)[HOOK]
    torch.testing.assert_close(direction, scaled.decode(fv.values) - scaled.decode(torch.zeros(64)))
    assert not torch.allclose(direction, fv.values @ scaled.w_dec, atol=1e-3)  # not the decoder rows
    h = resid(tiny_llama, PROMPT)
    with feature_steering(tiny_llama, scaled, [2, 7], "clamp", values=[3.0, 0.0]).apply(tiny_llama):
        edited = resid(tiny_llama, PROMPT)
    f = scaled.encode(h)
    f_edit = f.clone()
    f_edit[:, [2, 7]] = torch.tensor([3.0, 0.0])
    torch.testing.assert_close(edited, h + scaled.decode(f_edit) - scaled.decode(f), atol=1e-4, rtol=1e-5)


def test_feature_stats_and_output_scores_on_a_dictionary_equal_the_sae_s(tiny_llama, sae, plain):
    stats = feature_stats(tiny_llama, plain, TEXTS, batch_size=3)
    same = feature_stats(tiny_llama, sae, TEXTS, batch_size=3)
    for name in ("density", "mean_active", "first_token_rate"):
        assert torch.equal(getattr(stats, name), getattr(same, name)), name
    with torch.no_grad():
        rows = [plain.encode(resid(tiny_llama, t)) for t in TEXTS]
    counted = torch.cat([r[1:] for r in rows])
    torch.testing.assert_close(stats.density, (counted != 0).float().mean(0))
    assert stats.n_tokens == counted.shape[0] and float(stats.density.sum()) > 0

    last = "blocks.3.hook_resid_post"
    sae_last = random_sae("standard", seed=5, hook=last)
    token = 7
    with torch.no_grad():  # feature 0 writes exactly the unembedding column of one token
        sae_last.W_dec[0] = tiny_llama.W_U[:, token] / tiny_llama.W_U[:, token].norm()
    book = plain_from(sae_last, last)
    ids = [0, 1, 2, 10]
    scores = output_scores(tiny_llama, book, ids, SCORE_PROMPTS, strength=2.0, n_tokens=3)
    assert torch.equal(
        scores, output_scores(tiny_llama, sae_last, ids, SCORE_PROMPTS, strength=2.0, n_tokens=3)
    )
    assert float(scores[0]) == float(scores[ids].max()) and float(scores[0]) > 0.1
    fv = feature_vector(tiny_llama, plain, PAIRS).top_k(3)
    assert (
        output_scores(tiny_llama, plain, fv, SCORE_PROMPTS) != 0
    ).nonzero().flatten().tolist() == fv.features


def test_class_profile_on_a_dictionary_equals_class_profile_on_the_sae(tiny_llama, sae, plain):
    ds = toy()
    got = class_profile(tiny_llama, plain, ds, batch_size=2, n_bootstrap=5)
    ref = class_profile(tiny_llama, sae, ds, batch_size=2, n_bootstrap=5)
    for space in ("raw", "feature"):
        for c in ds.classes:
            assert torch.equal(got.reps[space][c], ref.reps[space][c]), (space, c)
    assert got.feature_vector("calm") == ref.feature_vector("calm")
    assert got.feature_vector("calm", "angry").fingerprint == fingerprint(plain)
    means = got.means("feature")
    towards = got.direction("calm", "angry", space="feature")[HOOK]
    want = (means[ds.classes.index("angry")] - means[ds.classes.index("calm")]) @ plain.w_dec
    torch.testing.assert_close(towards, want, atol=1e-5, rtol=1e-5)
    assert torch.equal(towards, ref.direction("calm", "angry", space="feature")[HOOK])
    centred = got.mean_centred("plain", space="feature")[HOOK]
    torch.testing.assert_close(
        centred, (means[ds.classes.index("plain")] - means.mean(0)) @ plain.w_dec, atol=1e-5, rtol=1e-5
    )
    assert got.distinctive("calm", k=3, space="feature").equals(ref.distinctive("calm", k=3, space="feature"))


def test_inspect_feature_on_a_dictionary_equals_the_sae_s(tiny_llama, sae, plain):
    stats = feature_stats(tiny_llama, plain, TEXTS)
    feature = int(stats.density.argmax())
    report = inspect_feature(tiny_llama, plain, feature, TEXTS, k=3)
    assert report == inspect_feature(tiny_llama, sae, feature, TEXTS, k=3)
    assert report.density == pytest.approx(float(stats.density[feature])) and report.examples
    promoted, suppressed = logit_lens(tiny_llama, plain.w_dec[feature], 3)
    assert report.promoted == tuple(promoted) and report.suppressed == tuple(suppressed)
    best = report.examples[0]
    with torch.no_grad():
        at = plain.encode(resid(tiny_llama, TEXTS[best.text_index])[best.position])[feature]
    assert best.activation == pytest.approx(float(at), abs=1e-5)


def test_feature_steering_on_a_dictionary_adds_its_decode_change(tiny_llama, plain):
    model = tiny_llama
    ids, values = [2, 7, 40], torch.tensor([3.0, 0.0, 1.5])
    h = resid(model, PROMPT)
    edit = feature_edit(plain, ids, "clamp", values=values)
    f = plain.encode(h)
    change = plain.decode_change(values - f[:, ids], torch.tensor(ids))
    assert torch.equal(edit(h), change)  # the edit is the decode change, exactly
    with feature_steering(model, plain, ids, "clamp", values=values).apply(model):
        edited = resid(model, PROMPT)
    torch.testing.assert_close(edited, h + change, atol=1e-5, rtol=1e-5)
    f_edit = f.clone()
    f_edit[:, ids] = values
    torch.testing.assert_close(edited, plain.decode(f_edit) + h - plain.decode(f), atol=1e-4, rtol=1e-5)
    assert (edited - h).abs().max() > 0.1
    added = feature_edit(plain, [1, 5], "add", values=[2.0, -1.0])
    assert torch.equal(added(h)[0], torch.tensor([2.0, -1.0]) @ plain.w_dec[[1, 5]])
    tokens = tokens_of(model)
    with feature_steering(model, plain, [1, 5, 9], "scale", values=1.0).apply(model):
        assert torch.equal(model(tokens), model(tokens))
    fv = feature_vector(model, plain, PAIRS).top_k(10)
    with feature_steering(model, plain, fv, multiplier=-0.5, positions=Positions.start_at(4)).apply(model):
        got = model(tokens)
    with fv.to_steering_vector(plain).apply(model, -0.5, min_token_index=4):
        want = model(tokens)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (got - model(tokens)).abs().max() > 1e-2


def test_build_methods_on_a_dictionary_equal_those_on_the_sae(tiny_llama, sae, plain):
    stats = feature_stats(tiny_llama, plain, TEXTS)
    reps = contrast_from_pairs(tiny_llama, plain, [ContrastPair(p, n) for p, n in PAIRS], HOOK)
    wanted = [
        "caa",
        "feature_full",
        "feature_topk",
        "feature_output",
        "single_feature",
        "clamp",
        "caa_encoded",
    ]

    def build(dictionary):
        return build_methods(
            tiny_llama,
            dictionary,
            HOOK,
            reps,
            3.0,
            stats,
            methods=wanted,
            ks=(3,),
            k_output=2,
            n_candidates=4,
            max_density=1.0,
        )

    got, ref = build(plain), build(sae)
    assert (
        set(got)
        == set(ref)
        == {"caa", "feature_full", "feature_top3", "feature_output"}
        | {
            "single_feature",
            "clamp",
            "caa_encoded",
        }
    )
    for name, method in got.items():
        if method.direction is not None:
            assert torch.equal(method.direction[HOOK], ref[name].direction[HOOK]), name
    diff = reps.feature_difference()
    full = got["feature_full"].direction[HOOK]
    torch.testing.assert_close(full, (diff @ plain.w_dec) / (diff @ plain.w_dec).norm(), atol=1e-6, rtol=1e-5)
    assert got["clamp"].features == ref["clamp"].features and got["clamp"].sae is plain
    ((hook, edit),) = got["clamp"].at(1.0).edits
    assert hook == HOOK and torch.equal(edit.values, ref["clamp"].at(1.0).edits[0][1].values)


def test_a_dictionary_that_does_not_fit_is_refused_by_name(tiny_llama, plain):
    with pytest.raises(
        TypeError,
        match=r"expected a sae-lens SAE or a feature dictionary \(hook_name, width, d_model, encode, decode, "
        r"decoder_rows, decode_change\), got object, which has no W_dec and lacks hook_name",
    ):
        feature_vector(tiny_llama, object(), PAIRS)
    with pytest.raises(
        ValueError,
        match=r"hook_name='blocks.2.hook_resid_post' disagrees with the dictionary's own hook "
        r"'blocks.1.hook_resid_post'",
    ):
        feature_stats(tiny_llama, plain, TEXTS, hook_name="blocks.2.hook_resid_post")
    elsewhere = PlainDictionary(
        plain.w_enc, plain.b_enc, plain.w_dec, plain.b_dec, "blocks.9.hook_resid_post"
    )
    with pytest.raises(KeyError, match="blocks.9.hook_resid_post"):
        inspect_feature(tiny_llama, elsewhere, 0, TEXTS)
    narrow = PlainDictionary(plain.w_enc[:16], plain.b_enc, plain.w_dec[:, :16], plain.b_dec[:16])
    with pytest.raises(ValueError, match="the dictionary has d_model=16 but model.cfg.d_model=32"):
        class_profile(tiny_llama, narrow, toy())
    fv = FeatureVector.from_dictionary(plain, torch.ones(64))
    other = plain_from(random_sae("standard", seed=11))
    with pytest.raises(ValueError, match="this FeatureVector belongs to another dictionary"):
        fv.to_steering_vector(other)
    moved = PlainDictionary(plain.w_enc, plain.b_enc, plain.w_dec, plain.b_dec, "blocks.2.hook_resid_post")
    with pytest.raises(
        ValueError, match="disagrees with the dictionary's own hook 'blocks.2.hook_resid_post'"
    ):
        feature_edit(moved, fv)
    small = PlainDictionary(plain.w_enc[:, :8], plain.b_enc[:8], plain.w_dec[:8], plain.b_dec)
    with pytest.raises(ValueError, match="the vector has width=64 but the dictionary has width=8"):
        fv.check_dictionary(small)
    with pytest.raises(IndexError, match=r"feature 64 is out of range: the dictionary has width=64 features"):
        feature_steering(tiny_llama, plain, [64], "clamp", values=1.0)
    with pytest.raises(ValueError, match="values have 8 entries but the dictionary has width=64"):
        FeatureVector.from_dictionary(plain, torch.ones(8))
