"""Batched steered generation: every row equals the row generated alone, in every position mode."""

from __future__ import annotations

import pytest
import torch

import tlsteer
from tlsteer import Positions, Steering, SteeringVector
from tlsteer.vector import VectorMetadata

PROMPTS = ["hi", "a much longer prompt here", "mid size one", "x"]
MODES = {
    "all": {},
    "from": {"min_token_index": 6},
    "explicit": {"token_positions": [1, 3, 5, 8]},
    "last": {"last_token_only": True},
}


def vector(model, scale=6.0):
    d = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(5))
    return SteeringVector({"blocks.1.hook_resid_post": scale * d / d.norm()})


def reference_greedy(model, prompt, vec, n, **mode):
    """A plain loop: a full forward per step, steered by ``vec.apply``, argmax."""
    ids = tlsteer.tokenize(model, tlsteer.chat_prompt(model, prompt))
    logits = []
    with vec.apply(model, **mode):
        for _ in range(n):
            step = model(torch.tensor([ids]))[0, -1]
            logits.append(step)
            ids.append(int(step.argmax()))
    return torch.stack(logits)


@pytest.mark.parametrize("mode", list(MODES))
def test_batched_rows_equal_a_plain_loop_per_prompt(tiny, mode):
    vec = vector(tiny)
    out = tlsteer.generate_tokens(
        tiny,
        PROMPTS,
        vec.steering(1.0, positions=Positions.make(**MODES[mode])),
        max_new_tokens=6,
        chat=True,
        stop_at_eos=False,
        keep_logits=True,
        batch_size=3,
    )
    plain = tlsteer.generate_tokens(
        tiny, PROMPTS, max_new_tokens=6, chat=True, stop_at_eos=False, keep_logits=True
    )
    for i, prompt in enumerate(PROMPTS):
        ref = reference_greedy(tiny, prompt, vec, 6, **MODES[mode])
        assert (out.step_logits[i] - ref).abs().max() <= 1e-4
        assert list(out.new_tokens[i]) == ref.argmax(-1).tolist()
    moved = max(float((a - b).abs().max()) for a, b in zip(out.step_logits, plain.step_logits, strict=True))
    assert moved > 1e-2  # steering changed something


def test_sampled_rows_use_their_own_seed_in_any_batch(tiny_llama):
    model = tiny_llama
    vec = vector(model)
    kwargs = dict(max_new_tokens=8, do_sample=True, temperature=2.0, stop_at_eos=False, chat=True)
    state = torch.get_rng_state()
    steering = vec.steering(1.0)
    batched = tlsteer.generate_tokens(model, PROMPTS, steering, seed=[3, 4, 5, 6], batch_size=4, **kwargs)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is not touched
    for i, prompt in enumerate(PROMPTS):
        alone = tlsteer.generate_tokens(model, [prompt], steering, seed=3 + i, **kwargs)
        assert alone.new_tokens[0] == batched.new_tokens[i]
    other = tlsteer.generate_tokens(model, PROMPTS, steering, seed=[30, 40, 50, 60], **kwargs)
    assert other.new_tokens != batched.new_tokens


def test_top_k_one_is_greedy(tiny_llama):
    greedy = tlsteer.generate(tiny_llama, PROMPTS, max_new_tokens=5, stop_at_eos=False)
    sampled = tlsteer.generate(
        tiny_llama, PROMPTS, max_new_tokens=5, stop_at_eos=False, do_sample=True, top_k=1
    )
    assert greedy == sampled


def test_stops_at_eos_per_row(tiny_llama):
    model = tiny_llama
    eos = model.tokenizer.eos_token_id
    # an edit that makes end-of-sequence the only choice from the first new token on, in row 1 only
    prompts = ["ab", "cd"]

    def force_eos(act):
        return torch.zeros_like(act)

    out = tlsteer.generate_tokens(model, prompts, max_new_tokens=5)
    plain_lengths = [len(t) for t in out.new_tokens]
    assert all(n >= 1 for n in plain_lengths)
    only_eos = Steering.from_edits(
        [
            (
                "unembed.hook_out",
                lambda logits: (
                    torch.where(torch.arange(logits.shape[-1]) == eos, 100.0, -100.0).expand_as(logits)
                    - logits
                ),
            )
        ]
    )
    forced = tlsteer.generate_tokens(model, prompts, only_eos, max_new_tokens=5, stop_at_eos=False)
    assert all(t == (eos,) * 5 for t in forced.new_tokens)
    stopped = tlsteer.generate_tokens(model, prompts, only_eos, max_new_tokens=5)
    assert all(t == (eos,) for t in stopped.new_tokens)
    assert force_eos  # (kept for readability of the edit above)


