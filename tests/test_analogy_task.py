"""An analogy domain as a feature-vs-CAA dataset: contrast reps and cells against plain loops.

The tiny models' tokenizer is character-level, so every answer's first token is the space of
``" " + y``; its rank still differs from prompt to prompt and with steering, which is what the
comparisons below check (rank for rank, not only as shares).
"""

from __future__ import annotations

import json

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from tlsteer.analogy import AnalogyDomain, load_analogies, neutral_prompt, next_token_accuracy
from tlsteer.experiments.analogy_task import (
    AnalogyTask,
    analogy_ranks,
    contrast_from_analogy,
    run_analogy_task,
)
from tlsteer.experiments.cells import UNSTEERED, calibrate_method
from tlsteer.experiments.comparison_config import ComparisonConfig
from tlsteer.experiments.comparison_result import ComparisonResult
from tlsteer.experiments.feature_vs_caa import applicable_methods, builtin_instructions, feature_vs_caa
from tlsteer.experiments.methods import METHODS, Method, build_methods
from tlsteer.positions import Positions
from tlsteer.sae.selection import feature_stats
from tlsteer.steering import Steering
from tlsteer.vector import SteeringVector

HOOK = "blocks.1.hook_resid_post"
# x's of 1 to 3 characters, so that batches are left-padded
DOMAIN = AnalogyDomain(
    "toy", tuple((c * (1 + i % 3), c.upper() * (1 + i % 2)) for i, c in enumerate("abcdefghijklmnop"))
)
NEUTRAL = ["Water boils at 100 degrees.", "The Nile flows north.", "Mix oil and vinegar well.", "Hi there"]
K = 10


@pytest.fixture(scope="module")
def sae():
    d_model = 32  # both tiny models
    sae = StandardSAE(StandardSAEConfig(d_in=d_model, d_sae=16, metadata=SAEMetadata(hook_name=HOOK)))
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn(16, d_model, generator=torch.Generator().manual_seed(0)) / 4)
        sae.W_enc.copy_(sae.W_dec.T.clone())
        sae.b_enc.fill_(0.05)
    return sae


def last_token(model, prompt):
    _, cache = model.run_with_cache(prompt, names_filter=HOOK)
    return cache[HOOK][0, -1]


