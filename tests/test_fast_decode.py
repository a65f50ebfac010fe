"""The fast decoding path: the same logits as TransformerLens's forward, the same hooks, and a
fallback that says why.

``generate_tokens(..., fast=False)`` is TransformerLens's own forward at every step (with its KV
cache); tests/test_decode.py and tests/test_generation.py compare generation with plain loops of
full forwards, which the fast path now runs under by default.
"""

from __future__ import annotations

import pytest
import torch

import tlsteer
import tlsteer.fast_decode as fast_decode
from tlsteer import Positions, SteeringVector
from tlsteer.decode import decode_path

PROMPTS = ["hi", "a much longer prompt here", "mid size one", "x"]
MODES = {
    "all": Positions.all(),
    "from": Positions.start_at(6),
    "explicit": Positions.at([1, 3, 5, 8]),
    "last": Positions.last(),
    "from_end": Positions.from_end(2),
}


@pytest.fixture
def steps(monkeypatch):
    """How many fast decode steps ran."""
    count = {"n": 0}
    original = fast_decode.FastDecoder.step

    def counted(self, tokens):
        count["n"] += 1
        return original(self, tokens)

    monkeypatch.setattr(fast_decode.FastDecoder, "step", counted)
    return count


def vector(model, scale=6.0):
    d = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(5))
    return SteeringVector(
        {"blocks.1.hook_resid_post": scale * d / d.norm(), "blocks.2.hook_attn_out": -scale * d / d.norm()}
    )


def both(model, steering, **kwargs):
    """The generation on the fast path and on TransformerLens's forward."""
    settings = dict(max_new_tokens=6, chat=True, stop_at_eos=False, keep_logits=True, batch_size=3) | kwargs
    fast = tlsteer.generate_tokens(model, PROMPTS, steering, **settings)
    slow = tlsteer.generate_tokens(model, PROMPTS, steering, fast=False, **settings)
    return fast, slow


def max_diff(a, b) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a.step_logits, b.step_logits, strict=True))


def test_which_architectures_take_the_fast_path(tiny_llama, tiny_gpt2):
    assert decode_path(tiny_llama) == "fast"
    assert decode_path(tiny_gpt2) == (
        "TransformerLens forward: positional_embedding_type='standard' (the fast path covers 'rotary')"
    )
    with pytest.raises(ValueError, match="does not cover this model: positional_embedding_type"):
        fast_decode.FastDecoder(tiny_gpt2, 1, 8)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("sample", [False, True])
def test_fast_steps_equal_transformer_lens_steps(tiny_llama, steps, mode, sample):
    steering = vector(tiny_llama).steering(1.0, positions=MODES[mode])
    fast, slow = both(tiny_llama, steering, do_sample=sample, seed=[3, 1, 4, 1])
    assert steps["n"] == 2 * 5  # two batches (3 + 1 rows), five fed tokens each; the slow run adds none
    assert max_diff(fast, slow) <= 1e-4
    assert fast.new_tokens == slow.new_tokens
    plain = tlsteer.generate_tokens(
        tiny_llama, PROMPTS, max_new_tokens=6, chat=True, stop_at_eos=False, keep_logits=True
    )
    assert max_diff(fast, plain) > 1e-2  # the steering did something


def test_the_gpt2_test_model_falls_back_and_still_steers(tiny_gpt2, steps):
    fast, slow = both(tiny_gpt2, vector(tiny_gpt2).steering(1.0))
    assert steps["n"] == 0
    assert max_diff(fast, slow) == 0.0


def _user_hooks(name, fn):
    return [(name, fn)]


@pytest.mark.parametrize(
    "name, fn",
    [
        (
            "blocks.1.attn.hook_pattern",
            lambda p, hook: p.pow(3) / p.pow(3).sum(-1, keepdim=True).clamp_min(1e-9),
        ),
        ("blocks.2.attn.hook_attn_scores", lambda s, hook: s * 0.25),
        ("blocks.2.attn.hook_z", lambda z, hook: z * 0.5),
        ("blocks.0.attn.hook_k", lambda k, hook: k.flip(-1)),
        ("blocks.1.mlp.hook_post", lambda x, hook: x.clamp(max=0.1)),
        ("blocks.3.mlp.hook_pre_linear", lambda x, hook: -x),
        ("ln_final.hook_normalized", lambda x, hook: x * 1.5),
        ("hook_embed", lambda x, hook: x.roll(1, -1)),
    ],
)
def test_user_hooks_anywhere_the_step_computes_edit_it_the_same(tiny_llama, steps, name, fn):
    with tiny_llama.hooks(fwd_hooks=_user_hooks(name, fn)):
        assert decode_path(tiny_llama) == "fast"
        fast, slow = both(tiny_llama, None)
    assert steps["n"] > 0
    plain = tlsteer.generate_tokens(
        tiny_llama, PROMPTS, max_new_tokens=6, chat=True, stop_at_eos=False, keep_logits=True
    )
    assert max_diff(fast, slow) <= 1e-4
    assert max_diff(fast, plain) > 1e-3  # the hook mattered


