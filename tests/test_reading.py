"""The one reading engine: every Read mode equals a plain one-prompt ``run_with_cache`` loop, batched
equals one by one, prefix-shared equals plain, and the one contrast container checks what it holds."""

from __future__ import annotations

import pytest
import torch

import tlsteer
from tlsteer.contrast import ContrastActivations
from tlsteer.reading import as_contrast, iter_reads, plan_reads, read_all
from tlsteer.tokens import tokenize

HOOKS = ["blocks.2.hook_resid_post", "blocks.0.hook_mlp_out", "blocks.1.hook_resid_pre"]
# Shared prefixes of different lengths, a pair with nothing shared, a read inside the shared part,
# suffixes of different lengths within a pair, and one chat head shared by several pairs.
HEAD = "<|user|>Answer with a letter. "
PAIRS = [
    tlsteer.ContrastPair(f"{HEAD}Is it good?<|end|>(A)", f"{HEAD}Is it good?<|end|>(B)", -2),
    tlsteer.ContrastPair(f"{HEAD}Q<|end|>(B) yes", f"{HEAD}Q<|end|>(A)", -3),
    tlsteer.ContrastPair(
        f"{HEAD}a long shared start, then yes indeed", f"{HEAD}a long shared start, then no"
    ),
    tlsteer.ContrastPair("xyz", "abc def", -1),
    tlsteer.ContrastPair("same start then A", "same start then BB", 0),
]
PROMPTS = ["I love cats", "no", "a much longer prompt about dogs!", "mid size text", "zz"]


def reference(model, prompts, hooks, spans, transform=None):
    """One prompt at a time, no padding, plain run_with_cache: the mean of transform(acts[start:end])."""
    out = {h: [] for h in hooks}
    for prompt, (start, end) in zip(prompts, spans, strict=True):
        _, cache = model.run_with_cache(torch.tensor([tokenize(model, prompt)]))
        for h in hooks:
            rows = cache[h][0, start:end]
            out[h].append((rows if transform is None else transform(rows)).float().mean(0))
    return {h: torch.stack(rows) for h, rows in out.items()}


def hand_spans(model, prompts, read, own=None):
    """Each prompt's [start, end) worked out by hand (python slices), without the planner."""
    spans = []
    for i, prompt in enumerate(prompts):
        ids = tokenize(model, prompt)
        n = len(ids)
        if read.kind in ("answer", "position"):
            index = read.index
            if read.kind == "answer":
                index = own[i] if own is not None and own[i] is not None else -1
            elif callable(index):
                index = index(prompt, ids)
            elif isinstance(index, tuple):
                index = index[i % len(index)]
            at = index % n
            spans.append((at, at + 1))
        else:
            span = read.span
            if callable(span):
                span = span(prompt, ids)
            elif span is None:
                span = (0, None)
            elif isinstance(span, list):
                span = span[i % len(span)]
            start, end = span
            spans.append((start % n, n if end is None else end % n if end < 0 else end))
    return spans