def test_contrast_equals_a_plain_loop_at_the_last_token(tiny, sae):
    task = AnalogyTask(DOMAIN, n_shots=3, seed=1)
    train, test = task.parts()
    assert len(train) + len(test) == len(DOMAIN.pairs) and not set(train) & set(test)
    prompts = task.contrast_prompts()
    assert len(prompts) == len(train)
    for (x, _), (few, plain) in zip(train, prompts, strict=True):
        *demos, last = few.split("\n")
        assert plain == neutral_prompt(x) == last
        shown = [tuple(line.split(" → ")) for line in demos]
        assert len(shown) == 3 and all(p in train and p[0] != x for p in shown)
    reps = contrast_from_analogy(tiny, sae, task, HOOK, batch_size=3)
    with torch.no_grad():
        pos = torch.stack([last_token(tiny, few) for few, _ in prompts])
        neg = torch.stack([last_token(tiny, plain) for _, plain in prompts])
        torch.testing.assert_close(reps.raw_pos, pos, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(reps.raw_neg, neg, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(reps.feat_pos, sae.encode(pos), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(reps.feat_neg, sae.encode(neg), atol=1e-5, rtol=1e-5)
    assert reps.paired and not torch.allclose(reps.raw_pos, reps.raw_neg)


def toward_space(model):
    """A unit direction that raises the space token (the tiny models' first answer token)."""
    d = model.W_U[:, model.tokenizer.encode(" ", add_special_tokens=False)[0]].detach().clone()
    return SteeringVector({HOOK: d / d.norm()})


def test_cells_equal_plain_scoring(tiny_llama, sae):
    task = AnalogyTask(DOMAIN, n_shots=2, k=K, instruction="Shout it.")
    direction = toward_space(tiny_llama)
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
        "caa": {0.1: {"strength": 1.0, "kl_mean": 0.1, "kl_p95": 0.3, "reached": True}},
        "clamp": {0.1: {"strength": 4.0, "kl_mean": 0.12, "kl_p95": 0.4, "reached": False}},
        "prompting": {0.1: {"strength": None, "kl_mean": 0.2, "kl_p95": 0.5, "reached": False}},
    }
    cells = run_analogy_task(tiny_llama, methods, cal, task, n_resamples=200, batch_size=3)
    assert set(cells) == {UNSTEERED, ("caa", 0.1), ("clamp", 0.1), ("prompting", None)}
    _, test = task.parts()
    prompts, answers = [neutral_prompt(x) for x, _ in test], [y for _, y in test]
    plain = next_token_accuracy(tiny_llama, prompts, answers, k=K)
    steered = next_token_accuracy(
        tiny_llama, prompts, answers, direction.steering(10.0, positions=Positions.last()), k=K
    )
    assert 0 < plain.topk < 1 and plain.top1 < steered.top1 < 1  # the checks below can tell cells apart
    for key, score in ((UNSTEERED, plain), (("caa", 0.1), steered)):
        assert cells[key].success.value == pytest.approx(score.topk)
        assert cells[key].top1 is not None and cells[key].top1.value == pytest.approx(score.top1)
    assert analogy_ranks(tiny_llama, Steering(), test) == list(plain.ranks)
    assert analogy_ranks(tiny_llama, methods["caa"].at(1.0), test) == list(steered.ranks)
    # the clamp edit, one prompt at a time, at its last position only
    edits = list(methods["clamp"].at(4.0).edits)
    space = tiny_llama.tokenizer.encode(" ", add_special_tokens=False)[0]
    alone = []
    for prompt in prompts:
        tokens = tiny_llama.to_tokens(prompt)
        at_last = Steering.from_edits(edits, positions=Positions.at([tokens.shape[1] - 1]))
        with torch.no_grad(), at_last.apply(tiny_llama):
            logits = tiny_llama(tokens)[0, -1]
        alone.append(int((logits > logits[space]).sum()))
    assert analogy_ranks(tiny_llama, methods["clamp"].at(4.0), test, batch_size=3) == alone
    assert alone != list(plain.ranks)  # the edit does something
    clamp = cells["clamp", 0.1]
    assert clamp.success.value == pytest.approx(sum(r < K for r in alone) / len(alone))
    assert clamp.top1 is not None and clamp.top1.value == pytest.approx(
        sum(r == 0 for r in alone) / len(alone)
    )
    # prompting puts the instruction before each neutral prompt
    told = next_token_accuracy(tiny_llama, [f"Shout it.\n\n{p}" for p in prompts], answers, k=K)
    assert told.ranks != plain.ranks
    prompting = cells["prompting", None]
    assert prompting.success.value == pytest.approx(told.topk)
    assert prompting.top1 is not None and prompting.top1.value == pytest.approx(told.top1)
    # calibration fields copied; intervals hold their value
    assert clamp.strength == 4.0 and clamp.reached is False
    assert prompting.strength is None and prompting.kl_mean == 0.2
    assert cells[UNSTEERED].strength is None and cells[UNSTEERED].kl_mean is None
    for cell in cells.values():
        for metric in (cell.success, cell.top1):
            assert metric is not None and metric.low <= metric.value <= metric.high
        assert cell.n_test_pairs == len(test)


def test_built_and_calibrated_methods_end_to_end(tiny_llama, sae):
    task = AnalogyTask(DOMAIN, n_shots=2, k=K, instruction="Shout it.")
    reps = contrast_from_analogy(tiny_llama, sae, task, HOOK)
    stats = feature_stats(tiny_llama, sae, NEUTRAL, hook_name=HOOK)
    methods = build_methods(
        tiny_llama,
        sae,
        HOOK,
        reps,
        10.0,
        stats,
        instruction=task.instruction,
        methods=["caa", "clamp", "prompting"],
        max_density=1.0,
        n_candidates=4,
        k_output=2,
        score_prompts=NEUTRAL[:2],
    )
    cal = {n: calibrate_method(tiny_llama, m, NEUTRAL, [0.1]) for n, m in methods.items()}
    cells = run_analogy_task(tiny_llama, methods, cal, task, n_resamples=1000)
    assert set(cells) == {UNSTEERED, ("caa", 0.1), ("clamp", 0.1), ("prompting", None)}
    _, test = task.parts()
    caa = cal["caa"][0.1]["strength"]
    direct = next_token_accuracy(
        tiny_llama,
        [neutral_prompt(x) for x, _ in test],
        [y for _, y in test],
        methods["caa"].direction.steering(caa * 10.0, positions=Positions.last()),
        k=K,
    )
    assert cells["caa", 0.1].success.value == pytest.approx(direct.topk)
    assert cells["caa", 0.1].strength == pytest.approx(caa)


def test_feature_vs_caa_on_an_analogy_gives_an_analogy_result(tiny_llama, sae, tmp_path):
    task = AnalogyTask(DOMAIN, n_shots=2, k=K, instruction="Shout it.")
    config = ComparisonConfig(methods=["caa", "prompting"], budgets=[0.1], n_resamples=200)
    result = feature_vs_caa(tiny_llama, sae, task, config, neutral=NEUTRAL, out_dir=tmp_path)
    train, test = task.parts()
    assert result.kind == "analogy" and result.dataset == "analogy_toy"
    assert (result.k, result.n_shots, result.n_train_pairs, result.n_test_pairs) == (
        K,
        2,
        len(train),
        len(test),
    )
    assert set(result.cells) == {UNSTEERED, ("caa", 0.1), ("prompting", None)}
    saved = json.loads((tmp_path / "feature_vs_caa_analogy_toy.json").read_text())
    assert (saved["k"], saved["n_test_pairs"]) == (K, len(test))
    assert saved["cells"]["caa@0.1"]["top1"] == result.cells["caa", 0.1].top1.to_dict()
    assert ComparisonResult.load(tmp_path / "feature_vs_caa_analogy_toy.json") == result
    frame = result.to_frame()
    assert list(frame["method"]) == ["unsteered", "caa", "prompting"]
    assert list(frame["top1"]) == [c.top1.value for c in result.cells.values()]


def test_every_builtin_domain_is_a_task_with_an_instruction():
    instructions = builtin_instructions()["analogies"]
    for name, domain in load_analogies().items():
        assert isinstance(instructions.get(name), str) and instructions[name].strip()
        task = AnalogyTask(domain, instruction=instructions[name])
        train, test = task.parts()
        assert task.name == f"analogy_{name}" and len(train) > task.n_shots and test
    assert set(instructions) == set(load_analogies())


def test_bad_input(tiny_llama, sae):
    with pytest.raises(ValueError, match="n_shots=20 needs more than 20 training pairs"):
        AnalogyTask(DOMAIN, n_shots=20)
    with pytest.raises(ValueError, match="n_shots must be an int >= 1, got 0"):
        AnalogyTask(DOMAIN, n_shots=0)
    with pytest.raises(ValueError, match="k must be an int >= 1, got 0"):
        AnalogyTask(DOMAIN, k=0)
    with pytest.raises(TypeError, match="domain must be an AnalogyDomain.*dict"):
        AnalogyTask({"a": "b"})
    with pytest.raises(TypeError, match="seed must be an int, got 'x'"):
        AnalogyTask(DOMAIN, seed="x")
    with pytest.raises(ValueError, match="instruction must be a non-empty string"):
        AnalogyTask(DOMAIN, n_shots=2, instruction=" ")
    with pytest.raises(TypeError, match="task must be an AnalogyTask, got AnalogyDomain"):
        contrast_from_analogy(tiny_llama, sae, DOMAIN, HOOK)
    method = Method("prompting", "prompt", prefix="Shout it.", hook_name=HOOK)
    with pytest.raises(ValueError, match="method 'prompting' has no calibration"):
        run_analogy_task(tiny_llama, {"prompting": method}, {}, AnalogyTask(DOMAIN, n_shots=2))


def test_methods_that_do_not_apply_to_an_analogy_are_refused(tiny_llama, sae):
    bare = AnalogyTask(DOMAIN, n_shots=2)
    with pytest.raises(ValueError, match="method 'mean_centred' does not apply to AnalogyTask 'analogy_toy'"):
        feature_vs_caa(tiny_llama, sae, bare, ComparisonConfig(methods=["mean_centred"]), neutral=NEUTRAL)
    with pytest.raises(ValueError, match="method 'prompting' does not apply to .*: it has no instruction"):
        feature_vs_caa(tiny_llama, sae, bare, ComparisonConfig(methods=["caa", "prompting"]), neutral=NEUTRAL)
    with pytest.raises(ValueError, match="mmlu= does not apply to AnalogyTask 'analogy_toy'"):
        feature_vs_caa(tiny_llama, sae, bare, ComparisonConfig(methods=["caa"]), mmlu=[], neutral=NEUTRAL)
    with pytest.raises(ValueError, match=r"split_seed .* carries its own seed \(AnalogyTask\(seed=...\)\)"):
        feature_vs_caa(tiny_llama, sae, bare, ComparisonConfig(split_seed=3), neutral=NEUTRAL)
    assert applicable_methods(bare) == tuple(m for m in METHODS if m not in ("mean_centred", "prompting"))
