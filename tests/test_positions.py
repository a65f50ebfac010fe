"""The core's position machinery: edits of any kind, hooks that work alone, and the defects pinned."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tlsteer
from tests.conftest import count_hooks
from tests.conftest import step_logits as generate_steps
from tlsteer import Positions, Steering, SteeringVector
from tlsteer.hooks import direction_edit
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
    edits = [(HOOK, shrink_edit), ("blocks.2.hook_resid_pre", direction_edit(unit(tiny), 1.0))]
    steering = Steering.from_edits(edits, positions=Positions.make(**mode))
    hooks = steering.hooks(tiny)
    with tiny.hooks(fwd_hooks=hooks):
        cached = step_logits(tiny, tokens, True)
        full = step_logits(tiny, tokens, False)
    with steering.apply(tiny):
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
    with model.hooks(fwd_hooks=vec.steering(1.0, positions=Positions.make(**mode)).hooks(model)):
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
    with Steering.from_edits([(HOOK, shrink_edit)], positions=Positions.at([2, 5])).apply(model):
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
    # and the anchor is the prompt's last token: TransformerLens's generate embeds the tokens itself
    # (hook_embed never fires there), so both equal steering from that position, not every position
    with vec.apply(model, min_token_index=tokens.shape[1] - 1):
        started = step_logits(model, tokens, True)
    with vec.apply(model):
        everywhere = step_logits(model, tokens, True)
    assert (cached - started).abs().max() <= 1e-4
    assert (cached - everywhere).abs().max() > 1e-2


def test_edits_on_left_padded_rows_use_each_rows_own_positions(tiny_llama):
    model = tiny_llama
    texts = ["<|user|>hi<|end|>", "<|user|>a much longer one<|end|>"]
    ids = [tlsteer.tokenize(model, t) for t in texts]
    tokens, mask = left_pad(model, ids)
    pads = [tokens.shape[1] - len(i) for i in ids]
    steering = Steering.from_edits([(HOOK, shrink_edit)], positions=Positions.start_at(4))
    with model.hooks(fwd_hooks=steering.hooks(model, row_shift=pads)):
        _, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=[HOOK])
    # the engine under Steering.hooks, given the shifted positions itself, builds the same hooks
    shifted = Positions.make(min_token_index=4).shifted(pads)
    with model.hooks(fwd_hooks=tlsteer.hooks.edit_hooks(model, [(HOOK, shrink_edit)], shifted)):
        _, by_engine = model.run_with_cache(tokens, attention_mask=mask, names_filter=[HOOK])
    torch.testing.assert_close(by_engine[HOOK], cache[HOOK], atol=0, rtol=0)
    for row, text in enumerate(texts):
        alone = tokens_of(model, text)
        # hooks, not apply: the short row (4 tokens) never reaches position 4, which apply() would
        # refuse on exit ("nothing would be steered"); the row must then be left as it is
        with model.hooks(fwd_hooks=steering.hooks(model)):
            ref = resid(model, alone)
        torch.testing.assert_close(cache[HOOK][row, pads[row] :], ref[0], atol=1e-4, rtol=0)


def test_bad_edits_and_positions_are_refused_before_any_hook(tiny_llama):
    model = tiny_llama
    with pytest.raises(TypeError):  # the message users see: test_messages_users_see_...
        Steering.from_edits([(HOOK, 3.0)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="no edits to apply"):
        Steering.from_edits([])
    with pytest.raises(ValueError, match=r"'blocks.0.hook_resid_pre' runs before block 0's attention"):
        Steering.from_edits(
            [("blocks.0.hook_resid_pre", shrink_edit)], positions=Positions.start_at(2)
        ).hooks(model)
    Steering.from_edits([("blocks.0.hook_resid_pre", shrink_edit)]).hooks(model)  # every position is fine
    with pytest.raises(KeyError, match=r"layer 30 is out of range \(4 layers, valid: 0..3\)"):
        Steering.from_edits([("blocks.30.hook_resid_post", shrink_edit)]).hooks(model)
    with pytest.raises(KeyError) as err:
        Steering.from_edits([("blocks.1.hook_resid_psot", shrink_edit)]).hooks(model)
    assert "closest: 'blocks.1.hook_resid_post'" in str(err.value)
    with pytest.raises(KeyError) as err:
        Steering.from_edits([("completely.different", shrink_edit)]).hooks(model)
    assert "closest" not in str(err.value)
    # the engine under Steering.hooks takes its positions explicitly, and refuses anything else
    with pytest.raises(TypeError, match="positions"):
        tlsteer.hooks.edit_hooks(model, [(HOOK, shrink_edit)])  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="positions"):  # the message users see: test_messages_users_see_...
        Steering(((HOOK, shrink_edit),), positions={"min_token_index": 2})  # type: ignore[arg-type]
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
    beyond = rf"token_positions \[{n + 5}\] are beyond every forward in the block \({n} tokens"
    with pytest.raises(ValueError, match=beyond), vec.apply(model, token_positions=[1, n + 5]):
        model(tokens)
    assert count_hooks(model) == 0
    with vec.apply(model, token_positions=[1, n + 1]):  # reached by a decode step
        model.generate(tokens, max_new_tokens=3, verbose=False, do_sample=False)


def test_start_at_never_reached_raises_on_exit(tiny_llama):
    """A with-block whose forwards never reach a start_at index steered nothing: that raises."""
    model = tiny_llama
    vec = SteeringVector({HOOK: unit(model)})
    tokens = tokens_of(model)
    n = tokens.shape[1]
    beyond = rf"min_token_index={n + 4} is beyond every forward in the block \({n} tokens"
    with pytest.raises(ValueError, match=beyond), vec.apply(model, min_token_index=n + 4):
        model(tokens)
    assert count_hooks(model) == 0
    steering = vec.steering(1.0, positions=Positions.start_at(n))
    with pytest.raises(ValueError, match="nothing would be steered"), steering.apply(model):
        model(tokens)
    assert count_hooks(model) == 0
    with steering.apply(model):  # reached by the decode steps
        model.generate(tokens, max_new_tokens=3, verbose=False, do_sample=False)
    with vec.apply(model, min_token_index=n - 1):  # the last prompt column is reached
        model(tokens)
    with steering.apply(model):  # a block with no forward at all checks nothing
        pass
    with pytest.raises(RuntimeError, match="boom"), steering.apply(model):
        raise RuntimeError("boom")  # the block's own error, not "nothing would be steered"
    assert count_hooks(model) == 0


def test_query_key_hooks_are_refused_at_positions_other_than_all(tiny_llama):
    """Axis 1 of hook_pattern / hook_attn_scores is heads: steering 'positions' there would edit heads."""
    model = tiny_llama
    tokens = tokens_of(model)
    for name in ("blocks.1.attn.hook_pattern", "blocks.2.attn.hook_attn_scores"):
        for positions in (
            Positions.start_at(2),
            Positions.at([1, 3]),
            Positions.last(),
            Positions.from_end(2),
        ):
            steering = Steering.from_edits([(name, shrink_edit)], positions=positions)
            with pytest.raises(
                ValueError,
                match=rf"'{name}' is shaped \[batch, head, query_pos, key_pos\], "
                r"so its axis 1 is heads",
            ):
                steering.hooks(model)
            with pytest.raises(ValueError, match="axis 1 is heads"):
                steering.apply(model).__enter__()
            with pytest.raises(ValueError, match="axis 1 is heads"):
                steering.patch(model)
        assert count_hooks(model) == 0
        plain = model(tokens)
        with Steering.from_edits([(name, lambda act: torch.zeros_like(act))]).apply(model):
            torch.testing.assert_close(model(tokens), plain, atol=1e-5, rtol=0)  # every position: fine
    assert count_hooks(model) == 0


def test_from_end_steers_the_last_n_prompt_positions_and_everything_after(tiny):
    tokens = tokens_of(tiny)
    n = tokens.shape[1]
    plain = resid(tiny, tokens)
    edits = [(HOOK, shrink_edit)]
    with Steering.from_edits(edits, positions=Positions.from_end(3)).apply(tiny):
        got = resid(tiny, tokens)
    assert changed_columns(got, plain) == [n - 3, n - 2, n - 1]
    with Steering.from_edits(edits, positions=Positions.start_at(n - 3)).apply(tiny):
        same = resid(tiny, tokens)
    torch.testing.assert_close(got, same, atol=0, rtol=0)
    # under generation: the KV cache on equals off, and equals start_at(n - 3) on this prompt
    steering = Steering.from_edits(edits, positions=Positions.from_end(3))
    with steering.apply(tiny):
        cached = step_logits(tiny, tokens, True)
        full = step_logits(tiny, tokens, False)
    with steering.at(Positions.start_at(n - 3)).apply(tiny):
        started = step_logits(tiny, tokens, True)
    assert (cached - full).abs().max() <= 1e-4
    assert (cached - started).abs().max() <= 1e-4
    assert Positions.from_end(1) == Positions.last()
    assert Positions.from_end(4).describe() == "last 4 prompt tokens onward"
    assert Positions.last().describe() == "last prompt token onward"


def test_from_end_needs_n_at_least_one_and_a_first_forward_that_long(tiny_llama):
    model = tiny_llama
    for bad in (0, -2, True):  # 1.5 and "3": test_messages_users_see_without_runtime_type_checking
        with pytest.raises(ValueError, match=r"from_end needs an int n >= 1"):
            Positions.from_end(bad)  # type: ignore[arg-type]
    short = torch.tensor([tlsteer.tokenize(model, "ab")])
    steering = Steering.from_edits([(HOOK, shrink_edit)], positions=Positions.from_end(5))
    with (
        pytest.raises(
            ValueError,
            match=r"Positions.from_end\(5\) needs a first forward of at least 5 "
            r"positions, got 2",
        ),
        steering.apply(model),
    ):
        model(short)
    assert count_hooks(model) == 0


def test_non_finite_directions_and_multipliers_are_refused(tiny_llama):
    """Defect 2: NaN and inf never reach a forward pass."""
    model = tiny_llama
    bad = torch.ones(model.cfg.d_model)
    bad[3] = float("nan")
    with pytest.raises(ValueError, match=r"direction at 'blocks.1.hook_resid_post' has 1 non-finite entries"):
        SteeringVector({HOOK: bad})
    with pytest.raises(ValueError, match="non-finite"):
        Steering.from_vectors([({HOOK: bad}, 1.0)]).apply(model).__enter__()
    with pytest.raises(ValueError, match="non-finite"):
        direction_edit(bad.clone().fill_(float("inf")))
    vec = SteeringVector({HOOK: unit(model)})
    for m in (float("nan"), float("inf"), np.float32("nan")):
        with pytest.raises(ValueError, match="multiplier must be finite"):
            vec.apply(model, m).__enter__()
    assert count_hooks(model) == 0


def test_a_finite_direction_times_a_finite_multiplier_that_overflows_is_refused(tiny_llama):
    """3e38 and 10 are finite, their float32 product is inf: every logit would be NaN."""
    model = tiny_llama
    big = torch.zeros(model.cfg.d_model)
    big[5] = 3e38
    vec = SteeringVector({HOOK: big})
    message = r"multiplier 10.0 times the direction at 'blocks.1.hook_resid_post' overflows torch.float32"
    with pytest.raises(ValueError, match=message):
        Steering.from_vector(vec, 10.0)
    with pytest.raises(ValueError, match=r"overflows .*largest \|entry\| 3e\+38"):
        vec.steering(-10.0)
    with pytest.raises(ValueError, match="overflows"):
        vec.apply(model, 10.0).__enter__()
    with pytest.raises(ValueError, match="overflows"):
        Steering.from_vectors([(vec, 1.0), (vec, 10.0)])
    with pytest.raises(ValueError, match="overflows"):
        direction_edit(big, 10.0)
    assert vec.steering(1.0).edits  # the direction itself is finite: only the product is refused
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
    foreign = SteeringVector({HOOK: unit(model)}, tlsteer.vector.VectorMetadata(model_name="gpt2-small"))
    with pytest.raises(ValueError, match="made for model 'gpt2-small' but this model is 'tiny-llama'"):
        foreign.apply(model).__enter__()
    with foreign.apply(model, check_model=False):
        model(tokens_of(model))
    assert count_hooks(model) == 0


def test_model_check_opt_out_holds_for_every_way_to_steer(tiny_llama):
    model = tiny_llama
    foreign = SteeringVector({HOOK: unit(model)}, tlsteer.vector.VectorMetadata(model_name="gpt2-small"))
    steering = foreign.steering(2.0)
    assert steering.model_name == "gpt2-small"
    refused = "made for model 'gpt2-small' but this model is 'tiny-llama'; pass check_model=False"
    for call in (
        lambda **kw: steering.hooks(model, **kw),
        lambda **kw: steering.check(model, **kw),
        lambda **kw: steering.apply(model, **kw).__enter__(),
        lambda **kw: steering.patch(model, **kw),
        lambda **kw: foreign.patch(model, 2.0, **kw),
    ):
        with pytest.raises(ValueError, match=refused):
            call()
    tokens = tokens_of(model)
    with foreign.apply(model, 2.0, check_model=False):
        by_vector = model(tokens)
    with steering.apply(model, check_model=False):
        by_steering = model(tokens)
    with model.hooks(fwd_hooks=steering.hooks(model, check_model=False)):
        by_hooks = model(tokens)
    handle = steering.patch(model, check_model=False)
    by_patch = model(tokens)
    handle.remove()
    for got in (by_steering, by_hooks, by_patch):
        torch.testing.assert_close(got, by_vector, atol=0, rtol=0)
    assert count_hooks(model) == 0


def test_a_single_vector_where_pairs_are_expected_is_a_clear_error(tiny_llama):
    vec = SteeringVector({HOOK: unit(tiny_llama)})
    with pytest.raises(
        TypeError, match=r"got a single vector; use Steering.from_vector\(vector, multiplier\)"
    ):
        Steering.from_vectors(vec)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got a single vector"):
        Steering.from_vectors({HOOK: unit(tiny_llama)})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"expected \(SteeringVector, multiplier\) pairs, got"):
        Steering.from_vectors([vec])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="give a non-empty list of"):
        Steering.from_vectors([])
    assert count_hooks(tiny_llama) == 0


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
    "edit=3.0": lambda: tlsteer.Steering.from_edits([("blocks.1.hook_resid_post", 3.0)]),
    "from_end(1.5)": lambda: tlsteer.Positions.from_end(1.5),
    "from_end('3')": lambda: tlsteer.Positions.from_end("3"),
    "start_at(1.5)": lambda: tlsteer.Positions.start_at(1.5),
    "check_model='no'": lambda: vec.steering(1.0).check(model, check_model="no"),
    "positions=dict": lambda: tlsteer.Steering(positions={"min_token_index": 2}),
    "steering=pairs": lambda: tlsteer.generate(model, ["hi"], [(vec, 1.0)], max_new_tokens=1),
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
    assert (
        "edit=3.0 -> TypeError the edit at 'blocks.1.hook_resid_post' must be a callable activation -> "
        "delta, got 3.0" in out
    )
    assert "from_end(1.5) -> ValueError from_end needs an int n >= 1 (1 is the last position), got 1.5" in out
    assert "from_end('3') -> ValueError from_end needs an int n >= 1" in out
    assert "start_at(1.5) -> TypeError min_token_index must be an int, got 1.5" in out
    assert "check_model='no' -> TypeError check_model must be True or False, got 'no'" in out
    assert "positions=dict -> TypeError positions must be a tlsteer.Positions (Positions.all()" in out
    assert "steering=pairs -> TypeError expected a tlsteer.Steering (Steering.from_vector(vec, m)" in out
    assert "numpy layers: True [2]" in out
