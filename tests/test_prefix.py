"""Prefix-shared reads equal the plain path (left-padded batches of whole prompts)."""

from __future__ import annotations

import pytest
import torch

import tlsteer
from tlsteer.prefix import pair_layouts
from tlsteer.reading import plan_reads

# Shared prefixes of different lengths in one batch (left-padded prefixes), suffixes of different
# lengths within a pair, a pair with no common prefix, and a read index inside the common prefix.
PAIRS = [
    tlsteer.ContrastPair(
        "<|user|>Is it good?<|end|><|assistant|>(A)", "<|user|>Is it good?<|end|><|assistant|>(B)", -2
    ),
    tlsteer.ContrastPair("<|user|>Q<|end|><|assistant|>(B)", "<|user|>Q<|end|><|assistant|>(A)", -2),
    tlsteer.ContrastPair("a long shared beginning, then yes indeed", "a long shared beginning, then no", -1),
    tlsteer.ContrastPair("xyz", "abc def", -1),
    tlsteer.ContrastPair("same start then A", "same start then BB", 0),
    tlsteer.ContrastPair("I love this film", "I hate this film", -1),
]


@pytest.mark.parametrize("batch_size", [1, 4, 12])
def test_shared_equals_plain_per_sample(tiny, batch_size):
    layers = list(range(tiny.cfg.n_layers))
    plain = tlsteer.extract_activations(tiny, PAIRS, layers=layers, share_prefix=False, batch_size=batch_size)
    shared = tlsteer.extract_activations(tiny, PAIRS, layers=layers, share_prefix=True, batch_size=batch_size)
    for hook in plain.hooks:
        for side in ("positive", "negative"):
            a, b = getattr(plain, side)[hook], getattr(shared, side)[hook]
            assert (a - b).abs().max() <= 1e-4, (hook, side)


@pytest.mark.parametrize("point", ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"])
def test_vectors_agree(tiny, point):
    kwargs = dict(layers=None, hook=point, batch_size=4)
    plain = tlsteer.train_steering_vector(tiny, PAIRS, share_prefix=False, **kwargs)
    shared = tlsteer.train_steering_vector(tiny, PAIRS, share_prefix=True, **kwargs)  # running sums
    for hook in plain.hooks:
        a, b = plain[hook], shared[hook]
        cosine = torch.cosine_similarity(a.double(), b.double(), dim=0)
        assert cosine >= 0.9999
        assert (a - b).abs().max() <= 1e-4 * a.norm()


def test_plan_shares_the_prefix_and_keeps_reads_in_suffixes(tiny_llama):
    plan = plan_reads(tiny_llama, PAIRS, tlsteer.Read.answer())
    plans = pair_layouts(plan.token_ids, plan.spans)
    first = plans[0]
    n_tokens = len(tlsteer.tokenize(tiny_llama, PAIRS[0].positive))
    assert len(first.prefix) == n_tokens - 2  # everything before the letter is shared
    assert len(first.pos_suffix) == 2 and first.pos_span == (0, 1)
    assert plans[3].prefix == []  # "xyz" vs "abc def": nothing shared
    assert plans[4].prefix == [] and plans[4].pos_span == (0, 1)  # read index 0 forbids a prefix
    for layout in plans:
        for (start, end), suffix in (
            (layout.pos_span, layout.pos_suffix),
            (layout.neg_span, layout.neg_suffix),
        ):
            assert 0 <= start < end <= len(suffix)
    # a mean read shares the prefix up to where its span begins; over every token, nothing is shared
    spans = pair_layouts(*_plan(tiny_llama, tlsteer.Read.mean((-3, None))))
    assert len(spans[0].prefix) == n_tokens - 3 and spans[0].pos_span == (0, 3)
    assert all(layout.prefix == [] for layout in pair_layouts(*_plan(tiny_llama, tlsteer.Read.mean())))


def _plan(model, read):
    plan = plan_reads(model, PAIRS, read)
    return plan.token_ids, plan.spans


def test_other_aggregators_use_the_shared_path_too(tiny_llama):
    plain = tlsteer.train_steering_vector(
        tiny_llama, PAIRS, layers=[2], aggregator=tlsteer.pca_aggregator(), share_prefix=False
    )
    shared = tlsteer.train_steering_vector(tiny_llama, PAIRS, layers=[2], aggregator=tlsteer.pca_aggregator())
    hook = "blocks.2.hook_resid_post"
    assert torch.cosine_similarity(plain[hook], shared[hook], dim=0) >= 0.9999


def test_errors_match_the_plain_path(tiny_llama):
    with pytest.raises(IndexError, match=r"read index -40 is outside prompt 0"):
        tlsteer.train_steering_vector(tiny_llama, [("a b c", "a b d")], layers=[0], read=tlsteer.Read.at(-40))
    with pytest.raises(ValueError, match=r"Read.at has 2 positions but there are 6 pairs"):
        tlsteer.train_steering_vector(tiny_llama, PAIRS, layers=[0], read=tlsteer.Read.at([0, 0]))


def test_head_shared_by_every_prefix(tiny):
    """Chat-formatted pairs share a head; a row whose prefix is exactly the head has no middle."""
    head = "<|user|>Answer with a letter please. "
    pairs = [
        tlsteer.ContrastPair(f"{head}{q}<|end|><|assistant|>(A)", f"{head}{q}<|end|><|assistant|>(B)", -2)
        for q in ["Is water wet?", "Do cats fly?", "Is 2+2 four, really?"]
    ] + [tlsteer.ContrastPair(f"{head}yes", f"{head}no", -1)]
    plan = plan_reads(tiny, pairs, tlsteer.Read.last())
    plans = pair_layouts(plan.token_ids, plan.spans)
    head_len = len(tlsteer.tokenize(tiny, head))
    assert min(len(p.prefix) for p in plans) == head_len  # the last pair's prefix is the head itself
    for batch_size in (1, 2, 8):
        plain = tlsteer.extract_activations(tiny, pairs, share_prefix=False, batch_size=batch_size)
        shared = tlsteer.extract_activations(tiny, pairs, share_prefix=True, batch_size=batch_size)
        for hook in plain.hooks:
            assert (plain.positive[hook] - shared.positive[hook]).abs().max() <= 1e-4
            assert (plain.negative[hook] - shared.negative[hook]).abs().max() <= 1e-4
