"""Feature statistics and output scores on tiny models and random SAEs: reference loops and planted rows."""

from __future__ import annotations

import pytest
import torch

from tests.test_sae import HOOK, PAIRS, TEXTS, enc, random_sae, resid
from tlsteer.sae import feature_stats, feature_vector, output_scores
from tlsteer.tokens import tokenize

LAST = "blocks.3.hook_resid_post"
SCORE_PROMPTS = ["hello there friend", "the rain in spain", "numbers 1 2 3"]


@pytest.fixture(scope="module", params=["standard", "topk"])
def sae(request):
    return random_sae(request.param, seed=3)


def test_feature_stats_equal_a_per_text_loop(tiny, sae):
    stats = feature_stats(tiny, sae, TEXTS, batch_size=3)
    rows = [enc(sae, resid(tiny, text)) for text in TEXTS]
    counted = torch.cat([r[1:] for r in rows])
    assert stats.n_tokens == counted.shape[0] and stats.n_texts == len(TEXTS)
    fired = (counted != 0).sum(0)
    torch.testing.assert_close(stats.density, fired.float() / counted.shape[0])
    mean_active = torch.where(fired > 0, counted.sum(0) / fired.clamp(min=1), 0.0)
    torch.testing.assert_close(stats.mean_active, mean_active, atol=1e-4, rtol=1e-4)
    first = torch.stack([r[0] != 0 for r in rows]).float().mean(0)
    torch.testing.assert_close(stats.first_token_rate, first)
    assert stats.first_token_features(1.0) == (first == 1).nonzero().flatten().tolist()
    assert stats.dead() == (fired == 0).nonzero().flatten().tolist()
    assert stats.density.sum() > 0  # the check above compares something


def test_feature_stats_are_the_same_in_any_batch_size(tiny_llama, sae):
    one = feature_stats(tiny_llama, sae, TEXTS, batch_size=1)
    many = feature_stats(tiny_llama, sae, TEXTS, batch_size=4)
    torch.testing.assert_close(one.density, many.density)
    torch.testing.assert_close(one.first_token_rate, many.first_token_rate)
    skip = feature_stats(tiny_llama, sae, TEXTS, skip_first=0)
    assert skip.n_tokens == one.n_tokens + len(TEXTS)


def test_feature_stats_bad_input(tiny_llama, sae):
    with pytest.raises(ValueError, match="non-empty list of strings"):
        feature_stats(tiny_llama, sae, "one string")
    with pytest.raises(ValueError, match=r"texts\[1\] must be a non-empty string"):
        feature_stats(tiny_llama, sae, ["ok", ""])
    with pytest.raises(ValueError, match="skip_first must be an int >= 0, got -1"):
        feature_stats(tiny_llama, sae, TEXTS, skip_first=-1)
    with pytest.raises(ValueError, match="min_rate must be in"):
        feature_stats(tiny_llama, sae, TEXTS).first_token_features(0)


def reference_score(model, sae, feature, prompts, strength, n_tokens):
    """One feature, one prompt at a time, with run_with_hooks."""
    row = sae.W_dec[feature].detach().float()
    row = row / max(float(row.norm()), 1e-12)  # a zero row stays zero
    named = (row @ model.W_U.detach().float()).topk(n_tokens).indices
    total = 0.0
    for text in prompts:
        tokens = torch.tensor([tokenize(model, text)])
        with torch.no_grad():
            base_logits, cache = model.run_with_cache(tokens, names_filter=[LAST])
        scale = strength * float(cache[LAST][0, 1:].norm(dim=-1).mean())

        def add(act, hook, scale=scale):  # noqa: ARG001
            act = act.clone()
            act[:, 1:] += scale * row
            return act

        with torch.no_grad():
            logits = model.run_with_hooks(tokens, fwd_hooks=[(LAST, add)])
        p, q = logits[0, -1].softmax(-1), base_logits[0, -1].softmax(-1)
        total += float(p[named].sum() - q[named].sum())
    return total / len(prompts)


def test_output_scores_equal_a_reference_loop_and_a_planted_row_scores_high(tiny_llama):
    model = tiny_llama
    sae = random_sae("standard", seed=5, hook=LAST)
    token = 7
    with torch.no_grad():  # feature 0 writes exactly the unembedding column of one token
        sae.W_dec[0] = model.W_U[:, token] / model.W_U[:, token].norm()
        sae.W_dec[1] = 0.0  # feature 1 writes nothing
    ids = [0, 1, 2, 3, 10]
    scores = output_scores(model, sae, ids, SCORE_PROMPTS, strength=2.0, n_tokens=3, batch_size=2)
    assert scores.shape == (64,)
    for f in ids:
        assert float(scores[f]) == pytest.approx(
            reference_score(model, sae, f, SCORE_PROMPTS, 2.0, 3), abs=1e-5
        )
    assert float(scores[1]) == 0.0 and float(scores[0]) > 0.1
    assert float(scores[0]) == float(scores[ids].max())
    others = [f for f in range(64) if f not in ids]
    assert scores[others].abs().sum() == 0


