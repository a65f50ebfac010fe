"""Steering under generate: absolute positions stay right with the KV cache on and off."""

from __future__ import annotations

import pytest
import torch

import tlsteer
from tests.conftest import step_logits
from tlsteer import Positions, SteeringVector
from tlsteer.tokens import left_pad

MODES = {
    "all": lambda p: Positions.all(),
    "from_prompt_end": lambda p: Positions.start_at(p),
    "from_inside_prompt": lambda p: Positions.start_at(p - 3),
    "explicit": lambda p: Positions.at([p - 2, p + 1, p + 3]),
    "last_token_only": lambda p: Positions.last(),
    "from_end": lambda p: Positions.from_end(3),
}


def resolve(mode: str, prompt_len: int) -> Positions:
    """The mode's positions for a prompt (or left-padded batch) of ``prompt_len`` columns."""
    return MODES[mode](prompt_len)


def vector(model, hook="blocks.1.hook_resid_post", scale=4.0):
    gen = torch.Generator().manual_seed(11)
    d = torch.randn(model.cfg.d_model, generator=gen)
    return SteeringVector({hook: scale * d / d.norm(), "blocks.3.hook_attn_out": -scale * d / d.norm()})


@pytest.mark.parametrize("mode", list(MODES))
def test_kv_cache_on_equals_off_per_step(tiny, mode):
    tokens = torch.tensor([tlsteer.tokenize(tiny, "<|user|>hello there<|end|><|assistant|>")])
    prompt_len = tokens.shape[1]
    vec = vector(tiny)
    with vec.steering(1.0, positions=resolve(mode, prompt_len)).apply(tiny):
        cached, seq_cached = step_logits(tiny, tokens, True)
        full, seq_full = step_logits(tiny, tokens, False)
    assert (cached - full).abs().max() <= 1e-4
    assert torch.equal(seq_cached, seq_full)
    plain, _ = step_logits(tiny, tokens, True)
    assert (cached - plain).abs().max() > 1e-2  # the steering did something


@pytest.mark.parametrize("mode", list(MODES))
def test_kv_cache_on_equals_off_left_padded_batch(tiny_llama, mode):
    model = tiny_llama
    texts = ["<|user|>hi<|end|><|assistant|>", "<|user|>a longer one<|end|><|assistant|>"]
    ids = [tlsteer.tokenize(model, t) for t in texts]
    tokens, _ = left_pad(model, ids)
    width = tokens.shape[1]
    vec = vector(model)
    with vec.steering(1.0, positions=resolve(mode, width)).apply(model):
        cached, _ = step_logits(model, tokens, True)
        full, _ = step_logits(model, tokens, False)
    assert (cached - full).abs().max() <= 1e-4


def test_min_token_index_at_prompt_end_changes_the_continuation(tiny_llama):
    """The first new token comes from the unsteered prompt; every later step is steered."""
    model = tiny_llama
    tokens = torch.tensor([tlsteer.tokenize(model, "<|user|>tell me<|end|><|assistant|>")])
    prompt_len = tokens.shape[1]
    vec = vector(model, scale=8.0)
    plain_logits, plain_seq = step_logits(model, tokens, True, n=8)
    with vec.apply(model, min_token_index=prompt_len):
        logits, seq = step_logits(model, tokens, True, n=8)
    torch.testing.assert_close(logits[:, 0], plain_logits[:, 0], atol=1e-5, rtol=0)
    assert seq[0, prompt_len] == plain_seq[0, prompt_len]
    assert (logits[:, 1] - plain_logits[:, 1]).abs().max() > 1e-2
    assert not torch.equal(seq, plain_seq)


def test_position_counter_resets_between_generations(tiny_llama):
    model = tiny_llama
    tokens = torch.tensor([tlsteer.tokenize(model, "<|user|>again<|end|><|assistant|>")])
    vec = vector(model)
    with vec.apply(model, min_token_index=tokens.shape[1] + 2):
        first, _ = step_logits(model, tokens, True)
        second, _ = step_logits(model, tokens, True)
    torch.testing.assert_close(first, second, atol=0, rtol=0)
