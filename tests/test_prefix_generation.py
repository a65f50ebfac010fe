"""Generation from a shared prompt cache equals generate_tokens row by row, and perplexity is exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tlsteer.decode import generate_tokens
from tlsteer.eval.prefix_generation import (
    RowGroup,
    generate_from_cache,
    perplexities,
    perplexities_from_cache,
    prompt_cache,
)
from tlsteer.positions import Positions
from tlsteer.steering import Steering
from tlsteer.tokens import tokenize_prompts
from tlsteer.vector import SteeringVector

PROMPTS = ["hello there", "a cat", "what is it now, friend?", "go"]


def vec(model, seed, layer=1):
    d = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(seed))
    return SteeringVector({f"blocks.{layer}.hook_resid_post": d / d.norm()})


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("do_sample", [True, False])
def test_rows_equal_generate_tokens_alone(tiny, do_sample, fast):
    ids = tokenize_prompts(tiny, PROMPTS)
    pc = prompt_cache(tiny, ids)
    last = Positions.last()
    settings = [
        Steering(),
        Steering.from_vectors([(vec(tiny, 1), 3.0)], positions=last),
        Steering.from_vectors([(vec(tiny, 2), -2.0), (vec(tiny, 3, layer=0), 1.5)], positions=last),
    ]
    rows = [0, 1, 2, 3, 2, 0]
    seeds = [0, 1, 2, 3, 4, 5]
    groups = [RowGroup(tuple(rows), tuple(seeds), s) for s in settings]
    got = generate_from_cache(
        tiny, pc, groups, max_new_tokens=6, do_sample=do_sample, temperature=0.8, max_rows=5, fast=fast
    )
    for group, setting in zip(got, settings, strict=True):
        alone = generate_tokens(
            tiny,
            [PROMPTS[r] for r in rows],
            setting,
            max_new_tokens=6,
            do_sample=do_sample,
            temperature=0.8,
            seed=seeds,
            stop_at_eos=True,
            fast=fast,
        )
        assert group == [list(t) for t in alone.new_tokens]
    assert got[0] != got[1]  # steering changed something, so the check can fail
    # chunking and group order do not change a row
    again = generate_from_cache(
        tiny, pc, groups[::-1], max_new_tokens=6, do_sample=do_sample, temperature=0.8, max_rows=128
    )
    assert again[::-1] == got


def test_the_fast_path_from_a_cache_equals_transformer_lens_forward(tiny_llama):
    """The fast decoder started from the prompt cache (FastDecoder.load) gives the same steps as
    TransformerLens's forward with that cache: greedy tokens equal, on a model the path covers."""
    from tlsteer.decode import decode_path

    assert decode_path(tiny_llama) == "fast"
    pc = prompt_cache(tiny_llama, tokenize_prompts(tiny_llama, PROMPTS))
    steering = Steering.from_vectors([(vec(tiny_llama, 4), 4.0)], positions=Positions.last())
    groups = [RowGroup((0, 1, 2, 3), (0, 1, 2, 3)), RowGroup((3, 2, 1, 0), (0, 1, 2, 3), steering)]
    runs = [
        generate_from_cache(tiny_llama, pc, groups, max_new_tokens=8, do_sample=False, fast=fast)
        for fast in (True, False)
    ]
    assert runs[0] == runs[1]
    assert runs[0][0] != runs[0][1][::-1]  # the steering changed tokens: the check can fail


def test_perplexities_from_cache_equal_the_full_run(tiny):
    ids = tokenize_prompts(tiny, PROMPTS)
    pc = prompt_cache(tiny, ids)
    new = [[5, 6, 7], [8], [], [9, 10, 11, 12]]
    rows = [0, 1, 2, 3]
    got = perplexities_from_cache(tiny, pc, rows, new, max_rows=3)
    want = perplexities(tiny, [ids[r] for r in rows], new)
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert np.isnan(got[2])


def test_hooks_are_removed_after_an_error(tiny_llama):
    pc = prompt_cache(tiny_llama, tokenize_prompts(tiny_llama, PROMPTS))

    def broken(act):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        generate_from_cache(
            tiny_llama,
            pc,
            [
                RowGroup(
                    (0,),
                    (0,),
                    Steering.from_edits([("blocks.1.hook_resid_post", broken)], positions=Positions.last()),
                )
            ],
            max_new_tokens=2,
        )
    assert not any(h.fwd_hooks for h in tiny_llama.hook_dict.values())


def test_bad_input_is_refused(tiny_llama):
    with pytest.raises(ValueError, match="prompt 1 has 1 token"):
        prompt_cache(tiny_llama, [[1, 2, 3], [4]])
    with pytest.raises(ValueError, match="non-empty"):
        prompt_cache(tiny_llama, [])
    pc = prompt_cache(tiny_llama, [[1, 2, 3], [4, 5]])
    with pytest.raises(ValueError, match="prompt index 2 is not in 0..1"):
        generate_from_cache(tiny_llama, pc, [RowGroup((2,), (0,))], max_new_tokens=2)
    with pytest.raises(ValueError, match="one seed per row"):
        generate_from_cache(tiny_llama, pc, [RowGroup((0, 1), (0,))], max_new_tokens=2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_from_cache(tiny_llama, pc, [RowGroup((0,), (0,))], max_new_tokens=0)
    with pytest.raises(ValueError, match="one prompt index per continuation"):
        perplexities_from_cache(tiny_llama, pc, [0], [[1], [2]])


def test_a_row_group_takes_only_what_the_shared_cache_can_run(tiny_llama):
    """The steering acts from each prompt's last token on, with no prompt prefix (the cache holds the
    prompts as they are); the old tuple of (hook, edit) pairs is not a Steering."""
    steering = Steering.from_vector(vec(tiny_llama, 1), 3.0, positions=Positions.last())
    assert RowGroup((0,), (0,), steering).edits == steering.edits
    assert RowGroup((0,), (0,)).steering == Steering() and RowGroup((0,), (0,), Steering()).edits == ()
    for positions in (Positions.all(), Positions.start_at(2), Positions.at([1]), Positions.from_end(2)):
        with pytest.raises(
            ValueError, match=r"steers from each prompt's last token on \(Positions.last\(\)\)"
        ):
            RowGroup((0,), (0,), steering.at(positions))
    with pytest.raises(ValueError, match="has a prompt prefix; .*generate it with tlsteer.generate_tokens"):
        RowGroup((0,), (0,), steering + Steering.from_prompt("Be brief."))
    with pytest.raises(ValueError, match="has a prompt prefix"):
        RowGroup((0,), (0,), Steering.from_prompt("Be brief."))
    with pytest.raises(TypeError, match="steering"):  # the library's check, or the runtime type check
        RowGroup((0,), (0,), (("blocks.1.hook_resid_post", lambda a: a),))
