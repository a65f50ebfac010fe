"""Steering: operators' algebra, position modes, several vectors, hook bookkeeping, errors."""

from __future__ import annotations

import math

import pytest
import torch

import tlsteer
from tests.conftest import count_hooks
from tlsteer import SteeringVector

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
    with vec.apply(model, multiplier=3.0, operator=tlsteer.ablation_then_addition_operator()):
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
    with tlsteer.apply_steering(tiny, [(a, 2.0), (b, -3.0)]):
        together = tiny(tokens)
    with (a + b * -1.5).apply(tiny, multiplier=2.0):
        summed = tiny(tokens)
    torch.testing.assert_close(stacked, together, atol=1e-5, rtol=0)
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
        tlsteer.apply_steering(model, [(good, 1.0), (wrong_d, 1.0)]).__enter__()
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
