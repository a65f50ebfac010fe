"""Open-ended generation reports, perplexity, and the independent concept judge."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os

import pytest
import torch

import tlsteer
from tlsteer import Positions, Steering
from tlsteer.eval.generation import GenerationSettings, compare_generations
from tlsteer.eval.prefix_generation import perplexities
from tlsteer.vector import VectorMetadata

PROMPTS = ["hi", "yo", "tell me"]  # two prompts of one length, one of another


def vector(model, scale=6.0):
    gen = torch.Generator().manual_seed(3)
    d = torch.randn(model.cfg.d_model, generator=gen)
    return tlsteer.SteeringVector({"blocks.1.hook_resid_post": scale * d / d.norm()})


def reference(model, prompt, vec, multiplier, n_new, temperature=None, seed=0):
    """A plain loop: a full forward per step (no KV cache, no batch), steered from the last prompt
    token (``start_at(n - 1)``, not the ``last`` mode under test); argmax, or a draw from the
    prompt's own generator."""
    tokens = tlsteer.tokenize(model, tlsteer.chat_prompt(model, prompt))
    n = len(tokens)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad(), contextlib.ExitStack() as stack:
        if multiplier != 0:
            steering = Steering.from_vector(vec, multiplier, positions=Positions.start_at(n - 1))
            stack.enter_context(steering.apply(model))
        for _ in range(n_new):
            logits = model(torch.tensor([tokens]))[0, -1]
            if temperature is None:
                tokens.append(int(logits.argmax()))
            else:
                probs = (logits.float() / temperature).softmax(-1)
                tokens.append(int(torch.multinomial(probs, 1, generator=gen)[0]))
    return tuple(tokens[n:])


def test_report_matches_plain_reference_loop(tiny_llama):
    model = tiny_llama
    vec = vector(model)
    settings = GenerationSettings(max_new_tokens=6, chat=True, stop_at_eos=False)
    report = compare_generations(model, PROMPTS, vec, [-2, 0, 2], settings)
    assert [(g.prompt, g.multiplier) for g in report.generations] == [
        (p, m) for p in PROMPTS for m in (-2.0, 0.0, 2.0)
    ]
    for g in report.generations:
        assert g.prompt_tokens == tuple(tlsteer.tokenize(model, tlsteer.chat_prompt(model, g.prompt)))
        assert g.new_tokens == reference(model, g.prompt, vec, g.multiplier, 6), (g.prompt, g.multiplier)
        assert g.text == model.tokenizer.decode(list(g.new_tokens), skip_special_tokens=True)
    for prompt in PROMPTS:  # the reference is not vacuous: steering changes every prompt's tokens
        gens = report.by_prompt()[prompt]
        assert gens[0].new_tokens != gens[1].new_tokens != gens[2].new_tokens


def test_report_formats(tiny_llama):
    settings = GenerationSettings(max_new_tokens=3, stop_at_eos=False)
    report = compare_generations(tiny_llama, ["hi", "a <b>"], vector(tiny_llama), [-2, 0, 2.5], settings)
    text = report.to_text(width=20)
    assert "PROMPT: hi" in text and "PROMPT: a <b>" in text
    header = text.splitlines()[3]
    assert header.split() == ["x-2", "x0", "x2.5"]
    page = report.to_html()
    assert page.count("<table") == 2 and "<h3>a &lt;b&gt;</h3>" in page
    assert "<tr><th>x-2</th><th>x0</th><th>x2.5</th></tr>" in page
    data = json.loads(report.to_json())
    assert data["settings"] == dataclasses.asdict(settings)
    assert data["multipliers"] == [-2.0, 0.0, 2.5]
    assert data["vector_hooks"] == ["blocks.1.hook_resid_post"]
    assert [(g["prompt"], g["multiplier"], g["text"]) for g in data["generations"]] == [
        (g.prompt, g.multiplier, g.text) for g in report.generations
    ]


