"""Open-ended generation reports, perplexity, and the independent concept judge."""

from __future__ import annotations

import json
import math

import pytest
import torch

import tlsteer
from tlsteer.eval.generation import GenerationSettings, compare_generations
from tlsteer.eval.judge import perplexity


def vector(model, scale=6.0):
    gen = torch.Generator().manual_seed(3)
    d = torch.randn(model.cfg.d_model, generator=gen)
    return tlsteer.SteeringVector({"blocks.1.hook_resid_post": scale * d / d.norm()})


def test_report_matches_direct_generation(tiny_llama):
    model = tiny_llama
    vec = vector(model)
    settings = GenerationSettings(max_new_tokens=6, chat=True, stop_at_eos=False)
    report = compare_generations(model, ["hi", "tell me"], vec, [-2, 0, 2], settings)
    assert len(report.generations) == 6
    for g in report.generations:
        tokens = torch.tensor([tlsteer.tokenize(model, tlsteer.chat_prompt(model, g.prompt))])
        n = tokens.shape[1]
        with vec.apply(model, multiplier=g.multiplier, min_token_index=n - 1):
            out = model.generate(tokens, max_new_tokens=6, do_sample=False, verbose=False, stop_at_eos=False)
        assert tuple(out[0, n:].tolist()) == g.new_tokens
    by_prompt = report.by_prompt()["hi"]
    assert by_prompt[0].new_tokens != by_prompt[1].new_tokens  # steering changed the text
    text = report.to_text()
    assert "PROMPT: hi" in text and "x-2" in text and "x2" in text
    assert "<table" in report.to_html()
    assert json.loads(report.to_json())["settings"]["max_new_tokens"] == 6


def test_sampled_generations_repeat_with_the_seed(tiny_llama):
    vec = vector(tiny_llama)
    settings = GenerationSettings(
        max_new_tokens=8, do_sample=True, temperature=1.5, seed=7, stop_at_eos=False
    )
    a = compare_generations(tiny_llama, ["abc"], vec, [1.0], settings)
    b = compare_generations(tiny_llama, ["abc"], vec, [1.0], settings)
    assert a.generations[0].new_tokens == b.generations[0].new_tokens


def test_generation_errors(tiny_llama):
    vec = vector(tiny_llama)
    with pytest.raises(ValueError, match="prompts must be a non-empty list of strings"):
        compare_generations(tiny_llama, "hi", vec)
    with pytest.raises(ValueError, match="multiplier must be finite"):
        compare_generations(tiny_llama, ["hi"], vec, [math.nan])
    with pytest.raises(ValueError, match="max_new_tokens must be at least 1, got 0"):
        GenerationSettings(max_new_tokens=0)


def test_perplexity_by_hand(tiny_llama):
    prompt = tlsteer.tokenize(tiny_llama, "hello")
    new = tlsteer.tokenize(tiny_llama, " world")
    with torch.no_grad():
        logprobs = tiny_llama(torch.tensor([prompt + new])).log_softmax(-1)[0]
    nll = [-float(logprobs[len(prompt) - 1 + i, t]) for i, t in enumerate(new)]
    assert perplexity(tiny_llama, prompt, new) == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-5)


def test_builtin_judge_separates_held_out_texts():
    pytest.importorskip("sentence_transformers", reason="the judge extra is not installed")
    from tlsteer.eval.judge import builtin_judge, load_embedder, vader_compound

    embedder = load_embedder()
    sentiment = builtin_judge("sentiment", embedder)
    formality = builtin_judge("formality", embedder)
    assert sentiment.held_out_accuracy >= 0.8 and sentiment.n_test >= 20
    assert formality.held_out_accuracy >= 0.8
    p = sentiment.predict_proba(["What a wonderful, happy day!", "This is awful and I hate it."])
    assert p[0] > 0.5 > p[1]
    v = vader_compound(["What a wonderful, happy day!", "This is awful and I hate it."])
    assert v[0] > 0 > v[1]
    with pytest.raises(ValueError, match="unknown concept 'humour'; valid"):
        builtin_judge("humour", embedder)