READS = {
    "answer": tlsteer.Read.answer(),
    "last": tlsteer.Read.last(),
    "at": tlsteer.Read.at(1),
    "at_per_item": tlsteer.Read.at((-2, 0, -1, 1, -2)),
    "at_callable": tlsteer.Read.at(lambda prompt, ids: len(ids) // 2),
    "mean_all": tlsteer.Read.mean(),
    "mean_span": tlsteer.Read.mean((-2, None)),
    "mean_per_item": tlsteer.Read.mean([(0, 2), (1, None), (-2, -1), (0, 1), (1, 2)]),
    "mean_callable": tlsteer.Read.mean(lambda prompt, ids: (len(ids) // 2, len(ids))),
}


def assert_equal_up_to_float_error(got, ref):
    """Equal to 1e-5 of the rows' scale: float32 summation order (padding, a KV cache) only."""
    scale = float(ref.abs().max())
    torch.testing.assert_close(got, ref, atol=1e-5 * scale, rtol=0)


def relu_codes(model):
    """A nonlinear transform, so a mean of transformed rows differs from the transform of a mean."""
    weight = torch.randn(model.cfg.d_model, 7, generator=torch.Generator().manual_seed(0))
    return lambda rows: torch.relu(rows.float() @ weight)


@pytest.mark.parametrize("name", list(READS))
def test_every_read_on_pairs_equals_the_plain_loop_shared_or_not(tiny, name):
    read = READS[name]
    positives, negatives = [p.positive for p in PAIRS], [p.negative for p in PAIRS]
    own = [p.read_index for p in PAIRS]
    spans = hand_spans(tiny, positives, read, own) + hand_spans(tiny, negatives, read, own)
    plan = plan_reads(tiny, PAIRS, read)
    assert list(plan.spans) == spans
    for transform in (None, relu_codes(tiny)):
        ref = reference(tiny, positives + negatives, HOOKS, spans, transform)
        for share_prefix in (True, False):
            for batch_size in (1, 2, 16):
                got = read_all(
                    tiny, plan, HOOKS, transform=transform, batch_size=batch_size, share_prefix=share_prefix
                )
                assert list(got) == HOOKS  # in the order asked, not the order of the layers
                for h in HOOKS:
                    if read.is_position and not share_prefix and batch_size == 1:
                        assert torch.equal(got[h], ref[h])  # one prompt per forward: the same numbers
                    assert_equal_up_to_float_error(got[h], ref[h])


@pytest.mark.parametrize("name", [n for n in READS if n != "answer"])
def test_every_read_on_prompts_equals_the_plain_loop(tiny_llama, name):
    read = READS[name]
    spans = hand_spans(tiny_llama, PROMPTS, read)
    ref = reference(tiny_llama, PROMPTS, HOOKS, spans)
    plan = plan_reads(tiny_llama, PROMPTS, read)
    for batch_size in (1, 3):
        got = read_all(tiny_llama, plan, HOOKS, batch_size=batch_size)
        for h in HOOKS:
            assert_equal_up_to_float_error(got[h], ref[h])


def test_prefix_sharing_reads_the_same_rows_batch_by_batch(tiny_llama):
    plan = plan_reads(tiny_llama, PAIRS, tlsteer.Read.answer())
    shared = list(iter_reads(tiny_llama, plan, HOOKS[:1], batch_size=2))
    plain = list(iter_reads(tiny_llama, plan, HOOKS[:1], batch_size=2, share_prefix=False))
    # shared: pairs (positive and negative together) in ceil(5 / 2) forwards; plain: 10 prompts in 5
    assert len(shared) == 3 and len(plain) == 5
    for batch in shared:
        n = len(batch.indices) // 2
        assert [i + len(PAIRS) for i in batch.indices[:n]] == batch.indices[n:]
    for batches in (shared, plain):
        assert sorted(i for b in batches for i in b.indices) == list(range(2 * len(PAIRS)))


def test_a_contrast_set_and_contrast_splitting(tiny_llama):
    data = tlsteer.ContrastSet(["a b", "bb c d", "ccc"], ["dd", "e"])
    plan = plan_reads(tiny_llama, data, tlsteer.Read.last())
    rows = read_all(tiny_llama, plan, HOOKS[:2], batch_size=2)
    contrast = as_contrast(plan, rows)
    assert not contrast.paired and contrast.hooks == HOOKS[:2] and contrast.space == "activations"
    pos, neg = contrast.rows(HOOKS[1])
    assert pos.shape == (3, 32) and neg.shape == (2, 32)
    ref = reference(
        tiny_llama,
        [*data.positive, *data.negative],
        HOOKS[1:2],
        hand_spans(tiny_llama, [*data.positive, *data.negative], tlsteer.Read.last()),
    )[HOOKS[1]]
    assert_equal_up_to_float_error(torch.cat([pos, neg]), ref)
    torch.testing.assert_close(
        contrast.mean_difference(HOOKS[0]), rows[HOOKS[0]][:3].mean(0) - rows[HOOKS[0]][3:].mean(0)
    )
    with pytest.raises(ValueError, match=r"these rows are at 2 hooks .*; name one"):
        contrast.mean_difference()
    with pytest.raises(KeyError, match=r"no activations at 'blocks.3.hook_resid_post'; hooks:"):
        contrast.rows("blocks.3.hook_resid_post")
    with pytest.raises(TypeError, match="plain prompts have no positive and negative sides"):
        as_contrast(plan_reads(tiny_llama, PROMPTS), rows)


def test_the_engine_stops_at_the_deepest_hook_and_checks_hooks(tiny_llama):
    def later_block(act, hook):
        raise AssertionError(f"{hook.name} ran")

    plan = plan_reads(tiny_llama, PAIRS, tlsteer.Read.mean((-3, None)))
    with tiny_llama.hooks(fwd_hooks=[("blocks.3.hook_resid_pre", later_block)]):
        for share_prefix in (True, False):
            read_all(tiny_llama, plan, HOOKS, share_prefix=share_prefix)
    with pytest.raises(KeyError, match=r"layer 9 is out of range"):
        read_all(tiny_llama, plan, ["blocks.9.hook_resid_post"])
    with pytest.raises(ValueError, match="hooks must be distinct"):
        read_all(tiny_llama, plan, [HOOKS[0], HOOKS[0]])


def test_the_contrast_container_refuses_what_it_cannot_hold():
    hook = "blocks.0.hook_resid_post"
    ok = ContrastActivations(
        {hook: torch.ones(2, 3)}, {hook: torch.zeros(2, 3)}, paired=True, dictionary="ab12"
    )
    assert ok.space == "features" and torch.equal(ok.mean_difference(), torch.ones(3))
    with pytest.raises(
        ValueError, match=r"paired activations need as many positives as negatives, got 2 and 3"
    ):
        ContrastActivations({hook: torch.ones(2, 3)}, {hook: torch.zeros(3, 3)}, paired=True)
    with pytest.raises(ValueError, match=r"positive rows have width 3 but negative rows 4"):
        ContrastActivations({hook: torch.ones(2, 3)}, {hook: torch.zeros(2, 4)}, paired=False)
    with pytest.raises(ValueError, match=r"must be at the same hooks"):
        ContrastActivations(
            {hook: torch.ones(2, 3)}, {"blocks.1.hook_resid_post": torch.zeros(2, 3)}, paired=False
        )
    with pytest.raises(TypeError, match=r"positive\['blocks.0.hook_resid_post'\] must be a \[n, d\] tensor"):
        ContrastActivations({hook: torch.ones(3)}, {hook: torch.zeros(2, 3)}, paired=False)
    # unpaired sides may differ in size, and a side may be empty (a split that left nothing)
    ContrastActivations({hook: torch.ones(0, 3)}, {hook: torch.zeros(2, 3)}, paired=False)
