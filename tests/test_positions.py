"""The core's position machinery: edits of any kind, hooks that work alone, and the defects pinned."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tlsteer
from tests.conftest import count_hooks
from tests.conftest import step_logits as generate_steps
from tlsteer import SteeringVector
from tlsteer.tokens import left_pad

HOOK = "blocks.1.hook_resid_post"
PROMPT = "<|user|>hello there<|end|><|assistant|>"


def unit(model, seed=0, scale=4.0):
    d = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(seed))
    return scale * d / d.norm()


def tokens_of(model, text=PROMPT):
    return torch.tensor([tlsteer.tokenize(model, text)])


def resid(model, tokens, hook=HOOK):
    _, cache = model.run_with_cache(tokens, names_filter=[hook])
    return cache[hook]


def changed_columns(a, b):
    return (a - b).abs().amax(dim=-1)[0].nonzero().flatten().tolist()


def step_logits(model, tokens, use_cache, n=5):
    return generate_steps(model, tokens, use_cache, n)[0]


def shrink_edit(act):
    """A non-additive edit: pull the activation halfway to zero (delta = -act / 2)."""
    return -0.5 * act


MODES = [
    {},
    {"min_token_index": 9},
    {"token_positions": [3, 10, 12]},
    {"last_token_only": True},
]


@pytest.mark.parametrize("mode", MODES, ids=["all", "from", "explicit", "last"])
def test_edit_hooks_alone_with_model_hooks_equal_apply_and_cache_off(tiny, mode):
    """Defect 6: the pure hook builder steers cached decode steps with no private registration."""
    tokens = tokens_of(tiny)
    edits = [(HOOK, shrink_edit), ("blocks.2.hook_resid_pre", tlsteer.direction_edit(unit(tiny), 1.0))]
    hooks = tlsteer.edit_hooks(tiny, edits, **mode)
    with tiny.hooks(fwd_hooks=hooks):
        cached = step_logits(tiny, tokens, True)
        full = step_logits(tiny, tokens, False)
    with tlsteer.apply_edits(tiny, edits, **mode):
        applied = step_logits(tiny, tokens, True)
    plain = step_logits(tiny, tokens, True)
    assert (cached - full).abs().max() <= 1e-4
    assert (cached - applied).abs().max() <= 1e-5
    assert (cached[:, 1:] - plain[:, 1:]).abs().max() > 1e-2  # decode steps were steered
    assert count_hooks(tiny) == 0


@pytest.mark.parametrize("mode", MODES, ids=["all", "from", "explicit", "last"])
def test_steering_hooks_alone_steer_decode_steps(tiny_llama, mode):
    model = tiny_llama
    vec = SteeringVector({HOOK: unit(model)})
    tokens = tokens_of(model)
    with model.hooks(fwd_hooks=tlsteer.steering_hooks(model, [(vec, 1.0)], **mode)):
        cached = step_logits(model, tokens, True)
        full = step_logits(model, tokens, False)
    assert (cached - full).abs().max() <= 1e-4
    with vec.apply(model, **mode):
        reference = step_logits(model, tokens, False)
    assert (cached - reference).abs().max() <= 1e-4


def test_non_additive_edit_at_explicit_positions_by_hand(tiny_llama):
    model = tiny_llama
    tokens = tokens_of(model)
    plain = resid(model, tokens)
    with tlsteer.apply_edits(model, [(HOOK, shrink_edit)], token_positions=[2, 5]):
        got = resid(model, tokens)
    assert changed_columns(got, plain) == [2, 5]
    torch.testing.assert_close(got[0, 5], 0.5 * plain[0, 5], atol=1e-5, rtol=0)


def test_last_token_only_does_not_carry_state_between_forwards(tiny_llama):
    """Defect 1: a second, longer forward in the same block is steered at its own last column."""
    model = tiny_llama
    prompt = tokens_of(model)
    longer = tokens_of(model, PROMPT + "(A) yes")
    vec = SteeringVector({HOOK: unit(model)})
    plain = resid(model, longer)
    with vec.apply(model, last_token_only=True):
        resid(model, prompt)
        got = resid(model, longer)
    assert changed_columns(got, plain) == [longer.shape[1] - 1]


def test_last_token_only_under_uncached_generate_keeps_the_prompt_anchor(tiny_llama):
    model = tiny_llama
    tokens = tokens_of(model)
    vec = SteeringVector({HOOK: unit(model)})
    with vec.apply(model, last_token_only=True):
        full = step_logits(model, tokens, False)
        cached = step_logits(model, tokens, True)
    assert (cached - full).abs().max() <= 1e-4


def test_edits_on_left_padded_rows_use_each_rows_own_positions(tiny_llama):
    model = tiny_llama
    texts = ["<|user|>hi<|end|>", "<|user|>a much longer one<|end|>"]
    ids = [tlsteer.tokenize(model, t) for t in texts]
    tokens, mask = left_pad(model, ids)
    pads = [tokens.shape[1] - len(i) for i in ids]
    positions = tlsteer.Positions.make(min_token_index=4).shifted(pads)
    with model.hooks(fwd_hooks=tlsteer.edit_hooks(model, [(HOOK, shrink_edit)], positions=positions)):
        _, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=[HOOK])
    for row, text in enumerate(texts):
        alone = tokens_of(model, text)
        with tlsteer.apply_edits(model, [(HOOK, shrink_edit)], min_token_index=4):
            ref = resid(model, alone)
        torch.testing.assert_close(cache[HOOK][row, pads[row] :], ref[0], atol=1e-4, rtol=0)


def test_bad_edits_and_positions_are_refused_before_any_hook(tiny_llama):
    model = tiny_llama
    with pytest.raises(TypeError, match="the edit at 'blocks.1.hook_resid_post' must be a callable"):
        tlsteer.edit_hooks(model, [(HOOK, 3.0)])
    with pytest.raises(ValueError, match="no edits to apply"):
        tlsteer.edit_hooks(model, [])
    with pytest.raises(ValueError, match=r"'blocks.0.hook_resid_pre' runs before block 0's attention"):
        tlsteer.edit_hooks(model, [("blocks.0.hook_resid_pre", shrink_edit)], min_token_index=2)
    tlsteer.edit_hooks(model, [("blocks.0.hook_resid_pre", shrink_edit)])  # every position is fine
    with pytest.raises(KeyError, match=r"layer 30 is out of range \(4 layers, valid: 0..3\)"):
        tlsteer.edit_hooks(model, [("blocks.30.hook_resid_post", shrink_edit)])
    with pytest.raises(KeyError) as err:
        tlsteer.edit_hooks(model, [("blocks.1.hook_resid_psot", shrink_edit)])
    assert "closest: 'blocks.1.hook_resid_post'" in str(err.value)
    with pytest.raises(KeyError) as err:
        tlsteer.edit_hooks(model, [("completely.different", shrink_edit)])
    assert "closest" not in str(err.value)
    assert count_hooks(model) == 0


def test_edit_of_the_wrong_shape_names_the_hook_and_shapes(tiny_llama):
    model = tiny_llama
    vec = SteeringVector({HOOK: unit(model)})
    with (
        pytest.raises(
            ValueError, match=r"at 'blocks.1.hook_resid_post' returned shape \(3,\) for an activation"
        ),
        vec.apply(model, operator=lambda act, v: torch.ones(3)),
    ):
        model(tokens_of(model))
    assert count_hooks(model) == 0


def test_positions_never_reached_raise_on_exit(tiny_llama):
    model = tiny_llama
    vec = SteeringVector({HOOK: unit(model)})
    tokens = tokens_of(model)
    n = tokens.shape[1]
    beyond = rf"token_positions \[{n + 5}\] are beyond the sequence"
    with pytest.raises(ValueError, match=beyond), vec.apply(model, token_positions=[1, n + 5]):
        model(tokens)
    assert count_hooks(model) == 0
    with vec.apply(model, token_positions=[1, n + 1]):  # reached by a decode step
        model.generate(tokens, max_new_tokens=3, verbose=False, do_sample=False)


def test_non_finite_directions_and_multipliers_are_refused(tiny_llama):
    """Defect 2: NaN and inf never reach a forward pass."""
    model = tiny_llama
    bad = torch.ones(model.cfg.d_model)
    bad[3] = float("nan")
    with pytest.raises(ValueError, match=r"direction at 'blocks.1.hook_resid_post' has 1 non-finite entries"):
        SteeringVector({HOOK: bad})
    with pytest.raises(ValueError, match="non-finite"):
        tlsteer.apply_steering(model, [({HOOK: bad}, 1.0)]).__enter__()
    with pytest.raises(ValueError, match="non-finite"):
        tlsteer.direction_edit(bad.clone().fill_(float("inf")))
    vec = SteeringVector({HOOK: unit(model)})
    for m in (float("nan"), float("inf"), np.float32("nan")):
        with pytest.raises(ValueError, match="multiplier must be finite"):
            vec.apply(model, m).__enter__()
    assert count_hooks(model) == 0


def test_numpy_and_tensor_multipliers_equal_floats(tiny_llama):
    model = tiny_llama
    vec = SteeringVector({HOOK: unit(model)})
    tokens = tokens_of(model)
    with vec.apply(model, 2.5):
        ref = model(tokens)
    for m in (np.float32(2.5), np.float64(2.5), torch.tensor(2.5)):
        with vec.apply(model, m):
            torch.testing.assert_close(model(tokens), ref, atol=0, rtol=0)
    for m in (True, "2", torch.ones(2), complex(1, 1)):
        with pytest.raises(TypeError, match="multiplier must be a real number"):
            vec.apply(model, m).__enter__()


def test_model_name_mismatch_is_refused_unless_opted_out(tiny_llama):
    model = tiny_llama
    foreign = SteeringVector({HOOK: unit(model)}, tlsteer.VectorMetadata(model_name="gpt2-small"))
    with pytest.raises(ValueError, match="made for model 'gpt2-small' but this model is 'tiny-llama'"):
        foreign.apply(model).__enter__()
    with foreign.apply(model, check_model=False):
        model(tokens_of(model))
    assert count_hooks(model) == 0


def test_a_single_vector_where_pairs_are_expected_is_a_clear_error(tiny_llama):
    vec = SteeringVector({HOOK: unit(tiny_llama)})
    with pytest.raises(TypeError, match=r"got a single vector; pass \[\(vector, 1.0\)\]"):
        tlsteer.apply_steering(tiny_llama, vec).__enter__()


def test_padding_side_is_left_so_transformer_lens_generate_masks_leading_pads(tiny_llama):
    """Defect 3: a left-padded batch through TransformerLens's generate equals each row alone."""
    model = tiny_llama
    assert model.tokenizer.padding_side == "left"
    texts = ["<|user|>hi<|end|><|assistant|>", "<|user|>a longer prompt<|end|><|assistant|>"]
    tokens, _ = left_pad(model, [tlsteer.tokenize(model, t) for t in texts])
    assert tokens[0, 0] == model.tokenizer.pad_token_id
    batched = step_logits(model, tokens, True)
    for row, text in enumerate(texts):
        alone = step_logits(model, tokens_of(model, text), True)
        assert (batched[row] - alone[0]).abs().max() <= 1e-4


