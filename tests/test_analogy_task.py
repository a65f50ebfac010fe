"""An analogy domain as a feature-vs-CAA dataset: contrast reps, whole-answer scores and cells
against plain loops.

The tiny models' tokenizer is character-level, so every candidate answer ``" " + y`` starts with
the same token (the space): a first-token score cannot tell the candidates apart, and only the
later tokens decide a rank. The comparisons below check ranks rank for rank, and summed
log-probabilities against a plain loop that runs the model once per answer token.
"""

from __future__ import annotations

import json

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from tlsteer.analogy import AnalogyDomain, load_analogies, neutral_prompt
from tlsteer.eval.bootstrap import clopper_pearson
from tlsteer.experiments.analogy_task import (
    AnalogyTask,
    analogy_ranks,
    answer_logprobs,
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
from tlsteer.tokens import tokenize
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


def reference_logprob(model, steering, x, y):
    """log p(" " + y | neutral prompt of x), one forward per answer token, each alone, steered from
    the prompt's last token on (the prefix, if any, written into the prompt)."""
    ids = tokenize(model, steering.instruct(neutral_prompt(x)))
    answer = model.tokenizer.encode(" " + y, add_special_tokens=False)
    edits = steering.without_prefix().at(Positions.start_at(len(ids) - 1))
    total = 0.0
    for k, token in enumerate(answer):
        with torch.no_grad(), edits.apply(model):
            logits = model(torch.tensor([ids + answer[:k]]))[0, -1]
        total += float(logits.double().log_softmax(-1)[token])
    return total


def random_direction(model, seed=0):
    d = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(seed))
    return SteeringVector({HOOK: d / d.norm()})


def random_steering(model, scale=8.0, seed=0):
    return random_direction(model, seed).steering(scale)


def clamp_method(sae):
    return Method(
        "clamp",
        "clamp",
        features=(0, 2),
        off_features=(4,),
        typical=torch.tensor([1.0, 3.0]),
        sae=sae,
        hook_name=HOOK,
    )


def test_summed_logprob_equals_a_plain_per_token_loop(tiny):
    candidates = list(AnalogyTask(DOMAIN, n_shots=2).candidates())
    assert len({tiny.tokenizer.encode(" " + c)[0] for c in candidates}) == 1  # first tokens all equal
    pairs = [DOMAIN.pairs[i] for i in (0, 2)]  # x's of 1 and 3 characters: left-padded batches
    chosen = ["A", "BB", "PP"]  # answers of 2 and 3 tokens: right-padded batches
    steerings = [
        Steering(),
        random_steering(tiny),
        Steering.from_prompt("Shout it.") + random_steering(tiny, seed=1),
    ]
    for steering in steerings:
        got = answer_logprobs(tiny, steering, pairs, chosen, batch_size=5)
        expected = torch.tensor([[reference_logprob(tiny, steering, x, c) for c in chosen] for x, _ in pairs])
        torch.testing.assert_close(got, expected.double(), atol=1e-4, rtol=0)
    plain = answer_logprobs(tiny, Steering(), pairs, chosen)
    for steering in steerings[1:]:  # the checks above can tell a steering from none
        assert (answer_logprobs(tiny, steering, pairs, chosen) - plain).abs().max() > 0.1


def test_batched_equals_one_by_one(tiny_llama, sae):
    task = AnalogyTask(DOMAIN, n_shots=2)
    _, test = task.parts()
    test = test[:4]
    # the test answers and a few others, of 2 and 3 tokens
    candidates = list(dict.fromkeys([y for _, y in test] + ["A", "BB", "PP"]))
    true = [candidates.index(y) for _, y in test]
    for steering in (
        random_steering(tiny_llama),
        clamp_method(sae).at(4.0),
        Steering.from_prompt("Shout it."),
    ):
        alone = answer_logprobs(tiny_llama, steering, test, candidates, batch_size=1)  # no padding
        batched = answer_logprobs(tiny_llama, steering, test, candidates, batch_size=7)
        torch.testing.assert_close(batched, alone, atol=1e-4, rtol=0)
        ranks = [int((row > row[j]).sum()) for row, j in zip(alone, true, strict=True)]
        assert analogy_ranks(tiny_llama, steering, test, candidates, batch_size=7) == ranks