def test_generate_errors(tiny_llama):
    model = tiny_llama
    vec = vector(model)
    with pytest.raises(TypeError, match=r"prompts must be a list \(or any iterable\) of strings, got 'hi'"):
        tlsteer.generate(model, "hi")
    with pytest.raises(ValueError, match="prompts is empty; give at least one prompt string"):
        tlsteer.generate(model, [])
    with pytest.raises(
        ValueError, match=r"prompt 0 has 120 tokens plus 20 new tokens, more than .*n_ctx=128"
    ):
        tlsteer.generate(model, ["y" * 120], max_new_tokens=20)
    with pytest.raises(
        ValueError,
        match=r"token_positions \[200\] are beyond prompt 0's reach \(its 2 tokens \+ new tokens - 1\) "
        r"\(4 tokens; valid: 0\.\.3\)",
    ):
        tlsteer.generate(model, ["hi"], vec.steering(1.0, positions=Positions.at([1, 200])), max_new_tokens=3)
    with pytest.raises(ValueError, match=r"seed must be an int or one int per prompt \(2\)"):
        tlsteer.generate(model, ["a", "b"], seed=[1])
    with pytest.raises(ValueError, match="top_p must be None or a number in"):
        tlsteer.generate(model, ["a"], do_sample=True, top_p=1.5)
    with pytest.raises(ValueError, match="multiplier must be finite"):
        tlsteer.generate(model, ["a"], vec.steering(float("nan")))


def test_every_row_must_reach_the_steering_the_same_alone_and_batched(tiny_llama):
    """The reach rule is per row: a row whose prompt plus fed-back tokens never reaches the steering's
    positions is refused, in a batch with longer rows as alone (the old rule took the longest row)."""
    model = tiny_llama
    vec = vector(model)
    short, long = "hi", "a much longer prompt here"  # 2 and 25 tokens; 4 new: the short row reaches 0..4
    kwargs = dict(max_new_tokens=4, stop_at_eos=False, keep_logits=True)
    beyond_short = (
        r"min_token_index=5 is beyond prompt {i}'s reach \(its 2 tokens \+ new tokens - 1\) "
        r"\(5 tokens; valid: 0\.\.4\); nothing would be steered"
    )
    too_far = vec.steering(1.0, positions=Positions.start_at(5))
    for prompts, i in (([short], 0), ([long, short], 1), ([short, long], 0)):
        for batch_size in (1, 2):
            with pytest.raises(ValueError, match=beyond_short.format(i=i)):
                tlsteer.generate_tokens(model, prompts, too_far, batch_size=batch_size, **kwargs)
    tlsteer.generate_tokens(model, [long], too_far, **kwargs)  # the long row alone reaches it
    explicit = vec.steering(1.0, positions=Positions.at([1, 5]))
    for prompts in ([short], [long, short]):
        with pytest.raises(ValueError, match=r"token_positions \[5\] are beyond prompt \d's reach"):
            tlsteer.generate_tokens(model, prompts, explicit, **kwargs)
    # the boundary: position 4 is the last token fed back, so only the last step is steered
    edge = vec.steering(1.0, positions=Positions.start_at(4))
    steered = tlsteer.generate_tokens(model, [short], edge, **kwargs)
    plain = tlsteer.generate_tokens(model, [short], **kwargs)
    torch.testing.assert_close(steered.step_logits[0][:3], plain.step_logits[0][:3], atol=1e-5, rtol=0)
    assert (steered.step_logits[0][3] - plain.step_logits[0][3]).abs().max() > 1e-2
    batched = tlsteer.generate_tokens(model, [long, short], edge, batch_size=2, **kwargs)
    assert (batched.step_logits[1] - steered.step_logits[0]).abs().max() <= 1e-4
    assert batched.new_tokens[1] == steered.new_tokens[0]


def test_prompts_may_be_any_iterable(tiny_llama):
    model = tiny_llama
    steering = vector(model).steering(1.0, positions=Positions.last())
    expected = tlsteer.generate(model, PROMPTS, steering, max_new_tokens=4, stop_at_eos=False)
    for prompts in ((p for p in PROMPTS), tuple(PROMPTS), iter(PROMPTS), map(str, PROMPTS)):
        assert tlsteer.generate(model, prompts, steering, max_new_tokens=4, stop_at_eos=False) == expected
    out = tlsteer.generate_tokens(model, (p for p in PROMPTS), steering, max_new_tokens=4, stop_at_eos=False)
    assert list(out.texts) == expected and len(out.prompt_tokens) == len(PROMPTS)
    with pytest.raises(ValueError, match="prompts is empty"):
        tlsteer.generate(model, (p for p in []))