USER_ERRORS = r"""
import numpy as np, torch, tlsteer
from tests.conftest import make_model
model = make_model("llama")
vec = tlsteer.SteeringVector({"blocks.1.hook_resid_post": torch.ones(32)})
cases = {
    "last_token_only='no'": lambda: vec.apply(model, last_token_only="no").__enter__(),
    "batch_size=2.0": lambda: tlsteer.read_activations(
        model, ["ab"], ["blocks.1.hook_resid_post"], batch_size=2.0
    ),
    "min_token_index=1.5": lambda: vec.apply(model, min_token_index=1.5).__enter__(),
}
pairs = [("I love it", "I hate it"), ("good", "bad")]
by_int = tlsteer.train_steering_vector(model, pairs, layers=[1, 2])
by_numpy = tlsteer.train_steering_vector(model, pairs, layers=np.array([1, 2]))
by_scalar = tlsteer.train_steering_vector(model, pairs, layers=np.int64(2))
print("numpy layers:", by_numpy.allclose(by_int), by_scalar.layers)
for name, call in cases.items():
    try:
        call()
    except (TypeError, ValueError) as err:
        print(name, "->", type(err).__name__, err)
    else:
        print(name, "-> accepted")
"""


def test_messages_users_see_without_runtime_type_checking():
    """The suite checks annotations at run time, which would answer first; users get these."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", USER_ERRORS], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    assert "last_token_only='no' -> TypeError last_token_only must be True or False, got 'no'" in out
    assert "batch_size=2.0 -> ValueError batch_size must be an int >= 1, got 2.0" in out
    assert "min_token_index=1.5 -> TypeError min_token_index must be an int, got 1.5" in out
    assert "numpy layers: True [2]" in out