def test_sampled_generations_follow_the_seed_and_leave_the_global_rng(tiny_llama):
    vec = vector(tiny_llama)

    def sampled(seed):
        settings = GenerationSettings(
            max_new_tokens=8, do_sample=True, temperature=3.0, seed=seed, stop_at_eos=False
        )
        return compare_generations(tiny_llama, PROMPTS, vec, [0, 1.0], settings).generations

    torch.manual_seed(1234)
    state = torch.get_rng_state()
    a, b, c = sampled(7), sampled(7), sampled(8)
    assert torch.equal(torch.get_rng_state(), state), "compare_generations moved the global torch RNG"
    assert [g.new_tokens for g in a] == [g.new_tokens for g in b]
    assert all(x.new_tokens != z.new_tokens for x, z in zip(a, c, strict=True))  # the seed is used
    for g in a:  # each continuation draws from its own generator seeded with settings.seed
        expected = reference(tiny_llama, g.prompt, vec, g.multiplier, 8, temperature=3.0, seed=7)
        assert g.new_tokens == expected, (g.prompt, g.multiplier)


def test_load_embedder_leaves_the_environment_as_it_was(monkeypatch):
    pytest.importorskip(
        "sentence_transformers", reason="the judge extra (sentence-transformers) is not installed"
    )
    import sentence_transformers
    from huggingface_hub import constants

    from tlsteer.eval.judge import load_embedder

    real = sentence_transformers.SentenceTransformer
    seen = []

    def spy(*args, **kwargs):
        seen.append((os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE))
        return real(*args, **kwargs)

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", spy)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    embedder = load_embedder()
    assert isinstance(embedder, real)
    assert "HF_HUB_OFFLINE" not in os.environ  # not offline after the load ...
    assert constants.HF_HUB_OFFLINE is False
    assert seen == [("1", True)]  # ... but offline while loading


def test_load_embedder_restores_the_environment_after_an_error(monkeypatch):
    pytest.importorskip(
        "sentence_transformers", reason="the judge extra (sentence-transformers) is not installed"
    )
    import sentence_transformers
    from huggingface_hub import constants

    from tlsteer.eval.judge import load_embedder

    def broken(*args, **kwargs):
        assert os.environ["HF_HUB_OFFLINE"] == "1" and constants.HF_HUB_OFFLINE is True
        raise RuntimeError("no model here")

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", broken)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(RuntimeError, match="no model here"):
        load_embedder()
    assert os.environ["HF_HUB_OFFLINE"] == "0"
    assert constants.HF_HUB_OFFLINE is False


def test_positions_and_the_model_check_opt_out(tiny_llama):
    vec = vector(tiny_llama)
    settings = GenerationSettings(max_new_tokens=4, stop_at_eos=False)
    default = compare_generations(tiny_llama, PROMPTS, vec, [0, 2.0], settings)
    last = compare_generations(tiny_llama, PROMPTS, vec, [0, 2.0], settings, positions=Positions.last())
    assert [g.new_tokens for g in default.generations] == [g.new_tokens for g in last.generations]
    everywhere = compare_generations(tiny_llama, PROMPTS, vec, [2.0], settings, positions=Positions.all())
    by_generate = tlsteer.generate_tokens(
        tiny_llama, PROMPTS, vec.steering(2.0), max_new_tokens=4, stop_at_eos=False, chat=settings.chat
    )
    assert [g.new_tokens for g in everywhere.generations] == list(by_generate.new_tokens)
    foreign = tlsteer.SteeringVector(dict(vec.directions), VectorMetadata(model_name="gpt2-small"))
    with pytest.raises(ValueError, match="made for model 'gpt2-small' but this model is 'tiny-llama'"):
        compare_generations(tiny_llama, PROMPTS, foreign, [0, 2.0], settings)
    opted_out = compare_generations(tiny_llama, PROMPTS, foreign, [0, 2.0], settings, check_model=False)
    assert [g.new_tokens for g in opted_out.generations] == [g.new_tokens for g in default.generations]


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
    assert float(perplexities(tiny_llama, [prompt], [new])[0]) == pytest.approx(
        math.exp(sum(nll) / len(nll)), rel=1e-5
    )


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