def reference_rank_score(model, sae, feature, prompts, strength, n_tokens):
    """Arad et al.'s output score, one feature and one full prompt at a time, no KV cache."""
    row = sae.W_dec[feature].detach().float()
    row = row / max(float(row.norm()), 1e-12)
    with torch.no_grad():
        lens = model.ln_final(row[None, None])[0, 0] @ model.W_U + model.b_U
    named = lens.softmax(-1).topk(n_tokens).indices.tolist()
    total = 0.0
    for text in prompts:
        tokens = torch.tensor([tokenize(model, text)])
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=[LAST])
        scale = strength * float(cache[LAST][0, 1:].norm(dim=-1).mean())

        def add(act, hook, scale=scale):  # noqa: ARG001
            act = act.clone()
            act[:, -1] += scale * row
            return act

        with torch.no_grad():
            probs = model.run_with_hooks(tokens, fwd_hooks=[(LAST, add)])[0, -1].softmax(-1)
        order = probs.argsort(descending=True).tolist()
        best_rank = min(order.index(t) for t in named)
        total += (1 - best_rank / len(order)) * max(float(probs[t]) for t in named)
    return total / len(prompts)


def test_rank_output_scores_equal_a_reference_loop_and_a_planted_row_scores_top(tiny_llama):
    model = tiny_llama
    sae = random_sae("standard", seed=5, hook=LAST)
    token = 7
    with torch.no_grad():  # feature 0 writes exactly the unembedding column of one token
        sae.W_dec[0] = model.W_U[:, token] / model.W_U[:, token].norm()
    ids = [0, 2, 3, 10, 11]
    scores = output_scores(
        model, sae, ids, SCORE_PROMPTS, strength=2.0, n_tokens=3, batch_size=2, definition="rank"
    )
    assert scores.shape == (64,)
    for f in ids:
        assert float(scores[f]) == pytest.approx(
            reference_rank_score(model, sae, f, SCORE_PROMPTS, 2.0, 3), abs=1e-5
        )
    assert float(scores[0]) > 0.5  # the planted token becomes the likely next token: rank 0
    assert float(scores[0]) == float(scores[ids].max())
    assert bool(((scores[ids] > 0) & (scores[ids] <= 1)).all())
    others = [f for f in range(64) if f not in ids]
    assert scores[others].abs().sum() == 0


def test_rank_and_mass_output_scores_differ_and_batch_size_does_not_matter(tiny_llama):
    sae = random_sae("topk", seed=2, hook=LAST)
    ids = list(range(12))
    one = output_scores(tiny_llama, sae, ids, SCORE_PROMPTS, batch_size=1, definition="rank")
    many = output_scores(tiny_llama, sae, ids, SCORE_PROMPTS, batch_size=5, definition="rank")
    assert torch.allclose(one, many, atol=1e-6)
    mass = output_scores(tiny_llama, sae, ids, SCORE_PROMPTS, batch_size=5)
    assert not torch.allclose(one, mass, atol=1e-3)
    assert torch.equal(mass, output_scores(tiny_llama, sae, ids, SCORE_PROMPTS, definition="mass"))


def test_output_scores_take_a_feature_vector(tiny_llama):
    sae = random_sae("topk", seed=2)
    fv = feature_vector(tiny_llama, sae, PAIRS).top_k(3)
    scores = output_scores(tiny_llama, sae, fv, SCORE_PROMPTS)
    assert (scores != 0).nonzero().flatten().tolist() == sorted(fv.features)
    kept = fv.by_output_score(scores, k=1)
    assert kept.features == [max(fv.features, key=lambda f: float(scores[f]))]


def test_output_scores_bad_input(tiny_llama):
    sae = random_sae("standard", hook=HOOK)
    with pytest.raises(IndexError, match="feature 64 is out of range"):
        output_scores(tiny_llama, sae, [64], SCORE_PROMPTS)
    with pytest.raises(ValueError, match="strength must be > 0, got -1"):
        output_scores(tiny_llama, sae, [1], SCORE_PROMPTS, strength=-1.0)
    with pytest.raises(ValueError, match="nan"):
        output_scores(tiny_llama, sae, [1], SCORE_PROMPTS, strength=float("nan"))
    with pytest.raises(ValueError, match="n_tokens must be an int >= 1"):
        output_scores(tiny_llama, sae, [1], SCORE_PROMPTS, n_tokens=0)
    with pytest.raises(ValueError, match="definition must be one of 'mass', 'rank', got 'logit'"):
        output_scores(tiny_llama, sae, [1], SCORE_PROMPTS, definition="logit")
    with pytest.raises(ValueError, match=r"^drop\(64 features\) removed all \d+ nonzero features"):
        feature_vector(tiny_llama, sae, PAIRS).drop(list(range(64)))  # no empty vector reaches the scores
