"""The SAE module on tiny models and random sae-lens SAEs: exact algebra, reference loops, hooks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
from sae_lens.saes.sae import SAEMetadata

import tlsteer
from tests.conftest import count_hooks
from tests.conftest import step_logits as generate_steps
from tlsteer import ContrastPair, ContrastSet, Positions, Steering
from tlsteer.dictionary import fingerprint
from tlsteer.sae import (
    FeatureVector,
    encode,
    encode_steering_vector,
    feature_edit,
    feature_steering,
    feature_vector,
    inspect_feature,
    load_sae,
    plot_feature_vector,
    sae_hook_name,
    sae_quality,
)
from tlsteer.sae.adapter import sae_fingerprint

HOOK = "blocks.1.hook_resid_post"
PROMPT = "<|user|>hello there<|end|><|assistant|>"
PROMPTS = ["hi", "a much longer prompt here", "mid size one", "x", "two words"]
PAIRS = [
    ("I love this film", "I hate this film"),
    ("good", "bad weather today"),
    ("a fine day", "an awful day!"),
]
TEXTS = ["The cat sat on the mat.", "Rain again", "Numbers: 1 2 3 4 5 6", "ok"]
MODES = {
    "all": Positions.all(),
    "from": Positions.start_at(9),
    "explicit": Positions.at([3, 10, 12]),
    "last": Positions.last(),
}
GEN_MODES = {**MODES, "from": Positions.start_at(6), "explicit": Positions.at([1, 3, 5, 8])}


def random_sae(kind="standard", seed=0, d_in=32, hook=HOOK, **cfg):
    """A sae-lens SAE with random nonzero weights (tied encoder), a bias, and features that fire."""
    meta = SAEMetadata(hook_name=hook) if hook else SAEMetadata()
    if kind == "standard":
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=64, metadata=meta, **cfg))
    else:
        sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=64, k=8, metadata=meta, **cfg))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w_dec = torch.randn(64, d_in, generator=gen)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        sae.W_dec.copy_(w_dec * (0.5 + torch.rand(64, 1, generator=gen)))
        sae.W_enc.copy_(w_dec.T)
        sae.b_enc.copy_(0.2 * torch.randn(64, generator=gen))
        sae.b_dec.copy_(0.3 * torch.randn(d_in, generator=gen))
    return sae


@pytest.fixture(scope="module")
def standard_sae():
    return random_sae("standard")


@pytest.fixture(scope="module")
def topk_sae():
    return random_sae("topk", seed=1)


@pytest.fixture(scope="module", params=["standard", "topk"])
def sae(request, standard_sae, topk_sae):
    return standard_sae if request.param == "standard" else topk_sae


def tokens_of(model, text=PROMPT):
    return torch.tensor([tlsteer.tokenize(model, text)])


def resid(model, text_or_tokens, hook=HOOK):
    tokens = tokens_of(model, text_or_tokens) if isinstance(text_or_tokens, str) else text_or_tokens
    _, cache = model.run_with_cache(tokens, names_filter=[hook])
    return cache[hook][0]


def enc(sae, rows):
    with torch.no_grad():
        return sae.encode(rows).float()


def step_logits(model, tokens, use_cache, n=5):
    return generate_steps(model, tokens, use_cache, n)[0]


# -- the SAE and its checks ---------------------------------------------------------------
def test_import_without_sae_lens_names_the_extra():
    code = (
        "import sys\nsys.modules['sae_lens'] = None\ntry:\n    import tlsteer.sae\n"
        "except ModuleNotFoundError as err:\n    print('hint:', err)\n"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert 'pip install "tlsteer[sae]"' in out.stdout


def test_hook_name_from_metadata_or_argument(standard_sae):
    assert sae_hook_name(standard_sae) == HOOK
    assert sae_hook_name(standard_sae, HOOK) == HOOK
    with pytest.raises(
        ValueError, match=r"hook_name='blocks.2.hook_resid_post' disagrees with the SAE's own"
    ):
        sae_hook_name(standard_sae, "blocks.2.hook_resid_post")
    bare = random_sae(hook=None)
    with pytest.raises(ValueError, match=r"has no hook name \(sae.cfg.metadata.hook_name is not set\)"):
        sae_hook_name(bare)
    assert sae_hook_name(bare, "blocks.2.hook_resid_post") == "blocks.2.hook_resid_post"


def test_saes_that_do_not_fit_the_model_are_refused(tiny_llama):
    model = tiny_llama
    with pytest.raises(ValueError, match=r"the SAE has d_in=16 but model.cfg.d_model=32"):
        encode(model, random_sae(d_in=16), PROMPTS)
    with pytest.raises(KeyError, match=r"layer 9 is out of range \(4 layers, valid: 0..3\)"):
        encode(model, random_sae(hook="blocks.9.hook_resid_post"), PROMPTS)
    with pytest.raises(ValueError, match="has no hook name"):
        feature_steering(model, random_sae(hook=None), [1], values=1.0)
    with pytest.raises(ValueError, match=r"normalize_activations='layer_norm'"):
        encode(model, random_sae(normalize_activations="layer_norm"), PROMPTS)
    with pytest.raises(
        TypeError, match=r"expected a sae-lens SAE or a feature dictionary .* got object, which has no W_dec"
    ):
        encode(model, object(), PROMPTS)
    assert count_hooks(model) == 0


def test_load_sae_reads_what_save_model_wrote(tmp_path, standard_sae):
    bare = random_sae(hook=None, seed=4)
    bare.save_model(tmp_path / "bare")
    loaded = load_sae(tmp_path / "bare", hook_name=HOOK)
    assert sae_hook_name(loaded) == HOOK
    assert torch.equal(loaded.W_dec, bare.W_dec) and sae_fingerprint(loaded) == sae_fingerprint(bare)
    with pytest.raises(ValueError, match="has no hook name"):
        sae_hook_name(load_sae(tmp_path / "bare"))
    standard_sae.save_model(tmp_path / "std")
    assert sae_hook_name(load_sae(tmp_path / "std")) == HOOK
    with pytest.raises(ValueError, match="disagrees with the SAE's own hook"):
        load_sae(tmp_path / "std", hook_name="blocks.0.hook_resid_post")
    with pytest.raises(FileNotFoundError, match="no SAE at .*expected a folder with cfg.json"):
        load_sae(tmp_path / "missing")
    assert sae_fingerprint(random_sae(seed=5)) != sae_fingerprint(bare)


# -- encode -------------------------------------------------------------------------------
@pytest.mark.parametrize("index", [-1, 0, -2, 1])
def test_encode_batched_equals_one_by_one(tiny, sae, index):
    prompts = ["hi", "a much longer prompt here", "mid size one", "abc", "two words"]
    read = tlsteer.Read.last() if index == -1 else tlsteer.Read.at(index)
    got = encode(tiny, sae, prompts, read=read, batch_size=3)
    assert got.shape == (5, 64) and got.dtype == torch.float32
    for i, prompt in enumerate(prompts):
        ref = enc(sae, resid(tiny, prompt)[index])
        torch.testing.assert_close(got[i], ref, atol=1e-4, rtol=1e-5)
    assert (got != 0).any(dim=1).all()  # features fire


def test_encode_runs_the_model_only_up_to_the_sae_hook(tiny_llama, standard_sae):
    def later_block(act, hook):
        raise AssertionError(f"{hook.name} ran")

    with tiny_llama.hooks(fwd_hooks=[("blocks.2.hook_resid_pre", later_block)]):
        got = encode(tiny_llama, standard_sae, PROMPTS, batch_size=2)
        with pytest.raises(AssertionError, match="blocks.2.hook_resid_pre ran"):
            tiny_llama(tokens_of(tiny_llama))
    assert got.shape == (len(PROMPTS), 64)


def test_encode_span_mean_equals_hand_reference(tiny_llama, sae):
    model = tiny_llama
    prompts = PROMPTS[:4]
    per_prompt = [(0, 2), (3, None), (-4, -1), (0, 1)]
    Read = tlsteer.Read
    got = encode(model, sae, prompts, read=Read.mean(per_prompt), batch_size=2)
    got_callable = encode(model, sae, prompts, read=Read.mean(lambda p, ids: (len(ids) // 2, len(ids))))
    got_all = encode(model, sae, prompts, read=Read.mean())
    for i, prompt in enumerate(prompts):
        h = resid(model, prompt)
        n = h.shape[0]
        start, end = per_prompt[i]
        torch.testing.assert_close(got[i], enc(sae, h[start:end]).mean(0), atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(got_callable[i], enc(sae, h[n // 2 :]).mean(0), atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(got_all[i], enc(sae, h).mean(0), atol=1e-4, rtol=1e-5)
    assert not torch.allclose(got, got_all)  # the span matters


def test_encode_contrast_pairs_and_sets(tiny_llama, topk_sae):
    model, sae = tiny_llama, topk_sae
    pairs = [ContrastPair("abc def", "abc xyz", read_index=-2), ("hello you", "bye")]
    got = encode(model, sae, pairs)
    # the core's one contrast container, at the SAE's hook, tagged with the SAE's fingerprint
    assert isinstance(got, tlsteer.ContrastActivations) and got.hooks == [HOOK]
    assert got.space == "features" and got.dictionary == sae_fingerprint(sae)
    pos, neg = got.rows()
    assert got.paired and pos.shape == neg.shape == (2, 64)
    torch.testing.assert_close(pos[0], enc(sae, resid(model, "abc def")[-2]), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(neg[1], enc(sae, resid(model, "bye")[-1]), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(got.mean_difference(), pos.mean(0) - neg.mean(0), atol=0, rtol=0)
    spans = encode(model, sae, PAIRS, read=tlsteer.Read.mean([(0, 2), (1, None), (0, 3)]))
    h = resid(model, PAIRS[1][1])
    torch.testing.assert_close(spans.negative[HOOK][1], enc(sae, h[1:]).mean(0), atol=1e-4, rtol=1e-5)
    sets = encode(model, sae, ContrastSet(["a", "bb", "ccc"], ["dd"]))
    assert not sets.paired and sets.positive[HOOK].shape == (3, 64) and sets.negative[HOOK].shape == (1, 64)


class LinearBook:
    """A feature dictionary that is no SAE (no W_dec, no cfg): features are ``acts @ w``."""

    def __init__(self, w, hook_name=HOOK):
        self.w, self.hook_name, self.d_model, self.width = w, hook_name, w.shape[0], w.shape[1]

    def encode(self, acts):
        return acts.float() @ self.w

    def decode(self, features):
        return features.float() @ self.w.T

    def decoder_rows(self, ids):
        return self.w.T[ids]

    def decode_change(self, df, ids):
        return df.float() @ self.decoder_rows(ids)


def test_encode_takes_any_feature_dictionary(tiny_llama):
    model = tiny_llama
    book = LinearBook(torch.randn(32, 5, generator=torch.Generator().manual_seed(3)))
    half = tlsteer.Read.mean(lambda prompt, ids: (len(ids) // 2, len(ids)))
    got = encode(model, book, PROMPTS, read=half, batch_size=2)
    ref = torch.stack([(h[h.shape[0] // 2 :] @ book.w).mean(0) for h in (resid(model, p) for p in PROMPTS)])
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-5)
    contrast = encode(model, book, PAIRS)
    assert contrast.dictionary == fingerprint(book) and contrast.hooks == [HOOK] and contrast.paired
    pos, neg = contrast.rows()
    torch.testing.assert_close(neg[1], resid(model, PAIRS[1][1])[-1] @ book.w, atol=1e-4, rtol=1e-5)
    with pytest.raises(ValueError, match=r"disagrees with the dictionary's own hook"):
        encode(model, book, PROMPTS, hook_name="blocks.2.hook_resid_post")
    with pytest.raises(KeyError, match=r"layer 9 is out of range"):
        encode(model, LinearBook(book.w, "blocks.9.hook_resid_post"), PROMPTS)


def test_encode_read_errors(tiny_llama, standard_sae):
    model, sae = tiny_llama, standard_sae
    Read = tlsteer.Read
    with pytest.raises(ValueError, match=r"only a 'mean' read takes a span"):
        Read("position", -1, span=(0, 2))
    with pytest.raises((ValueError, TypeError), match=r"first"):  # the test-time type checker may answer
        Read("first")
    with pytest.raises(TypeError, match=r"read"):  # a string is not a Read
        encode(model, sae, PROMPTS, read="first")
    with pytest.raises(IndexError, match=r"read index 5 is outside prompt 0 \(2 tokens"):
        encode(model, sae, ["hi"], read=Read.at(5))
    with pytest.raises(IndexError, match=r"span \(0, 9\) is outside prompt 0 \(2 tokens"):
        encode(model, sae, ["hi"], read=Read.mean((0, 9)))
    with pytest.raises(ValueError, match=r"span \(1, 1\) of prompt 0 is empty"):
        encode(model, sae, ["hi"], read=Read.mean((1, 1)))
    with pytest.raises(ValueError, match="span has 2 entries but there are 3 pairs"):
        encode(model, sae, PAIRS, read=Read.mean([(0, 1), (0, 1)]))
    with pytest.raises(TypeError, match="not one string"):
        encode(model, sae, "hello")


# -- the three formulas -------------------------------------------------------------------
def _last(model, sae, prompts):
    return torch.stack([enc(sae, resid(model, p)[-1]) for p in prompts])


def test_formulas_equal_reference_loops(tiny_llama, sae):
    model = tiny_llama
    pos = _last(model, sae, [p for p, _ in PAIRS])
    neg = _last(model, sae, [n for _, n in PAIRS])
    paired = feature_vector(model, sae, PAIRS, "paired", batch_size=2)
    sums = feature_vector(model, sae, PAIRS, "sums", batch_size=4)
    means = feature_vector(model, sae, PAIRS, "class_means")
    reference = torch.stack([p - n for p, n in zip(pos, neg, strict=True)]).mean(0)
    torch.testing.assert_close(paired.values, reference, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(sums.values, (pos.sum(0) - neg.sum(0)) / len(PAIRS), atol=1e-4, rtol=1e-5)
    # same data, equal sizes: the formulas agree (batch sizes differ, so up to float error)
    torch.testing.assert_close(paired.values, sums.values, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(means.values, sums.values, atol=1e-5, rtol=1e-6)
    assert (paired.formula, paired.n_examples, paired.hook_name) == ("paired", 3, HOOK)
    assert paired.fingerprint == sae_fingerprint(sae) and paired.model_name == "tiny-llama"
    # unpaired classes of different sizes
    data = ContrastSet(["great", "lovely morning", "superb"], ["awful", "terrible night", "bad", "grim day"])
    got = feature_vector(model, sae, data, "class_means", batch_size=3)
    ref = _last(model, sae, data.positive).mean(0) - _last(model, sae, data.negative).mean(0)
    torch.testing.assert_close(got.values, ref, atol=1e-4, rtol=1e-5)
    assert got.n_examples == 7
    equal = ContrastSet(data.positive, data.negative[:3])
    torch.testing.assert_close(
        feature_vector(model, sae, equal, "sums").values,
        feature_vector(model, sae, equal, "class_means").values,
        atol=1e-6,
        rtol=0,
    )


def test_formula_errors(tiny_llama, standard_sae):
    model, sae = tiny_llama, standard_sae
    unequal = ContrastSet(["a", "b"], ["c"])
    with pytest.raises(
        ValueError, match="formula='paired' needs contrast pairs; a ContrastSet has no pairing"
    ):
        feature_vector(model, sae, unequal, "paired")
    with pytest.raises(ValueError, match="got 2 positives and 1 negatives: use 'class_means'"):
        feature_vector(model, sae, unequal, "sums")
    with pytest.raises(ValueError, match="unknown formula 'mean'; valid: 'paired', 'sums', 'class_means'"):
        feature_vector(model, sae, PAIRS, "mean")
    with pytest.raises(TypeError, match="needs contrast data"):
        feature_vector(model, sae, PROMPTS, "sums")


def test_the_raw_formulas_are_train_steering_vector(tiny_llama):
    """The three formulas on residuals are the core's one raw-vector builder (paired: the default
    mean of differences; class_means, and sums on equal sizes: the class-mean aggregator)."""
    model = tiny_llama
    pos = torch.stack([resid(model, p)[-1] for p, _ in PAIRS])
    neg = torch.stack([resid(model, n)[-1] for _, n in PAIRS])
    for aggregator in (None, tlsteer.class_mean_aggregator()):
        for share_prefix in (True, False):
            vec = tlsteer.train_steering_vector(
                model, PAIRS, layers=[1], aggregator=aggregator, batch_size=2, share_prefix=share_prefix
            )
            assert vec.hooks == [HOOK]
            torch.testing.assert_close(vec[HOOK], (pos - neg).mean(0), atol=1e-4, rtol=1e-5)
    span = tlsteer.train_steering_vector(model, PAIRS, layers=[1], read=tlsteer.Read.mean((0, 2)))
    ref = torch.stack([resid(model, p)[:2].mean(0) - resid(model, n)[:2].mean(0) for p, n in PAIRS]).mean(0)
    torch.testing.assert_close(span[HOOK], ref, atol=1e-4, rtol=1e-5)
    assert span.metadata.read_index == "mean over (0, 2)"


def test_to_steering_vector_decodes_values_at_w_dec(tiny_llama, sae, standard_sae, topk_sae):
    fv = feature_vector(tiny_llama, sae, PAIRS)
    vec = fv.to_steering_vector(sae)
    assert vec.hooks == [HOOK] and vec.metadata.aggregator == "sae:paired" and vec.metadata.n_pairs == 3
    torch.testing.assert_close(vec[HOOK], fv.values @ sae.W_dec.detach(), atol=1e-6, rtol=1e-6)
    other = topk_sae if sae is standard_sae else standard_sae
    with pytest.raises(ValueError, match="belongs to another dictionary"):
        fv.to_steering_vector(other)


def test_decoder_that_rescales_by_its_norms_is_measured_through_decode(tiny_llama):
    sae = random_sae("topk", seed=3, rescale_acts_by_decoder_norm=True)
    fv = feature_vector(tiny_llama, sae, PAIRS)
    with torch.no_grad():
        expected = sae.decode(fv.values[None]) - sae.decode(torch.zeros(1, 64))
    torch.testing.assert_close(fv.to_steering_vector(sae)[HOOK], expected[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(expected[0], fv.values @ sae.W_dec.detach(), atol=1e-3)
    h = resid(tiny_llama, PROMPT)
    with feature_steering(tiny_llama, sae, [2, 7], "clamp", values=[3.0, 0.0]).apply(tiny_llama):
        edited = resid(tiny_llama, PROMPT)
    with torch.no_grad():
        f = sae.encode(h)
        f_edit = f.clone()
        f_edit[:, [2, 7]] = torch.tensor([3.0, 0.0])
        ref = h + sae.decode(f_edit) - sae.decode(f)
    torch.testing.assert_close(edited, ref, atol=1e-4, rtol=1e-5)


def test_encode_steering_vector_is_the_sae_encoding_of_the_direction(tiny_llama, standard_sae):
    vec = tlsteer.train_steering_vector(tiny_llama, PAIRS, layers=[1])
    fv = encode_steering_vector(standard_sae, vec)
    torch.testing.assert_close(fv.values, enc(standard_sae, vec[HOOK][None])[0])
    assert fv.formula == "encoded_steering_vector" and "negative control" in fv.note
    with pytest.raises(KeyError, match="no direction at the dictionary's hook 'blocks.1.hook_resid_post'"):
        encode_steering_vector(standard_sae, tlsteer.SteeringVector({"blocks.2.hook_resid_post": vec[HOOK]}))


# -- FeatureVector ------------------------------------------------------------------------
def hand_made():
    return FeatureVector(torch.tensor([0.0, 3.0, -5.0, 1.0, -0.5, 2.0]), HOOK, "f" * 16, formula="paired")


def test_selection_filters_on_a_hand_made_vector():
    fv = hand_made()
    assert fv.features == [1, 2, 3, 4, 5] and fv.width == fv.d_sae == 6
    assert fv.top_k(2).features == [1, 2] and fv.top_k(10).features == [1, 2, 3, 4, 5]
    assert fv.sign("positive").features == [1, 3, 5] and fv.sign("negative").features == [2, 4]
    dens = torch.tensor([0.9, 0.1, 0.6, 0.2, 0.3, 0.8])
    assert fv.max_density(0.5, dens).features == [1, 3, 4]
    assert fv.min_frequency(0.5, dens).features == [2, 5]
    assert fv.drop([1, 2]).features == [3, 4, 5] and fv.drop(5).features == [1, 2, 3, 4]
    assert fv.drop_first_token_features([3]).features == [1, 2, 4, 5]
    assert fv.drop_first_token_features([]) == fv.drop_first_token_features([])
    scores = torch.tensor([9.0, -1.0, 0.5, 2.0, 0.0, 1.0])
    assert fv.by_output_score(scores, threshold=0.5).features == [2, 3, 5]
    assert fv.by_output_score(scores, k=2).features == [3, 5]  # feature 0 is zero in the vector
    chained = fv.sign("positive").top_k(2)
    assert chained.features == [1, 5] and torch.equal(chained.values[[1, 5]], fv.values[[1, 5]])
    assert chained.note == "sign(positive); top_k(2)" and chained.formula == "paired"
    assert fv.features == [1, 2, 3, 4, 5]  # the original is unchanged


def test_feature_vector_is_a_value():
    source = torch.tensor([0.0, 1.0, 2.0])
    fv = FeatureVector(source, HOOK, "abc")
    source[1] = 7.0
    assert fv.values.tolist() == [0.0, 1.0, 2.0]
    same = FeatureVector(torch.tensor([0.0, 1.0, 2.0]), HOOK, "abc")
    assert fv == same and hash(fv) == hash(same) and fv != fv.drop(1)
    with pytest.raises(ValueError, match="values must be finite; feature 2 is nan"):
        FeatureVector(torch.tensor([0.0, 1.0, float("nan")]), HOOK, "abc")
    with pytest.raises(ValueError, match="densities has 3 entries but the vector has width=6"):
        hand_made().max_density(0.1, torch.zeros(3))
    with pytest.raises(ValueError, match="k must be an int >= 1, got 0"):
        hand_made().top_k(0)
    with pytest.raises(ValueError, match="give exactly one of threshold= or k="):
        hand_made().by_output_score(torch.zeros(6))
    with pytest.raises(ValueError, match="sign must be 'positive' or 'negative', got 'pos'"):
        hand_made().sign("pos")
    with pytest.raises(
        IndexError, match=r"feature 6 is out of range: the vector has width=6 features \(valid: 0..5\)"
    ):
        hand_made().drop([6])


def test_table_lists_the_largest_features_with_their_logit_lens(tiny_llama, standard_sae):
    model, sae = tiny_llama, standard_sae
    fv = feature_vector(model, sae, PAIRS).top_k(4)
    dens = torch.linspace(0, 1, 64)
    table = fv.table(model, sae, k=3, densities=dens)
    assert list(table.columns) == ["feature", "value", "density", "top_tokens"] and len(table) == 3
    order = fv.values.abs().argsort(descending=True)[:3].tolist()
    assert table["feature"].tolist() == order
    f = order[0]
    top = (sae.W_dec[f].detach() @ model.W_U.detach()).topk(5).indices.tolist()
    assert table["top_tokens"][0] == " ".join(repr(model.tokenizer.decode([t])) for t in top)
    assert table["density"][0] == pytest.approx(float(dens[f]))
    assert list(fv.table(model, sae).columns) == ["feature", "value", "top_tokens"]


def test_plot_feature_vector_draws_k_bars(tiny_llama, standard_sae, tmp_path):
    fv = feature_vector(tiny_llama, standard_sae, PAIRS)
    fig = plot_feature_vector(fv, tiny_llama, standard_sae, k=5, path=tmp_path / "fv.png")
    assert len(fig.axes[0].patches) == 5 and (tmp_path / "fv.png").stat().st_size > 0


# -- steering -----------------------------------------------------------------------------
def test_clamp_keeps_the_other_features_contribution(tiny_llama, sae):
    model = tiny_llama
    ids, values = [2, 7, 40], torch.tensor([3.0, 0.0, 1.5])
    h = resid(model, PROMPT)
    with feature_steering(model, sae, ids, "clamp", values=values).apply(model):
        edited = resid(model, PROMPT)
    w = sae.W_dec.detach()[ids]
    f = enc(sae, h)
    # everything but the chosen features (other features, bias, error) is unchanged
    torch.testing.assert_close(edited - values @ w, h - f[:, ids] @ w, atol=1e-5, rtol=1e-5)
    # h' = decode(f_edited) + (h - decode(f))
    f_edit = f.clone()
    f_edit[:, ids] = values
    with torch.no_grad():
        ref = sae.decode(f_edit) + (h - sae.decode(f))
    torch.testing.assert_close(edited, ref, atol=1e-4, rtol=1e-5)
    assert (edited - h).abs().max() > 0.1


def test_add_zero_and_scale_one_leave_the_output_unchanged(tiny_llama, sae):
    model = tiny_llama
    tokens = tokens_of(model)
    plain = model(tokens)
    for mode, value in (("add", 0.0), ("scale", 1.0)):
        with feature_steering(model, sae, [1, 5, 9], mode, values=value).apply(model):
            assert torch.equal(model(tokens), plain)
    with feature_steering(model, sae, [1, 5, 9], "scale", values=0.0).apply(model):
        h = resid(model, PROMPT)
    ref = resid(model, PROMPT) - enc(sae, resid(model, PROMPT))[:, [1, 5, 9]] @ sae.W_dec.detach()[[1, 5, 9]]
    torch.testing.assert_close(h, ref, atol=1e-5, rtol=1e-5)
    with feature_steering(model, sae, [1, 5], "add", values=[2.0, -1.0]).apply(model):
        added = resid(model, PROMPT)
    delta = torch.tensor([2.0, -1.0]) @ sae.W_dec.detach()[[1, 5]]
    torch.testing.assert_close(added, resid(model, PROMPT) + delta, atol=1e-5, rtol=1e-5)


def test_feature_vector_steering_equals_its_steering_vector(tiny_llama, standard_sae):
    model, sae = tiny_llama, standard_sae
    fv = feature_vector(model, sae, PAIRS).top_k(10)
    tokens = tokens_of(model)
    with feature_steering(model, sae, fv, multiplier=-0.5, positions=Positions.start_at(4)).apply(model):
        got = model(tokens)
    with fv.to_steering_vector(sae).apply(model, -0.5, min_token_index=4):
        ref = model(tokens)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert (got - model(tokens)).abs().max() > 1e-2
    with pytest.raises(ValueError, match="a FeatureVector is added in feature space"):
        feature_edit(sae, fv, "clamp")
    with pytest.raises(ValueError, match="belongs to another dictionary"):
        feature_edit(random_sae(seed=9), fv)
    bare = random_sae(hook=None)  # an SAE without a hook name: the vector's hook is used
    bare_fv = FeatureVector.from_dictionary(bare, fv.values, HOOK)
    assert feature_edit(bare, bare_fv).hook_name == HOOK
    with pytest.raises(
        ValueError, match=r"the FeatureVector is at 'blocks.1.hook_resid_post', not at hook_name="
    ):
        feature_edit(bare, bare_fv, hook_name="blocks.2.hook_resid_post")
    with feature_steering(model, bare, bare_fv, multiplier=-0.5, positions=Positions.start_at(4)).apply(
        model
    ):
        torch.testing.assert_close(model(tokens), got, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", list(MODES))
def test_feature_steering_applies_the_feature_edit_at_its_positions(tiny_llama, sae, mode):
    """feature_steering(...).apply(model) is what steer_features was: the logits of the feature edit
    applied by hand, at the chosen positions only; .patch(model) gives the same."""
    model = tiny_llama
    tokens = tokens_of(model)
    n = tokens.shape[1]
    columns = {"all": list(range(n)), "from": list(range(9, n)), "explicit": [3, 10, 12], "last": [n - 1]}[
        mode
    ]
    ids, values = [2, 7, 40], [3.0, 0.0, 1.5]
    edit = feature_edit(sae, ids, "clamp", values=values)

    def by_hand(act, hook):
        out = act.clone()
        out[:, columns] = act[:, columns] + edit(act[:, columns])
        return out

    steering = feature_steering(model, sae, ids, "clamp", values=values, positions=MODES[mode])
    assert steering.hook_names == (HOOK,) and steering.positions == MODES[mode] and not steering.prefix
    with torch.no_grad():
        ref = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, by_hand)])
        with steering.apply(model):
            got = model(tokens)
        handle = steering.patch(model)
        try:
            patched = model(tokens)
        finally:
            handle.remove()
        plain = model(tokens)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(patched, got)
    assert (got - plain).abs().max() > 1e-2
    steered_columns = (got - plain).abs().amax(-1)[0] > 0
    assert steered_columns[: min(columns)].sum() == 0  # nothing before the first steered position moved


def test_a_feature_vector_steering_is_made_for_its_model(tiny_llama, tiny_gpt2, standard_sae):
    fv = feature_vector(tiny_llama, standard_sae, PAIRS).top_k(10)
    steering = feature_steering(tiny_llama, standard_sae, fv, multiplier=2.0)
    assert steering.model_name == fv.model_name == "tiny-llama"
    assert feature_steering(tiny_llama, standard_sae, [1], values=1.0).model_name == ""  # ids: any model
    tokens = tokens_of(tiny_gpt2)
    with pytest.raises(ValueError, match="made for model 'tiny-llama' but this model is 'tiny-gpt2'"):
        steering.apply(tiny_gpt2).__enter__()
    with torch.no_grad(), steering.apply(tiny_gpt2, check_model=False):
        forced = tiny_gpt2(tokens)
    with (
        torch.no_grad(),
        feature_steering(tiny_gpt2, standard_sae, fv, multiplier=2.0).apply(tiny_gpt2, check_model=False),
    ):
        again = tiny_gpt2(tokens)
    assert torch.equal(forced, again) and (forced - tiny_gpt2(tokens)).abs().max() > 1e-3


@pytest.mark.parametrize("mode", list(MODES))
def test_feature_steering_cache_on_equals_off_per_step(tiny, standard_sae, mode):
    tokens = tokens_of(tiny)
    steering = feature_steering(
        tiny, standard_sae, [3, 17, 30], "clamp", values=[6.0, 0.0, 4.0], positions=MODES[mode]
    )
    with steering.apply(tiny):
        cached = step_logits(tiny, tokens, True)
        full = step_logits(tiny, tokens, False)
    plain = step_logits(tiny, tokens, True)
    assert (cached - full).abs().max() <= 1e-4
    assert (cached[:, 1:] - plain[:, 1:]).abs().max() > 1e-2  # decode steps were steered
    assert count_hooks(tiny) == 0


@pytest.mark.parametrize("mode", list(GEN_MODES))
def test_batched_generation_rows_equal_alone(tiny_llama, standard_sae, mode):
    model = tiny_llama
    edits = [(HOOK, feature_edit(standard_sae, [3, 17], "scale", values=[4.0, 0.0]))]
    steering = Steering.from_edits(edits, positions=GEN_MODES[mode])
    kwargs = dict(max_new_tokens=6, chat=True, stop_at_eos=False, keep_logits=True)
    out = tlsteer.generate_tokens(model, PROMPTS, steering, batch_size=3, **kwargs)
    plain = tlsteer.generate_tokens(model, PROMPTS, batch_size=3, **kwargs)
    for i, prompt in enumerate(PROMPTS):
        alone = tlsteer.generate_tokens(model, [prompt], steering, **kwargs)
        assert (out.step_logits[i] - alone.step_logits[0]).abs().max() <= 1e-4
    moved = max(float((a - b).abs().max()) for a, b in zip(out.step_logits, plain.step_logits, strict=True))
    assert moved > 1e-2


def test_hooks_are_removed_after_an_exception_and_by_the_handle(tiny_llama, standard_sae):
    model = tiny_llama
    with (
        pytest.raises(RuntimeError, match="boom"),
        feature_steering(model, standard_sae, [1], values=2.0).apply(model),
    ):
        assert count_hooks(model) > 0
        model(tokens_of(model))
        raise RuntimeError("boom")
    assert count_hooks(model) == 0
    handle = feature_steering(
        model, standard_sae, [1, 2], "clamp", values=0.0, positions=Positions.last()
    ).patch(model)
    assert count_hooks(model) > 0
    handle.remove()
    assert count_hooks(model) == 0


def test_edit_errors(tiny_llama, standard_sae):
    sae = standard_sae
    with pytest.raises(
        IndexError, match=r"feature 64 is out of range: the dictionary has width=64 features \(valid: 0..63\)"
    ):
        feature_edit(sae, [3, 64], "add", values=1.0)
    with pytest.raises(ValueError, match="values must be finite; entry 1 is nan"):
        feature_edit(sae, [3, 4], "clamp", values=[1.0, float("nan")])
    with pytest.raises(ValueError, match="values must be finite; entry 0 is inf"):
        feature_edit(sae, [3], "scale", values=float("inf"))
    with pytest.raises(ValueError, match="values has 3 entries for 2 features"):
        feature_edit(sae, [3, 4], "clamp", values=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="unknown mode 'double'; valid: 'add', 'scale', 'clamp'"):
        feature_edit(sae, [3], "double", values=2.0)
    with pytest.raises(ValueError, match=r"mode='clamp' needs values="):
        feature_edit(sae, [3], "clamp")
    with pytest.raises(ValueError, match=r"feature ids must be distinct; given more than once: \[3\]"):
        feature_edit(sae, [3, 3], values=1.0)
    with pytest.raises(ValueError, match="multiplier must be finite"):
        feature_edit(sae, hand_made_for(sae), multiplier=float("nan"))
    assert count_hooks(tiny_llama) == 0


def hand_made_for(sae):
    return FeatureVector.from_dictionary(sae, torch.ones(64))


def test_sweep_engine_takes_a_feature_edit(tiny_llama, standard_sae):
    from tlsteer.data import ABItem
    from tlsteer.eval.ab import ab_prompt_ids, question_end, score_logits, tokens_after_question
    from tlsteer.eval.cached import cached_ab_scores
    from tlsteer.tokens import left_pad

    model = tiny_llama
    items = [
        ABItem("Is it good?\n\nChoices:\n (A) yes\n (B) no", "(A)", "(B)"),
        ABItem("A longer question about cats?\n\nChoices:\n (A) cats\n (B) dogs", "(B)", "(A)"),
    ]
    edit = feature_edit(standard_sae, [3, 17], "clamp", values=[6.0, 0.0])
    steering = Steering.from_edits([(HOOK, edit)], positions=question_end(model))
    by_name = feature_steering(
        model, standard_sae, [3, 17], "clamp", values=[6.0, 0.0], positions=question_end(model)
    )
    got, again = cached_ab_scores(model, items, [steering, by_name], batch_size=2)
    assert [s.logit_diff for s in again] == pytest.approx([s.logit_diff for s in got], abs=1e-5)
    n_after = tokens_after_question(model)
    for item, ids, score in zip(items, ab_prompt_ids(model, items), got, strict=True):
        tokens, _ = left_pad(model, [ids])
        with (
            torch.no_grad(),
            Steering.from_edits(
                [(HOOK, edit)], positions=Positions.start_at(tokens.shape[1] - n_after - 1)
            ).apply(model),
        ):
            (ref,) = score_logits(model, model(tokens)[:, -1], [item])
        assert abs(score.logit_diff - ref.logit_diff) <= 1e-3


# -- inspection and quality ---------------------------------------------------------------
def test_inspect_feature_equals_a_brute_force_scan(tiny_llama, standard_sae):
    model, sae = tiny_llama, standard_sae
    feature = int(feature_vector(model, sae, PAIRS).top_k(1).features[0])
    report = inspect_feature(model, sae, feature, TEXTS, k=4, batch_size=3)
    found = []
    for t, text in enumerate(TEXTS):
        acts = enc(sae, resid(model, text))[:, feature]
        found += [(float(a), t, p) for p, a in enumerate(acts.tolist()) if p >= 1]
    fired = [x for x in found if x[0] != 0]
    assert report.n_tokens == len(found) and report.density == pytest.approx(len(fired) / len(found))
    top = sorted(fired, reverse=True)[:4]
    assert [(e.text_index, e.position) for e in report.examples] == [(t, p) for _, t, p in top]
    assert [e.activation for e in report.examples] == pytest.approx([a for a, _, _ in top], abs=1e-4)
    first = report.examples[0]
    assert first.token == model.tokenizer.decode(
        [tlsteer.tokenize(model, TEXTS[first.text_index])[first.position]]
    )
    lens = (sae.W_dec[feature].detach() @ model.W_U.detach()).topk(4)
    assert [t for t, _ in report.promoted] == [model.tokenizer.decode([i]) for i in lens.indices.tolist()]
    assert f"feature {feature} at {HOOK}" in str(report) and "[[" in str(report)
    with pytest.raises(IndexError, match="feature 99 is out of range"):
        inspect_feature(model, sae, 99, TEXTS)


def _nll(logits, tokens, start):
    logp = logits[0, :-1].log_softmax(-1)
    nll = -logp.gather(-1, tokens[0, 1:, None])[:, 0]
    return nll[start:].tolist()


@pytest.mark.parametrize("skip_first", [0, 1, 2])
def test_sae_quality_equals_a_hand_computation(tiny, sae, skip_first):
    model = tiny
    rows, recons, feats = [], [], []
    losses = {"clean": [], "sae": [], "zero": []}
    with torch.no_grad():
        for text in TEXTS:
            tokens = tokens_of(model, text)
            logits, cache = model.run_with_cache(tokens, names_filter=[HOOK])
            h = cache[HOOK][0, skip_first:]
            f = sae.encode(h)
            h_hat = sae.decode(f)
            rows.append(h), recons.append(h_hat), feats.append(f)

            def put(value):
                def hook(act, hook):
                    act = act.clone()
                    act[0, skip_first:] = value
                    return act

                return hook

            spliced = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, put(h_hat))])
            zeroed = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, put(0.0))])
            for key, out in (("clean", logits), ("sae", spliced), ("zero", zeroed)):
                losses[key] += _nll(out, tokens, skip_first)
    h, h_hat, f = torch.cat(rows).double(), torch.cat(recons).double(), torch.cat(feats)
    centred = (h - h.mean(0)).pow(2).sum(-1)
    res = (h - h_hat).pow(2).sum(-1)
    clean, with_sae, zero = (sum(losses[k]) / len(losses[k]) for k in ("clean", "sae", "zero"))
    q = sae_quality(model, sae, TEXTS, batch_size=3, skip_first=skip_first)
    assert q.n_tokens == h.shape[0] and q.n_loss_tokens == len(losses["clean"])
    assert q.explained_variance == pytest.approx(float(1 - res.sum() / centred.sum()), abs=1e-5)
    assert q.explained_variance_per_token == pytest.approx(float((1 - res / centred).mean()), abs=1e-4)
    assert q.l0 == pytest.approx(float((f != 0).sum(-1).float().mean()))
    assert q.dead_share == pytest.approx(float(((f != 0).sum(0) == 0).float().mean()))
    torch.testing.assert_close(q.densities, (f != 0).float().mean(0))
    assert q.loss_clean == pytest.approx(clean, abs=1e-4)
    assert q.loss_with_sae == pytest.approx(with_sae, abs=1e-4)
    assert q.loss_zero_ablation == pytest.approx(zero, abs=1e-4)
    assert q.ce_loss_score == pytest.approx((zero - with_sae) / (zero - clean), abs=1e-3)
    assert q.added_loss == pytest.approx(with_sae - clean, abs=1e-4)
    assert abs(q.added_loss) > 1e-3 and "explained variance" in str(q)


def test_sae_quality_needs_tokens_to_evaluate(tiny_llama, standard_sae):
    with pytest.raises(ValueError, match="with skip_first=1, a text needs at least 3 tokens"):
        sae_quality(tiny_llama, standard_sae, ["ab", "c"])