def test_a_planted_direction_raises_the_whole_answer_and_its_rank(tiny_llama):
    """A direction toward "B" at the last block: every candidate starts with the same space, so
    only the summed log-probability of the later tokens can move "BB" to the top."""
    candidates = AnalogyTask(DOMAIN, n_shots=2).candidates()
    b = tiny_llama.tokenizer.encode("B", add_special_tokens=False)[0]
    last = f"blocks.{tiny_llama.cfg.n_layers - 1}.hook_resid_post"
    direction = tiny_llama.W_U[:, b].detach().clone()
    toward_b = SteeringVector({last: direction / direction.norm()}).steering(32.0)
    pair = [("bb", "BB")]
    before = reference_logprob(tiny_llama, Steering(), "bb", "BB")
    after = reference_logprob(tiny_llama, toward_b, "bb", "BB")
    assert after > before + 5  # the planted direction raises the whole answer
    [unsteered] = analogy_ranks(tiny_llama, Steering(), pair, candidates)
    assert unsteered > 0
    assert analogy_ranks(tiny_llama, toward_b, pair, candidates) == [0]


def test_cells_equal_plain_scoring(tiny_llama, sae):
    task = AnalogyTask(DOMAIN, n_shots=2, k=K, instruction="Shout it.")
    methods = {
        "caa": Method("caa", "vector", random_direction(tiny_llama), scale=8.0, hook_name=HOOK),
        "clamp": clamp_method(sae),
        "prompting": Method("prompting", "prompt", prefix="Shout it.", hook_name=HOOK),
    }
    cal = {
        "caa": {0.1: {"strength": 1.0, "kl_mean": 0.1, "kl_p95": 0.3, "reached": True}},
        "clamp": {0.1: {"strength": 4.0, "kl_mean": 0.12, "kl_p95": 0.4, "reached": False}},
        "prompting": {0.1: {"strength": None, "kl_mean": 0.2, "kl_p95": 0.5, "reached": False}},
    }
    cells = run_analogy_task(tiny_llama, methods, cal, task, batch_size=32)
    assert set(cells) == {UNSTEERED, ("caa", 0.1), ("clamp", 0.1), ("prompting", None)}
    _, test = task.parts()
    candidates = task.candidates()
    assert candidates == list(dict.fromkeys(y for _, y in DOMAIN.pairs)) and len(candidates) == 16
    steerings = {
        UNSTEERED: Steering(),
        ("caa", 0.1): methods["caa"].at(1.0),
        ("clamp", 0.1): methods["clamp"].at(4.0),
        ("prompting", None): Steering.from_prompt("Shout it."),
    }
    ranks = {
        key: analogy_ranks(tiny_llama, s, test, candidates, batch_size=1) for key, s in steerings.items()
    }
    assert len({tuple(r) for r in ranks.values()}) == 4  # every cell differs from every other
    for key, cell in cells.items():
        hits = [float(r < K) for r in ranks[key]]
        firsts = [float(r == 0) for r in ranks[key]]
        assert cell.outcomes == tuple(hits) and cell.n_test_pairs == len(test) == len(hits)
        assert (cell.success.value, cell.success.low, cell.success.high) == clopper_pearson(
            int(sum(hits)), len(hits)
        )
        assert cell.top1 is not None
        assert (cell.top1.value, cell.top1.low, cell.top1.high) == clopper_pearson(
            int(sum(firsts)), len(firsts)
        )
        if sum(firsts) == 0:  # an all-zero cell still has an upper bound
            assert cell.top1.high == pytest.approx(1 - 0.025 ** (1 / len(test)))
    # calibration fields copied
    clamp, prompting = cells["clamp", 0.1], cells["prompting", None]
    assert clamp.strength == 4.0 and clamp.reached is False
    assert prompting.strength is None and prompting.kl_mean == 0.2
    assert cells[UNSTEERED].strength is None and cells[UNSTEERED].kl_mean is None


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
    cells = run_analogy_task(tiny_llama, methods, cal, task)
    assert set(cells) == {UNSTEERED, ("caa", 0.1), ("clamp", 0.1), ("prompting", None)}
    _, test = task.parts()
    caa, direction = cal["caa"][0.1]["strength"], methods["caa"].direction
    assert direction is not None
    direct = analogy_ranks(
        tiny_llama,
        direction.steering(caa * 10.0),
        test,
        task.candidates(),
    )
    assert cells["caa", 0.1].outcomes == tuple(float(r < K) for r in direct)
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
    top1 = result.cells["caa", 0.1].top1
    assert top1 is not None and saved["cells"]["caa@0.1"]["top1"] == top1.to_dict()
    assert ComparisonResult.load(tmp_path / "feature_vs_caa_analogy_toy.json") == result
    frame = result.to_frame()
    assert list(frame["method"]) == ["unsteered", "caa", "prompting"]
    assert list(frame["top1"]) == [c.top1.value for c in result.cells.values() if c.top1 is not None]
    # one unit per test pair, every cell scoring each once, in that order
    assert result.units == tuple(("", i) for i in range(len(test)))
    assert saved["units"] == [["", i] for i in range(len(test))]
    for cell in result.cells.values():
        assert cell.outcomes is not None and len(cell.outcomes) == cell.n_test_pairs == len(test)
    direct = analogy_ranks(tiny_llama, Steering(), test, task.candidates())
    assert result.cells[UNSTEERED].outcomes == tuple(float(r < K) for r in direct)


