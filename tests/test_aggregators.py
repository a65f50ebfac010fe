"""Aggregators: exact algebra, planted-direction recovery, pairing rules."""

from __future__ import annotations

import pytest
import torch

import tlsteer


def planted(n=1000, d=32, seed=0, strength=3.0):
    gen = torch.Generator().manual_seed(seed)
    direction = torch.randn(d, generator=gen)
    direction /= direction.norm()
    base = torch.randn(n, d, generator=gen)
    pos = base + strength * direction + 0.3 * torch.randn(n, d, generator=gen)
    neg = base + 0.3 * torch.randn(n, d, generator=gen)
    return pos, neg, direction


def test_mean_and_class_mean_exact():
    pos = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    neg = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    assert torch.equal(tlsteer.mean_aggregator()(pos, neg), torch.tensor([1.5, 3.0]))
    neg3 = torch.tensor([[0.0, 0.0], [3.0, 3.0], [0.0, 3.0]])
    assert torch.equal(tlsteer.class_mean_aggregator()(pos, neg3), torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize(
    "factory",
    [
        tlsteer.mean_aggregator,
        tlsteer.class_mean_aggregator,
        tlsteer.pca_aggregator,
        tlsteer.logistic_aggregator,
    ],
)
def test_planted_direction_recovered(factory):
    pos, neg, direction = planted()
    got = factory()(pos, neg)
    assert torch.cosine_similarity(got.double(), direction.double(), dim=0) > 0.99
    # scale is comparable with the planted shift (3.0), sign aligned
    assert 2.0 < float(got @ direction) < 4.0


def test_pca_sign_follows_mean_difference():
    pos, neg, direction = planted(seed=3)
    assert float(tlsteer.pca_aggregator()(neg, pos) @ direction) < 0


def test_paired_aggregators_reject_unequal_counts():
    with pytest.raises(ValueError, match=r"needs paired activations of equal shape, got positive \(3, 2\)"):
        tlsteer.mean_aggregator()(torch.zeros(3, 2), torch.zeros(2, 2))


def test_custom_aggregator_and_bad_output(tiny_llama):
    pairs = [("I love cats", "I hate cats"), ("good", "bad")]
    vec = tlsteer.train_steering_vector(tiny_llama, pairs, layers=[1], aggregator=lambda p, n: p[0] - n[0])
    acts = tlsteer.extract_activations(tiny_llama, pairs, layers=[1])
    hook = "blocks.1.hook_resid_post"
    assert torch.equal(vec[hook], acts.positive[hook][0] - acts.negative[hook][0])
    with pytest.raises(ValueError, match=r"aggregator returned .* expected a tensor of shape \(32,\)"):
        tlsteer.aggregators.aggregate_activations(acts, lambda p, n: p)


def test_unpaired_contrast_set_uses_class_means(tiny_llama):
    data = tlsteer.ContrastSet(["happy", "joy", "glad!"], ["sad", "gloom"])
    vec = tlsteer.train_steering_vector(tiny_llama, data, layers=[2])
    hook = "blocks.2.hook_resid_post"
    pos = tlsteer.read_activations(tiny_llama, list(data.positive), [hook])[hook]
    neg = tlsteer.read_activations(tiny_llama, list(data.negative), [hook])[hook]
    torch.testing.assert_close(vec[hook], pos.mean(0) - neg.mean(0), atol=1e-5, rtol=0)
    assert vec.metadata.aggregator == "class_mean_aggregator"
    with pytest.raises(ValueError, match="use class_mean_aggregator"):
        tlsteer.train_steering_vector(tiny_llama, data, layers=[2], aggregator=tlsteer.mean_aggregator())


def test_planted_direction_through_the_model(tiny_llama):
    """Positive prompts end in 'x', negatives in 'y'; at resid_pre of layer 0 (the embedding, no
    positional term in a rotary model) the vector must be W_E[x] - W_E[y] exactly."""
    model = tiny_llama
    pairs = [(f"{w} x", f"{w} y") for w in ["cat", "dog", "a bird", "fish"]]
    vec = tlsteer.train_steering_vector(model, pairs, layers=[0], hook="resid_pre")
    x, y = tlsteer.tokenize(model, "x")[0], tlsteer.tokenize(model, "y")[0]
    expected = model.W_E[x] - model.W_E[y]
    torch.testing.assert_close(vec["blocks.0.hook_resid_pre"], expected, atol=1e-6, rtol=0)
