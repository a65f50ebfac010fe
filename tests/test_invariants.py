"""tlsteer.check_invariants: passes on correct steering, fails on planted violations of each check."""

from __future__ import annotations

import json

import pytest
import torch

import tlsteer
from tlsteer import Positions, Steering, SteeringVector, check_invariants
from tlsteer.operators import addition_operator
from tlsteer.vector import VectorMetadata

PROMPTS = ["The cat sat on the mat.", "Rain again", "Numbers: 1 2 3 4 5 6 7 8", "ok"]
CHECKS = [
    "kv_cache",
    "batch",
    "multiplier_zero",
    "hooks_normal_exit",
    "hooks_exception",
    "hooks_generation_error",
]


def vector(model, layer=1, seed=0, norm=6.0):
    gen = torch.Generator().manual_seed(seed)
    d = torch.randn(model.cfg.d_model, generator=gen)
    return SteeringVector({f"blocks.{layer}.hook_resid_post": norm * d / d.norm()})


@pytest.mark.parametrize(
    "where",
    # explicit: every row must reach every position now ("ok" is 2 tokens: it reaches 0..6 with 6 new
    # tokens), so [1, 4, 6] where the old rule (the longest row) let [1, 4, 9] through
    [
        Positions.all(),
        Positions.start_at(3),
        Positions.at([1, 4, 6]),
        Positions.last(),
        Positions.from_end(2),
    ],
    ids=["all", "from", "explicit", "last", "from_end"],
)
def test_correct_steering_passes_every_check(tiny, where):
    report = check_invariants(tiny, vector(tiny).steering(2.0, positions=where), PROMPTS, max_new_tokens=6)
    assert [c.name for c in report.checks] == CHECKS
    assert report.passed, str(report)
    assert report["kv_cache"].max_abs_diff < 1e-4
    assert report["multiplier_zero"].max_abs_diff == 0.0  # adding 0 * v is exact
    lengths = [len(tlsteer.tokenize(tiny, p)) for p in PROMPTS]  # tiny gemma3 prepends <bos>
    assert f"lengths {min(lengths)}..{max(lengths)} tokens" in report["batch"].detail


def test_steering_changes_logits_so_the_checks_are_not_vacuous(tiny):
    """The steered run really differs from the unsteered one at this multiplier."""
    out = [
        tlsteer.generate_tokens(tiny, PROMPTS[:1], vecs, max_new_tokens=3, keep_logits=True)
        for vecs in (None, vector(tiny).steering(2.0))
    ]
    assert (out[0].step_logits[0] - out[1].step_logits[0]).abs().max() > 0.1


def test_length_dependent_edit_fails_kv_cache_and_batch(tiny):
    """An edit that reads the sequence length acts differently with a cache and with padding."""
    direction = vector(tiny)["blocks.1.hook_resid_post"]

    def by_length(act):
        return 0.2 * act.shape[1] * direction.expand_as(act)

    steering = Steering.from_edits([("blocks.1.hook_resid_post", by_length)])
    report = check_invariants(tiny, steering, PROMPTS, max_new_tokens=4)
    assert report["kv_cache"].passed is False
    assert report["batch"].passed is False
    assert report["multiplier_zero"].passed is None
    assert "no multiplier" in report["multiplier_zero"].detail
    assert not report.passed
    assert "FAIL" in str(report)


def test_operator_that_is_not_zero_at_zero_fails_multiplier_zero(tiny):
    shift = vector(tiny, seed=1, norm=3.0)["blocks.1.hook_resid_post"]

    def offset(act, vec):
        return vec.expand_as(act) + shift

    report = check_invariants(tiny, vector(tiny).steering(4.0, operator=offset), PROMPTS, max_new_tokens=3)
    assert report["multiplier_zero"].passed is False
    assert report["multiplier_zero"].max_abs_diff > 1e-2
    assert report["kv_cache"].passed and report["batch"].passed


def test_leaking_edit_fails_the_hook_checks(tiny):
    """An edit that registers a permanent hook of its own on every call leaves hooks on the model."""
    add = addition_operator()
    direction = vector(tiny)["blocks.1.hook_resid_post"]

    def leaky(act):
        tiny.add_hook("blocks.2.hook_resid_post", lambda a, hook: a + 0.01, is_permanent=True)
        return add(act, direction)

    try:
        steering = Steering.from_edits([("blocks.1.hook_resid_post", leaky)])
        report = check_invariants(tiny, steering, PROMPTS[:2], max_new_tokens=2)
    finally:
        tiny.reset_hooks(including_permanent=True)
    for name in ("hooks_normal_exit", "hooks_exception", "hooks_generation_error"):
        assert report[name].passed is False, name
    assert "1 hooks left" in report["hooks_normal_exit"].detail  # one forward inside the block


def test_feature_edit_of_a_random_sae(tiny_llama):
    from tests.test_sae import random_sae
    from tlsteer.sae import feature_edit, feature_steering

    sae = random_sae("standard", hook="blocks.1.hook_resid_post")
    edit = feature_edit(sae, [3, 7], "clamp", values=[4.0, 4.0])
    steering = Steering.from_edits([("blocks.1.hook_resid_post", edit)])
    report = check_invariants(tiny_llama, steering, PROMPTS, max_new_tokens=4)
    assert report.passed, str(report)
    assert report["multiplier_zero"].passed is None
    clamp_last = feature_steering(tiny_llama, sae, [3, 7], "clamp", values=4.0, positions=Positions.last())
    report = check_invariants(tiny_llama, clamp_last, PROMPTS, max_new_tokens=4)
    assert report.passed, str(report)
    assert report["multiplier_zero"].passed is None


