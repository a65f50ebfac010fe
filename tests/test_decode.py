"""Batched steered generation: every row equals the row generated alone, in every position mode."""

from __future__ import annotations

import pytest
import torch

import tlsteer
from tlsteer import SteeringVector

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
    """A plain loop: a full forward per step, steered by apply_steering, argmax."""
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
        [(vec, 1.0)],
        max_new_tokens=6,
        chat=True,
        stop_at_eos=False,
        keep_logits=True,
        batch_size=3,
        **MODES[mode],
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
    batched = tlsteer.generate_tokens(model, PROMPTS, [(vec, 1.0)], seed=[3, 4, 5, 6], batch_size=4, **kwargs)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is not touched
    for i, prompt in enumerate(PROMPTS):
        alone = tlsteer.generate_tokens(model, [prompt], [(vec, 1.0)], seed=3 + i, **kwargs)
        assert alone.new_tokens[0] == batched.new_tokens[i]
    other = tlsteer.generate_tokens(model, PROMPTS, [(vec, 1.0)], seed=[30, 40, 50, 60], **kwargs)
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
    forced = tlsteer.generate_tokens(
        model,
        prompts,
        max_new_tokens=5,
        stop_at_eos=False,
        edits=[
            (
                "unembed.hook_out",
                lambda logits: (
                    torch.where(torch.arange(logits.shape[-1]) == eos, 100.0, -100.0).expand_as(logits)
                    - logits
                ),
            )
        ],
    )
    assert all(t == (eos,) * 5 for t in forced.new_tokens)
    stopped = tlsteer.generate_tokens(
        model,
        prompts,
        max_new_tokens=5,
        edits=[
            (
                "unembed.hook_out",
                lambda logits: (
                    torch.where(torch.arange(logits.shape[-1]) == eos, 100.0, -100.0).expand_as(logits)
                    - logits
                ),
            )
        ],
    )
    assert all(t == (eos,) for t in stopped.new_tokens)
    assert force_eos  # (kept for readability of the edit above)


def test_generate_errors(tiny_llama):
    model = tiny_llama
    vec = vector(model)
    with pytest.raises(ValueError, match="prompts must be a non-empty list of strings"):
        tlsteer.generate(model, "hi")
    with pytest.raises(
        ValueError, match=r"prompt 0 has 120 tokens plus 20 new tokens, more than .*n_ctx=128"
    ):
        tlsteer.generate(model, ["y" * 120], max_new_tokens=20)
    with pytest.raises(ValueError, match=r"token_positions \[200\] are beyond the sequence"):
        tlsteer.generate(model, ["hi"], [(vec, 1.0)], max_new_tokens=3, token_positions=[1, 200])
    with pytest.raises(ValueError, match=r"seed must be an int or one int per prompt \(2\)"):
        tlsteer.generate(model, ["a", "b"], seed=[1])
    with pytest.raises(ValueError, match="top_p must be None or a number in"):
        tlsteer.generate(model, ["a"], do_sample=True, top_p=1.5)
    with pytest.raises(ValueError, match="multiplier must be finite"):
        tlsteer.generate(model, ["a"], [(vec, float("nan"))])
