"""An analogy domain as a feature-vs-CAA dataset: contrast reps and cells against plain loops."""

from __future__ import annotations

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from tlsteer.analogy import AnalogyDomain, few_shot_prompt, neutral_prompt, next_token_accuracy
from tlsteer.decode import generate_tokens
from tlsteer.extract import read_activations
from tlsteer.sae.analogy_task import AnalogyTask, analogy_ranks, contrast_from_analogy, run_analogy_task
from tlsteer.sae.methods import Method, Steering
from tlsteer.vector import SteeringVector

HOOK = "blocks.1.hook_resid_post"
DOMAIN = AnalogyDomain("toy", tuple((f"{c}{c}", f"{c.upper()}!") for c in "abcdefghijklmnop"))


@pytest.fixture(scope="module")
def sae(tiny_llama):
    sae = StandardSAE(
        StandardSAEConfig(d_in=tiny_llama.cfg.d_model, d_sae=16, metadata=SAEMetadata(hook_name=HOOK))
    )
    with torch.no_grad():
        sae.W_dec.copy_(
            torch.randn(16, tiny_llama.cfg.d_model, generator=torch.Generator().manual_seed(0)) / 4
        )
        sae.W_enc.copy_(sae.W_dec.T.clone())
    return sae


def test_contrast_reads_few_shot_and_neutral_prompts_at_their_last_token(tiny_llama, sae):
    task = AnalogyTask(DOMAIN, n_shots=2)
    reps = contrast_from_analogy(tiny_llama, sae, task, HOOK)
    train, test = task.parts()
    assert len(train) + len(test) == len(DOMAIN.pairs) and not set(train) & set(test)
    neutral = [neutral_prompt(x) for x, _ in train]
    got_neg = read_activations(tiny_llama, neutral, [HOOK], read_token_index=-1)[HOOK]
    torch.testing.assert_close(reps.raw_neg, got_neg, atol=1e-5, rtol=1e-5)
    assert reps.paired and reps.raw_pos.shape == reps.raw_neg.shape
    # each positive is a few-shot prompt ending in its own x, never demonstrating it
    assert not torch.allclose(reps.raw_pos, reps.raw_neg)
    assert few_shot_prompt(train[0][0], train[1:3]).endswith(neutral[0])


def test_cells_equal_plain_scoring(tiny_llama, sae):
    task = AnalogyTask(DOMAIN, n_shots=2, k=3, instruction="Shout it.")
    d = torch.randn(tiny_llama.cfg.d_model, generator=torch.Generator().manual_seed(1))
    direction = SteeringVector({HOOK: d / d.norm()})
    methods = {
        "caa": Method("caa", "vector", direction, scale=10.0, hook_name=HOOK),
        "clamp": Method(
            "clamp",
            "clamp",
            features=(0, 2),
            off_features=(4,),
            typical=torch.tensor([1.0, 3.0]),
            sae=sae,
            hook_name=HOOK,
        ),
        "prompting": Method("prompting", "prompt", prefix="Shout it.", hook_name=HOOK),
    }
    cal = {
        "caa": {0.1: {"strength": 0.5, "kl_mean": 0.1, "kl_p95": 0.3, "reached": True}},
        "clamp": {0.1: {"strength": 2.0, "kl_mean": 0.1, "kl_p95": 0.3, "reached": True}},
        "prompting": {0.1: {"strength": None, "kl_mean": 0.2, "kl_p95": 0.5, "reached": False}},
    }
    result = run_analogy_task(tiny_llama, methods, cal, task, n_resamples=200)
    assert set(result["cells"]) == {"unsteered", "caa@0.1", "clamp@0.1", "prompting"}
    _, test = task.parts()
    prompts, answers = [neutral_prompt(x) for x, _ in test], [y for _, y in test]
    plain = next_token_accuracy(tiny_llama, prompts, answers, k=3)
    steered = next_token_accuracy(tiny_llama, prompts, answers, [(direction, 5.0)], k=3)
    assert result["cells"]["unsteered"]["success"]["value"] == pytest.approx(plain.topk)
    assert result["cells"]["unsteered"]["top1"]["value"] == pytest.approx(plain.top1)
    assert result["cells"]["caa@0.1"]["success"]["value"] == pytest.approx(steered.topk)
    assert analogy_ranks(tiny_llama, methods["caa"].at(0.5), test) == list(steered.ranks)
    # the clamp edit, one prompt at a time with its own edit
    edit = methods["clamp"].at(2.0).edits
    one_by_one = []
    for (_, y), prompt in zip(test, prompts, strict=True):
        out = generate_tokens(
            tiny_llama, [prompt], edits=list(edit), max_new_tokens=1, keep_logits=True, last_token_only=True
        )
        logits = out.step_logits[0][0]
        target = tiny_llama.tokenizer.encode(" " + y, add_special_tokens=False)[0]
        one_by_one.append(int((logits > logits[target]).sum()))
    assert analogy_ranks(tiny_llama, methods["clamp"].at(2.0), test) == one_by_one
    # prompting puts the instruction before each neutral prompt
    instructed = next_token_accuracy(tiny_llama, [f"Shout it.\n\n{p}" for p in prompts], answers, k=3)
    assert result["cells"]["prompting"]["success"]["value"] == pytest.approx(instructed.topk)
    for cell in result["cells"].values():
        assert cell["success"]["low"] <= cell["success"]["value"] <= cell["success"]["high"]
        assert cell["n_test_pairs"] == len(test)
    assert analogy_ranks(tiny_llama, Steering(), test) == list(plain.ranks)


def test_bad_input(tiny_llama):
    with pytest.raises(ValueError, match="n_shots=20 needs more than 20 training pairs"):
        AnalogyTask(DOMAIN, n_shots=20)
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        AnalogyTask(DOMAIN, k=0)
    with pytest.raises(TypeError, match="domain must be an AnalogyDomain"):
        AnalogyTask({"a": "b"})
    with pytest.raises(ValueError, match="instruction must be a non-empty string"):
        AnalogyTask(DOMAIN, n_shots=2, instruction="")