def test_a_hook_on_rotated_keys_sends_generation_back_to_transformer_lens(tiny_llama, steps):
    seen = []
    with tiny_llama.hooks(fwd_hooks=[("blocks.0.attn.hook_rot_k", lambda k, hook: seen.append(k.shape[1]))]):
        assert decode_path(tiny_llama) == (
            "TransformerLens forward: hooks on blocks.0.attn.hook_rot_k, which it does not compute"
        )
        fast, slow = both(tiny_llama, vector(tiny_llama).steering(1.0))
    assert steps["n"] == 0
    assert max_diff(fast, slow) == 0.0
    assert len(seen) == 2 * 2 * 6  # every forward of both runs, prompt and five steps per batch


def test_ln1_hooks_fire_as_often_as_under_transformer_lens(tiny_llama, steps):
    calls = {"n": 0}

    def count(x, hook):
        calls["n"] += 1

    with tiny_llama.hooks(fwd_hooks=[("blocks.1.ln1.hook_normalized", count)]):
        tlsteer.generate_tokens(tiny_llama, PROMPTS, max_new_tokens=4, stop_at_eos=False)
        fast_calls, calls["n"] = calls["n"], 0
        tlsteer.generate_tokens(tiny_llama, PROMPTS, max_new_tokens=4, stop_at_eos=False, fast=False)
    assert steps["n"] > 0
    assert fast_calls == calls["n"] == 3 * 4  # query, key and value inputs; prompt and 3 steps, one batch


def test_hooks_are_removed_after_an_exception_in_a_fast_step(tiny_llama, steps):
    calls = {"n": 0}

    def boom(x, hook):
        calls["n"] += 1
        if calls["n"] == 3:  # the prompt, one step, then the second step fails
            raise RuntimeError("boom")

    hooks = [("blocks.2.hook_mlp_out", boom)]
    with pytest.raises(RuntimeError, match="boom"), tiny_llama.hooks(fwd_hooks=hooks):
        tlsteer.generate_tokens(
            tiny_llama,
            ["hello"],
            vector(tiny_llama).steering(1.0, positions=Positions.last()),
            max_new_tokens=5,
        )
    assert steps["n"] == 2
    assert all(not point._forward_hooks for point in tiny_llama.hook_dict.values())


def test_a_generation_to_the_end_of_the_context_is_right(tiny_llama):
    model = tiny_llama
    prompt = "x" * (model.cfg.n_ctx - 12)
    fast = tlsteer.generate_tokens(model, [prompt], max_new_tokens=10, stop_at_eos=False, keep_logits=True)
    slow = tlsteer.generate_tokens(
        model, [prompt], max_new_tokens=10, stop_at_eos=False, keep_logits=True, fast=False
    )
    assert max_diff(fast, slow) <= 1e-4


def test_fast_must_be_a_bool(tiny_llama):
    with pytest.raises(TypeError, match="fast"):
        tlsteer.generate_tokens(tiny_llama, ["hi"], fast=1)


@pytest.mark.embedded
def test_fast_path_equals_transformer_lens_on_the_embedded_model(embedded, steps):
    model = embedded
    assert decode_path(model) == "fast"
    d = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    steering = SteeringVector({"blocks.12.hook_resid_post": 8.0 * d / d.norm()}).steering(
        1.0, positions=Positions.last()
    )
    prompts = ["Tell me about your weekend.", "What is the capital of France?", "Hi"]
    settings = dict(max_new_tokens=8, chat=True, stop_at_eos=False, keep_logits=True, check_model=False)
    fast = tlsteer.generate_tokens(model, prompts, steering, **settings)
    slow = tlsteer.generate_tokens(model, prompts, steering, fast=False, **settings)
    assert steps["n"] == 7
    assert max_diff(fast, slow) <= 1e-4
    assert fast.new_tokens == slow.new_tokens


def test_the_weight_layout_is_built_once_and_rebuilt_after_a_weight_changes():
    from tlsteer.models import tiny_model

    model = tiny_model("llama", seed=3, n_layers=2)
    first = fast_decode._layout(model)
    assert fast_decode._layout(model) is first  # a second generation reuses it
    before = tlsteer.generate_tokens(model, PROMPTS, max_new_tokens=4, stop_at_eos=False, keep_logits=True)
    with torch.no_grad():
        model.blocks[1].mlp.W_out.mul_(3.0)  # an in-place edit
    assert fast_decode._layout(model) is not first
    fast = tlsteer.generate_tokens(model, PROMPTS, max_new_tokens=4, stop_at_eos=False, keep_logits=True)
    slow = tlsteer.generate_tokens(
        model, PROMPTS, max_new_tokens=4, stop_at_eos=False, keep_logits=True, fast=False
    )
    assert max_diff(fast, slow) <= 1e-4
    assert max_diff(fast, before) > 1e-2  # the edit reached the fast path