def test_every_builtin_domain_is_a_task_with_an_instruction():
    instructions = builtin_instructions()["analogies"]
    for name, domain in load_analogies().items():
        assert isinstance(instructions.get(name), str) and instructions[name].strip()
        task = AnalogyTask(domain, instruction=instructions[name])
        train, test = task.parts()
        assert task.name == f"analogy_{name}" and len(train) > task.n_shots and test
        assert len(train) + len(test) == len(domain.pairs) and not set(train) & set(test)
        assert task.candidates() == [y for _, y in domain.pairs]  # every answer is distinct
    assert set(instructions) == set(load_analogies())
    # the test pairs the comparison scores: the validation and test splits together
    counts = {n: len(AnalogyTask(d).parts()[1]) for n, d in load_analogies().items()}
    assert counts == {"country_capital": 20, "number_successor": 16, "month_next": 18, "comparative": 20}


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
    with pytest.raises(ValueError, match=r"k=16 must be below the number of candidate answers \(16\)"):
        AnalogyTask(DOMAIN, n_shots=2, k=16)
    with pytest.raises(TypeError, match="task must be an AnalogyTask, got AnalogyDomain"):
        contrast_from_analogy(tiny_llama, sae, DOMAIN, HOOK)
    pairs = [("aa", "A")]
    with pytest.raises(ValueError, match=r"answer 'A' is not among the 2 candidates \('B', 'C'\)"):
        analogy_ranks(tiny_llama, Steering(), pairs, ["B", "C"])
    with pytest.raises(ValueError, match="candidate 'A' appears more than once"):
        analogy_ranks(tiny_llama, Steering(), pairs, ["A", "B", "A"])
    with pytest.raises(ValueError, match="every candidate must be a non-empty string, got ' '"):
        answer_logprobs(tiny_llama, Steering(), pairs, ["A", " "])
    with pytest.raises(ValueError, match="candidates must be a non-empty list of answers, got 'A'"):
        answer_logprobs(tiny_llama, Steering(), pairs, "A")
    with pytest.raises(ValueError, match=r"every pair must be a tuple \(x, y\) of two strings, got 'aa'"):
        answer_logprobs(tiny_llama, Steering(), ["aa"], ["A"])
    with pytest.raises(ValueError, match="need a non-empty list of"):
        analogy_ranks(tiny_llama, Steering(), [], ["A"])
    with pytest.raises(TypeError, match="steering must be a Steering, got NoneType"):
        answer_logprobs(tiny_llama, None, pairs, ["A"])
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        answer_logprobs(tiny_llama, Steering(), pairs, ["A"], batch_size=0)
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
    no_codebook = ("mean_centred", "prompting", "codes_add", "codes_bottleneck")
    assert applicable_methods(bare) == tuple(m for m in METHODS if m not in no_codebook)