def test_report_serialises(tiny_llama):
    report = check_invariants(tiny_llama, vector(tiny_llama).steering(4.0), PROMPTS[:2], max_new_tokens=2)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["passed"] is True and [c["name"] for c in data["checks"]] == CHECKS
    text = str(report)
    assert "kv_cache" in text and "all passed" in text
    with pytest.raises(KeyError, match="no check 'nope'"):
        report["nope"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"prompts": []}, ValueError, "prompts must be a non-empty list"),
        ({"prompts": "hello"}, ValueError, "prompts must be a non-empty list"),
        ({"max_new_tokens": 0}, ValueError, "max_new_tokens must be an int >= 1, got 0"),
        ({"tolerance": float("nan")}, ValueError, "tolerance must be a finite number >= 0, got nan"),
        ({"tolerance": -1.0}, ValueError, "tolerance must be a finite number"),
        (
            {"steering": lambda m: vector(m).steering(float("inf"))},
            ValueError,
            "multiplier must be finite, got inf",
        ),
        ({"chat": "yes"}, TypeError, "chat"),  # the suite's run-time type checker answers first
        ({"steering": "blocks.1.hook_resid_post"}, TypeError, "steering"),
        (
            {"steering": lambda m: Steering.from_edits([("blocks.99.hook_resid_post", lambda a: a)])},
            KeyError,
            "layer 99 is out of range",
        ),
        (
            {"steering": lambda m: Steering()},
            ValueError,
            r"Steering\(unsteered\) has no edits, so there are no hooks",
        ),
        (
            {"steering": lambda m: Steering.from_prompt("Be brief.")},
            ValueError,
            r"has no edits, so there are no hooks to check",
        ),
        (
            {"steering": lambda m: vector(m).steering(1.0, positions=Positions.at([1, 40]))},
            ValueError,
            r"token_positions \[40\] are beyond prompt 0's reach",
        ),
    ],
)
def test_bad_input(tiny_llama, kwargs, error, match):
    args = {"steering": vector(tiny_llama).steering(4.0), "prompts": PROMPTS[:2], **kwargs}
    if callable(args["steering"]):  # built inside the test: some are refused when built
        with pytest.raises(error, match=match):
            args["steering"] = args["steering"](tiny_llama)
            check_invariants(tiny_llama, **args)
        return
    with pytest.raises(error, match=match):
        check_invariants(tiny_llama, **args)


def test_check_model_false_checks_a_vector_made_for_another_model(tiny_llama):
    foreign = SteeringVector(dict(vector(tiny_llama).directions), VectorMetadata(model_name="gpt2-small"))
    with pytest.raises(ValueError, match="made for model 'gpt2-small' but this model is 'tiny-llama'"):
        check_invariants(tiny_llama, foreign.steering(2.0), PROMPTS[:2], max_new_tokens=2)
    report = check_invariants(
        tiny_llama, foreign.steering(2.0), PROMPTS[:2], max_new_tokens=2, check_model=False
    )
    assert report.passed, str(report)


def test_a_prompt_prefix_goes_before_every_checked_prompt(tiny_llama):
    brief = Steering.from_prompt("Be brief.")
    steering = vector(tiny_llama).steering(2.0, positions=Positions.last()) + brief
    report = check_invariants(tiny_llama, steering, PROMPTS, max_new_tokens=3)
    assert report.passed, str(report)
    lengths = sorted(len(tlsteer.tokenize(tiny_llama, brief.instruct(p))) for p in PROMPTS)
    assert lengths[0] > len(tlsteer.tokenize(tiny_llama, "ok"))  # the prompts checked had the prefix
    assert f"lengths {lengths[0]}..{lengths[-1]} tokens" in report["batch"].detail


@pytest.mark.embedded
def test_invariants_hold_on_the_embedded_model(embedded):
    torch.manual_seed(0)
    d = torch.randn(embedded.cfg.d_model)
    vec = SteeringVector({"blocks.12.hook_resid_post": 8.0 * d / d.norm()})
    report = check_invariants(embedded, vec.steering(4.0, positions=Positions.start_at(2)), max_new_tokens=6)
    assert report.passed, str(report)
    assert report["kv_cache"].max_abs_diff < 1e-3


@pytest.mark.embedded
def test_check_command_on_the_embedded_model(embedded, tmp_path, capsys):  # noqa: ARG001 - warms the cache
    import numpy as np

    from tlsteer.cli import main

    path = tmp_path / "v.npy"
    np.save(path, np.random.default_rng(0).standard_normal(576).astype(np.float32))
    out = tmp_path / "report.json"
    args = ["check", "--vector", str(path), "--layer", "10", "--max-new-tokens", "2", "--json", str(out)]
    assert main(args) == 0
    data = json.loads(out.read_text())
    assert data["passed"] is True and len(data["checks"]) == 6
    assert "all passed" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="needs --layer"):
        main(["check", "--vector", str(path)])
