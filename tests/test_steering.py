"""Steering: operators' algebra, position modes, several vectors, hook bookkeeping, errors, and the
:class:`tlsteer.Steering` value itself (composition, moving, prompting)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import tlsteer
from tests.conftest import count_hooks
from tlsteer import Positions, Steering, SteeringVector
from tlsteer.hooks import DirectionEdit
from tlsteer.vector import VectorMetadata

HOOK = "blocks.1.hook_resid_post"


def unit_vector(model, seed=0, hook=HOOK, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    d = torch.randn(model.cfg.d_model, generator=gen)
    return SteeringVector({hook: scale * d / d.norm()})


def tokens_of(model, text="hello there, world"):
    return torch.tensor([tlsteer.tokenize(model, text)])


def manual_run(model, tokens, fn, hook=HOOK):
    return model.run_with_hooks(tokens, fwd_hooks=[(hook, lambda act, hook: fn(act))])


def test_addition_equals_manual_hook(tiny):
    vec = unit_vector(tiny, hook=HOOK)
    tokens = tokens_of(tiny)
    with vec.apply(tiny, multiplier=2.5):
        steered = tiny(tokens)
    expected = manual_run(tiny, tokens, lambda a: a + 2.5 * vec[HOOK])
    torch.testing.assert_close(steered, expected, atol=1e-5, rtol=0)
    assert (steered - tiny(tokens)).abs().max() > 1e-2


def _cached(model, tokens, hook=HOOK):
    _, cache = model.run_with_cache(tokens, names_filter=[hook])
    return cache[hook]


def test_ablation_and_ablation_then_addition(tiny_llama):
    model = tiny_llama
    vec = unit_vector(model, seed=1)
    unit = vec[HOOK]
    tokens = tokens_of(model)
    before = _cached(model, tokens) @ unit
    assert before.abs().max() > 1e-3
    with vec.apply(model, multiplier=3.0, operator=tlsteer.ablation_operator()):
        after = _cached(model, tokens) @ unit
    assert after.abs().max() < 1e-4
    with vec.apply(model, multiplier=3.0, operator=tlsteer.operators.ablation_then_addition_operator()):
        after = _cached(model, tokens) @ unit
    torch.testing.assert_close(after, torch.full_like(after, 3.0), atol=1e-4, rtol=0)


def test_custom_operator(tiny_llama):
    model = tiny_llama
    vec = unit_vector(model)
    tokens = tokens_of(model)
    with vec.apply(model, multiplier=2.0, operator=lambda act, v: -0.5 * act):
        got = _cached(model, tokens)
    torch.testing.assert_close(got, 0.5 * _cached(model, tokens), atol=1e-5, rtol=0)


def test_min_token_index_leaves_earlier_positions(tiny):
    vec = unit_vector(tiny, scale=5.0)
    tokens = tokens_of(tiny)
    plain = tiny(tokens)
    with vec.apply(tiny, min_token_index=7):
        steered = tiny(tokens)
    torch.testing.assert_close(steered[:, :7], plain[:, :7], atol=1e-5, rtol=0)
    assert (steered[:, 7:] - plain[:, 7:]).abs().amax(dim=-1).min() > 1e-3


def test_explicit_positions_steer_only_those(tiny_llama):
    model = tiny_llama
    vec = unit_vector(model, scale=5.0)
    tokens = tokens_of(model)
    plain = _cached(model, tokens)
    with vec.apply(model, token_positions=[2, 5]):
        steered = _cached(model, tokens)
    changed = (steered - plain).abs().amax(dim=-1)[0]
    assert changed.nonzero().flatten().tolist() == [2, 5]
    torch.testing.assert_close(steered[0, 2] - plain[0, 2], vec[HOOK], atol=1e-5, rtol=0)


def test_last_token_only_steers_last_position_of_a_forward(tiny_llama):
    model = tiny_llama
    vec = unit_vector(model, scale=5.0)
    tokens = tokens_of(model)
    plain = _cached(model, tokens)
    with vec.apply(model, last_token_only=True):
        steered = _cached(model, tokens)
    changed = (steered - plain).abs().amax(dim=-1)[0]
    assert changed.nonzero().flatten().tolist() == [tokens.shape[1] - 1]


def test_several_vectors_stacked_equals_one_call(tiny):
    a = unit_vector(tiny, seed=1, hook="blocks.1.hook_resid_post")
    b = unit_vector(tiny, seed=2, hook="blocks.2.hook_resid_pre")
    tokens = tokens_of(tiny)
    with a.apply(tiny, multiplier=2.0), b.apply(tiny, multiplier=-3.0):
        stacked = tiny(tokens)
    with Steering.from_vectors([(a, 2.0), (b, -3.0)]).apply(tiny):
        together = tiny(tokens)
    with (a.steering(2.0) + b.steering(-3.0)).apply(tiny):
        composed = tiny(tokens)
    with (a + b * -1.5).apply(tiny, multiplier=2.0):
        summed = tiny(tokens)
    torch.testing.assert_close(stacked, together, atol=1e-5, rtol=0)
    torch.testing.assert_close(composed, together, atol=0, rtol=0)
    torch.testing.assert_close(stacked, summed, atol=1e-4, rtol=0)


def test_hooks_removed_after_exit_and_exception(tiny_llama):
    model = tiny_llama
    vec = unit_vector(model)
    with vec.apply(model, min_token_index=3):
        assert count_hooks(model) == 2  # the TL hook and the block's position tracker
    assert count_hooks(model) == 0
    with pytest.raises(RuntimeError, match="boom"), vec.apply(model, last_token_only=True):
        assert count_hooks(model) > 0
        raise RuntimeError("boom")
    assert count_hooks(model) == 0


def test_patch_handle_and_remove_all_steering_keep_user_hooks(tiny_llama):
    model = tiny_llama
    vec = unit_vector(model)
    seen = []
    user_hook = ("blocks.0.hook_resid_post", lambda act, hook: seen.append(1))
    model.add_hook(*user_hook)
    try:
        handle = vec.patch(model, multiplier=1.0, min_token_index=2)  # its hook and a position tracker
        other = unit_vector(model, seed=4).patch(
            model, multiplier=2.0, last_token_only=True
        )  # and 2 trackers
        assert count_hooks(model) == 1 + 2 + 3
        handle.remove()
        assert count_hooks(model) == 1 + 3
        assert tlsteer.remove_all_steering(model) == 3
        assert count_hooks(model) == 1
        other.remove()  # idempotent after remove_all_steering
        model(tokens_of(model))
        assert seen == [1]
    finally:
        model.reset_hooks()


def test_errors_and_nothing_half_applied(tiny_llama):
    model = tiny_llama
    good = unit_vector(model)
    wrong_d = SteeringVector({HOOK: torch.ones(7)})
    wrong_hook = SteeringVector({"blocks.9.hook_resid_post": torch.ones(32)})
    with pytest.raises(ValueError, match=r"vector has d_model=7 .* but model.cfg.d_model=32"):
        Steering.from_vectors([(good, 1.0), (wrong_d, 1.0)]).apply(model).__enter__()
    assert count_hooks(model) == 0
    with pytest.raises(ValueError, match=r"vector has d_model=7 .* but model.cfg.d_model=32"):
        (good.steering(1.0) + wrong_d.steering(1.0)).patch(model)
    assert count_hooks(model) == 0
    with pytest.raises(
        KeyError, match=r"hook 'blocks.9.hook_resid_post' not in model: layer 9 is out of range"
    ):
        wrong_hook.patch(model)
    assert count_hooks(model) == 0
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match=r"multiplier must be finite, got (nan|inf)"):
            good.patch(model, multiplier=bad)
    with pytest.raises(ValueError, match=r"min_token_index=-1 is negative"):
        good.patch(model, min_token_index=-1)
    with pytest.raises(ValueError, match=r"choose one of min_token_index, token_positions"):
        good.patch(model, min_token_index=2, token_positions=[1])
    with pytest.raises(ValueError, match=r"token_positions must be a non-empty list"):
        good.patch(model, token_positions=[-1])
    assert count_hooks(model) == 0


# -- the Steering value -------------------------------------------------------------------------


def test_vec_steering_is_steering_from_vector_and_the_apply_shortcut(tiny_llama):
    model = tiny_llama
    vec = unit_vector(model, scale=3.0)
    tokens = tokens_of(model)
    where = Positions.start_at(4)
    by_method = vec.steering(2.0, positions=where)
    by_class = Steering.from_vector(vec, 2.0, positions=where)
    by_mapping = Steering.from_vector({HOOK: vec[HOOK]}, 2.0, positions=where)
    for s in (by_method, by_class, by_mapping):
        assert s.hook_names == (HOOK,) and s.positions == where and s.prefix == ""
        ((name, edit),) = s.edits
        assert name == HOOK and isinstance(edit, DirectionEdit)
        assert torch.equal(edit.direction, 2.0 * vec[HOOK])  # the multiplier is folded in
    assert vec.steering().positions == Positions.all()
    assert torch.equal(vec.steering().edits[0][1].direction, vec[HOOK])  # default multiplier 1
    with vec.apply(model, 2.0, min_token_index=4):
        shortcut = model(tokens)
    for s in (by_method, by_class, by_mapping):
        with s.apply(model) as steered:
            assert steered is model
            torch.testing.assert_close(model(tokens), shortcut, atol=0, rtol=0)
    with pytest.raises(TypeError):  # everything after the multiplier is keyword-only
        vec.apply(model, 2.0, 4)  # type: ignore[misc]
    with pytest.raises(ValueError, match="a vector with no directions cannot steer"):
        Steering.from_vector({}, 1.0)
    assert count_hooks(model) == 0


def test_sum_of_steerings_runs_all_edits_and_keeps_positions_prefix_and_model(tiny_llama):
    model = tiny_llama
    a = unit_vector(model, seed=1).steering(2.0, positions=Positions.start_at(3))
    other_hook = unit_vector(model, seed=2, hook="blocks.2.hook_resid_pre")
    b = other_hook.steering(-1.0, positions=Positions.start_at(3))
    both = a + b
    assert both.edits == a.edits + b.edits
    assert both.hook_names == (HOOK, "blocks.2.hook_resid_pre")
    assert both.positions == Positions.start_at(3)
    assert (a + Steering()).edits == a.edits and (Steering() + a).positions == a.positions
    # a steering with no edits takes the other's positions, whatever its own
    assert (Steering(positions=Positions.last()) + a).positions == Positions.start_at(3)
    prompted = a + Steering.from_prompt("Be brief.")
    assert prompted.prefix == "Be brief." and prompted.edits == a.edits
    assert (Steering.from_prompt("Be brief.") + a).positions == a.positions
    tokens = tokens_of(model)
    with a.apply(model), b.apply(model):
        stacked = model(tokens)
    with both.apply(model):
        together = model(tokens)
    torch.testing.assert_close(together, stacked, atol=1e-5, rtol=0)
    made_for = SteeringVector({HOOK: torch.ones(32)}, VectorMetadata(model_name="tiny-llama"))
    assert (
        Steering.from_vector(made_for, 1.0) + Steering.from_vector({HOOK: torch.ones(32)})
    ).model_name == ("tiny-llama")
    assert count_hooks(model) == 0


def test_sum_refuses_what_cannot_be_one_steering(tiny_llama):
    a = unit_vector(tiny_llama).steering(1.0, positions=Positions.start_at(3))
    with pytest.raises(
        ValueError,
        match=r"cannot combine steerings acting at different positions \(from 3 and every position\); "
        r"move one with \.at\(\.\.\.\) first",
    ):
        a + unit_vector(tiny_llama, seed=1).steering(1.0)
    assert (a + unit_vector(tiny_llama, seed=1).steering(1.0).at(a.positions)).positions == a.positions
    with pytest.raises(ValueError, match=r"cannot combine two prompt prefixes \('A\.' and 'B\.'\)"):
        Steering.from_prompt("A.") + Steering.from_prompt("B.")
    x = Steering.from_edits([(HOOK, lambda act: 0 * act)], model_name="gpt2-small")
    y = Steering.from_edits([(HOOK, lambda act: 0 * act)], model_name="tiny-llama")
    with pytest.raises(
        ValueError,
        match=r"cannot combine steerings made for different models \('gpt2-small' and 'tiny-llama'\)",
    ):
        x + y
    with pytest.raises(TypeError):
        a + unit_vector(tiny_llama)  # type: ignore[operator]
    with pytest.raises(TypeError):
        a + 1  # type: ignore[operator]


def test_at_moves_the_same_edits_and_leaves_the_original(tiny_llama):
    model = tiny_llama
    vec = unit_vector(model, scale=5.0)
    s = vec.steering(1.0)
    moved = s.at(Positions.start_at(7))
    assert moved.edits == s.edits and moved.positions == Positions.start_at(7)
    assert s.positions == Positions.all()  # immutable: at() made a new value
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.positions = Positions.last()  # type: ignore[misc]
    tokens = tokens_of(model)
    with moved.apply(model):
        got = model(tokens)
    with vec.apply(model, min_token_index=7):
        expected = model(tokens)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    assert moved.at(Positions.all()).positions == s.positions
    assert count_hooks(model) == 0


def test_from_prompt_is_a_prefix_that_apply_and_patch_refuse(tiny_llama):
    model = tiny_llama
    brief = Steering.from_prompt("Be brief.")
    assert brief.prefix == "Be brief." and brief.edits == () and not brief.is_unsteered
    assert brief.instruct("Tell me a story.") == "Be brief.\n\nTell me a story."
    assert Steering().instruct("Tell me a story.") == "Tell me a story."
    assert brief.without_prefix().is_unsteered and Steering().is_unsteered
    for bad in ("", "   "):
        with pytest.raises(ValueError, match="a prompt prefix must be a non-empty string"):
            Steering.from_prompt(bad)
    steered = unit_vector(model).steering(2.0) + brief
    for s in (brief, steered):
        with pytest.raises(
            ValueError,
            match=r"this steering has a prompt prefix \('Be brief\.'\), which apply\(\) cannot apply",
        ):
            s.apply(model).__enter__()
        with pytest.raises(ValueError, match=r"which patch\(\) cannot apply: hooks do not change the prompt"):
            s.patch(model)
    assert count_hooks(model) == 0
    assert brief.hooks(model) == []  # the prefix is not a hook: instruct() puts it in the prompt
    assert len(steered.hooks(model)) == 1
    tokens = tokens_of(model)
    with steered.without_prefix().apply(model):
        got = model(tokens)
    with unit_vector(model).apply(model, 2.0):
        expected = model(tokens)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    assert count_hooks(model) == 0


def test_the_unsteered_steering_adds_no_hooks(tiny_llama):
    model = tiny_llama
    tokens = tokens_of(model)
    plain = model(tokens)
    with Steering().apply(model) as same:
        assert same is model and count_hooks(model) == 0
        torch.testing.assert_close(model(tokens), plain, atol=0, rtol=0)
    assert Steering().hooks(model) == []
    Steering().check(model)
    with pytest.raises(ValueError, match="an unsteered Steering has nothing to patch"):
        Steering().patch(model)
    assert repr(Steering()) == "Steering(unsteered)"
    assert count_hooks(model) == 0


def test_repr_says_what_the_steering_does(tiny_llama):
    foreign = SteeringVector({HOOK: torch.ones(32)}, VectorMetadata(model_name="gpt2-small"))
    s = foreign.steering(2.0, positions=Positions.at([2, 5])) + Steering.from_prompt("Be brief.")
    assert repr(s) == (
        "Steering(1 edit(s) at blocks.1.hook_resid_post; at [2, 5]; prefix='Be brief.'; for 'gpt2-small')"
    )
    assert "last 3 prompt tokens onward" in repr(
        unit_vector(tiny_llama).steering(1.0).at(Positions.from_end(3))
    )


def test_from_edits_takes_a_model_name_that_the_model_check_uses(tiny_llama):
    model = tiny_llama
    s = Steering.from_edits([(HOOK, lambda act: -0.5 * act)], model_name="gpt2-small")
    with pytest.raises(ValueError, match="made for model 'gpt2-small' but this model is 'tiny-llama'"):
        s.check(model)
    s.check(model, check_model=False)
    Steering.from_edits([(HOOK, lambda act: -0.5 * act)]).check(model)  # '': any model
    assert count_hooks(model) == 0