@pytest.mark.parametrize("temperature", [1e-45, 1e-7, 0.0, -1.0, float("nan"), float("inf")])
def test_temperature_below_1e_6_or_not_finite_is_refused(tiny_llama, temperature):
    """1e-45 is a positive float, but logits / 1e-45 overflow to inf and the softmax to NaN."""
    message = (
        r"temperature must be a finite number >= 1e-06 \(smaller ones overflow logits / temperature; use "
        rf"do_sample=False for greedy decoding\), got {temperature!r}"
    )
    with pytest.raises(ValueError, match=message):
        tlsteer.generate(tiny_llama, ["hi"], max_new_tokens=2, do_sample=True, temperature=temperature)


def test_temperature_1e_6_is_accepted_and_near_greedy(tiny_llama):
    greedy = tlsteer.generate(tiny_llama, PROMPTS, max_new_tokens=4, stop_at_eos=False)
    cold = tlsteer.generate(
        tiny_llama, PROMPTS, max_new_tokens=4, stop_at_eos=False, do_sample=True, temperature=1e-6
    )
    assert cold == greedy


def test_seeds_must_fit_torch_generators(tiny_llama):
    kwargs = dict(max_new_tokens=3, do_sample=True, temperature=2.0, stop_at_eos=False)
    for bad in (2**64, -1):
        with pytest.raises(
            ValueError,
            match=rf"a seed must be an int in 0\.\.2\*\*64-1 \(torch.Generator's range\), got {bad}",
        ):
            tlsteer.generate(tiny_llama, ["hi"], seed=bad, **kwargs)
    with pytest.raises(ValueError, match=r"got 18446744073709551616"):
        tlsteer.generate(tiny_llama, ["hi", "yo"], seed=[0, 2**64], **kwargs)
    top = tlsteer.generate(tiny_llama, ["hi"], seed=2**64 - 1, **kwargs)
    assert top == tlsteer.generate(tiny_llama, ["hi"], seed=2**64 - 1, **kwargs)  # the largest seed works


def test_check_model_false_steers_with_a_vector_made_for_another_model(tiny_llama):
    model = tiny_llama
    direction = vector(model)["blocks.1.hook_resid_post"]
    foreign = SteeringVector({"blocks.1.hook_resid_post": direction}, VectorMetadata(model_name="gpt2-small"))
    anyone = SteeringVector({"blocks.1.hook_resid_post": direction})
    refused = "made for model 'gpt2-small' but this model is 'tiny-llama'; pass check_model=False"
    with pytest.raises(ValueError, match=refused):
        tlsteer.generate(model, PROMPTS, foreign.steering(1.0), max_new_tokens=3)
    with pytest.raises(ValueError, match=refused):
        tlsteer.generate_tokens(model, PROMPTS, foreign.steering(1.0), max_new_tokens=3)
    got = tlsteer.generate(model, PROMPTS, foreign.steering(1.0), max_new_tokens=3, check_model=False)
    assert got == tlsteer.generate(model, PROMPTS, anyone.steering(1.0), max_new_tokens=3)
    out = tlsteer.generate_tokens(model, PROMPTS, foreign.steering(1.0), max_new_tokens=3, check_model=False)
    assert list(out.texts) == got


def test_no_steering_and_the_unsteered_steering_are_the_plain_model(tiny_llama):
    plain = tlsteer.generate(tiny_llama, PROMPTS, max_new_tokens=4, stop_at_eos=False)
    assert tlsteer.generate(tiny_llama, PROMPTS, None, max_new_tokens=4, stop_at_eos=False) == plain
    assert tlsteer.generate(tiny_llama, PROMPTS, Steering(), max_new_tokens=4, stop_at_eos=False) == plain


def test_a_prompt_prefix_goes_before_every_prompt(tiny_llama):
    model = tiny_llama
    brief = Steering.from_prompt("Be brief.")
    kwargs = dict(max_new_tokens=4, stop_at_eos=False, chat=True)
    out = tlsteer.generate_tokens(model, PROMPTS, brief, **kwargs)
    by_hand = tlsteer.generate_tokens(model, [f"Be brief.\n\n{p}" for p in PROMPTS], **kwargs)
    assert out.prompt_tokens == by_hand.prompt_tokens and out.new_tokens == by_hand.new_tokens
    assert out.prompt_tokens[0] == tuple(
        tlsteer.tokenize(model, tlsteer.chat_prompt(model, "Be brief.\n\nhi"))
    )
    # with edits too: their positions count in the prompt with its prefix
    steering = vector(model).steering(1.0, positions=Positions.last()) + brief
    both = tlsteer.generate_tokens(model, PROMPTS, steering, **kwargs)
    edits_by_hand = tlsteer.generate_tokens(
        model, [brief.instruct(p) for p in PROMPTS], steering.without_prefix(), **kwargs
    )
    assert both.new_tokens == edits_by_hand.new_tokens
