"""Extraction: parity with a plain reference loop, batched = one by one, read indices, errors."""

from __future__ import annotations

import pytest
import torch
from tqdm.auto import tqdm

import tlsteer
from tlsteer.tokens import tokenize

PROMPTS = ["I love cats", "no", "a much longer prompt about dogs!", "mid size text", "zz"]
PAIRS = [("I love cats", "I hate cats"), ("good day!", "a bad day"), ("yes (A)", "no (B)")]


def reference(model, prompts, hook, index):
    """One prompt at a time, no padding, plain run_with_cache."""
    out = []
    for prompt in prompts:
        tokens = torch.tensor([tokenize(model, prompt)])
        _, cache = model.run_with_cache(tokens)
        out.append(cache[hook][0, index])
    return torch.stack(out)


@pytest.mark.parametrize("point", ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"])
def test_parity_with_plain_loop(tiny, point):
    hooks = [f"blocks.{layer}.hook_{point}" for layer in range(tiny.cfg.n_layers)]
    acts = tlsteer.read_activations(tiny, PROMPTS, hooks, read=tlsteer.Read.last(), batch_size=3)
    for hook in hooks:
        ref = reference(tiny, PROMPTS, hook, -1)
        assert (acts[hook] - ref).abs().max() <= 1e-4


def test_batched_equals_one_by_one(tiny):
    hooks = [f"blocks.{layer}.hook_resid_post" for layer in range(tiny.cfg.n_layers)]
    lengths = [len(tokenize(tiny, p)) for p in PROMPTS]
    assert len(set(lengths)) >= 3  # in one batch of 5, the prompts are left-padded by different amounts
    batched = tlsteer.read_activations(tiny, PROMPTS, hooks, read=tlsteer.Read.at(0), batch_size=5)
    single = tlsteer.read_activations(tiny, PROMPTS, hooks, read=tlsteer.Read.at(0), batch_size=1)
    for hook in hooks:
        ref = reference(tiny, PROMPTS, hook, 0)  # unpadded, one prompt per run_with_cache
        assert (batched[hook] - ref).abs().max() <= 1e-4
        assert (single[hook] - ref).abs().max() <= 1e-4
        # reading at a padded column instead of each prompt's first token would not match
        wrong = reference(tiny, PROMPTS, hook, 1)
        assert (batched[hook] - wrong).abs().max() > 1e-2


def test_read_index_forms(tiny_llama):
    model = tiny_llama
    hook = "blocks.1.hook_resid_post"
    ids = [tokenize(model, p) for p in PROMPTS]
    at_first = tlsteer.read_activations(model, PROMPTS, [hook], read=tlsteer.Read.at(0))[hook]
    per_prompt = tlsteer.read_activations(
        model, PROMPTS, [hook], read=tlsteer.Read.at([-len(i) for i in ids])
    )[hook]
    by_callable = tlsteer.read_activations(
        model, PROMPTS, [hook], read=tlsteer.Read.at(lambda prompt, token_ids: 0)
    )[hook]
    torch.testing.assert_close(at_first, per_prompt, atol=1e-5, rtol=0)
    torch.testing.assert_close(at_first, by_callable, atol=1e-5, rtol=0)
    ref = reference(model, PROMPTS[:1], hook, 1)
    got = tlsteer.read_activations(model, PROMPTS[:1], [hook], read=tlsteer.Read.at(1))[hook]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def test_a_pairs_own_read_index_is_the_answer_read(tiny_llama):
    pairs = [tlsteer.ContrastPair("hello (A)", "hello (B)", read_index=-2)]
    hook = "blocks.0.hook_resid_post"
    for share_prefix in (True, False):
        acts = tlsteer.extract_activations(tiny_llama, pairs, layers=[0], share_prefix=share_prefix)
        ref = reference(tiny_llama, ["hello (A)"], hook, -2)
        torch.testing.assert_close(acts.positive[hook], ref, atol=1e-5, rtol=0)
        # an explicit position reads exactly there, whatever the pair marks
        last = tlsteer.extract_activations(
            tiny_llama, pairs, layers=[0], read=tlsteer.Read.last(), share_prefix=share_prefix
        )
        ref_last = reference(tiny_llama, ["hello (A)"], hook, -1)
        torch.testing.assert_close(last.positive[hook], ref_last, atol=1e-5, rtol=0)
        assert not torch.allclose(ref, ref_last)


def test_a_mean_read_equals_the_mean_of_position_reads(tiny_llama):
    hook = "blocks.1.hook_resid_post"
    ids = [tlsteer.tokenize(tiny_llama, p) for p in PROMPTS]
    mean = tlsteer.read_activations(tiny_llama, PROMPTS, [hook], read=tlsteer.Read.mean((1, None)))[hook]
    for i, prompt in enumerate(PROMPTS):
        rows = [reference(tiny_llama, [prompt], hook, j)[0] for j in range(1, len(ids[i]))]
        torch.testing.assert_close(mean[i], torch.stack(rows).mean(0), atol=1e-5, rtol=1e-5)
    pairs = tlsteer.extract_activations(tiny_llama, PAIRS, layers=[1], read=tlsteer.Read.mean())
    plain = tlsteer.read_activations(tiny_llama, [p[0] for p in PAIRS], [hook], read=tlsteer.Read.mean())
    torch.testing.assert_close(pairs.positive[hook], plain[hook], atol=1e-5, rtol=0)


def test_read_values_refuse_what_they_cannot_mean(tiny_llama):
    from tlsteer.read import as_read

    with pytest.raises(TypeError, match=r"read must be a tlsteer.Read .*got 'last'"):
        as_read("last")
    with pytest.raises(TypeError, match=r"read"):  # at test time the type checker speaks first
        tlsteer.read_activations(tiny_llama, PROMPTS, ["blocks.0.hook_resid_post"], read="last")
    with pytest.raises(TypeError, match=r"Read.at takes an int .*got 'last'"):
        tlsteer.Read("position", "last")
    with pytest.raises(ValueError, match=r"only a 'mean' read takes a span"):
        tlsteer.Read("position", -1, span=(0, 1))
    with pytest.raises(ValueError, match=r"Read.reply\(\) reads the replies of class examples"):
        tlsteer.extract_activations(tiny_llama, PAIRS, layers=[0], read=tlsteer.Read.reply())


def test_layers_negative_and_default(tiny_llama):
    acts = tlsteer.extract_activations(tiny_llama, PAIRS, layers=[-1, 0])
    assert acts.hooks == ["blocks.3.hook_resid_post", "blocks.0.hook_resid_post"]
    all_layers = tlsteer.extract_activations(tiny_llama, PAIRS, hook="mlp_out")
    assert all_layers.hooks == [f"blocks.{i}.hook_mlp_out" for i in range(4)]
    assert all_layers.positive["blocks.0.hook_mlp_out"].shape == (3, 32)


class RecordingBar(tqdm):
    """A tqdm bar that draws every update and records (desc, total, n) when it closes."""

    closed: list[tuple[str, int, int]] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{**kwargs, "mininterval": 0, "miniters": 1})

    def close(self):
        if not self.disable and not getattr(self, "_recorded", False):
            self._recorded = True
            RecordingBar.closed.append((self.desc, self.total, self.n))
        super().close()


@pytest.mark.parametrize("share_prefix", [True, False])
def test_progress_bar_counts_batches(tiny_llama, capsys, monkeypatch, share_prefix):
    monkeypatch.setattr("tlsteer.reading.tqdm", RecordingBar)
    monkeypatch.setattr(RecordingBar, "closed", [])
    # every pair shares a prefix, so the shared path runs ceil(5 / 2) = 3 batches of prefixes;
    # the plain path reads 10 prompts in ceil(10 / 2) = 5 batches
    pairs = [(f"{w} is good", f"{w} is bad") for w in ("cat", "dog", "sun", "tea", "car")]
    kwargs = {"layers": [0], "batch_size": 2, "share_prefix": share_prefix}
    tlsteer.extract_activations(tiny_llama, pairs, show_progress=False, **kwargs)
    assert capsys.readouterr().err == "" and RecordingBar.closed == []
    tlsteer.extract_activations(tiny_llama, pairs, show_progress=True, **kwargs)
    total = 3 if share_prefix else 5
    assert RecordingBar.closed == [("pairs", total, total)]
    err = capsys.readouterr().err
    assert err.startswith("\rpairs: ")
    for done in range(total + 1):
        assert f"| {done}/{total} [" in err


def test_errors(tiny_llama):
    model = tiny_llama
    with pytest.raises(ValueError, match=r"layer 4 is out of range: the model has 4 layers"):
        tlsteer.extract_activations(model, PAIRS, layers=[4])
    with pytest.raises(ValueError, match=r"unknown hook point 'resid_psot'.*closest: 'resid_post'"):
        tlsteer.extract_activations(model, PAIRS, layers=[0], hook="resid_psot")
    with pytest.raises(IndexError, match=r"read index -40 is outside prompt 0 \(11 tokens"):
        tlsteer.extract_activations(model, PAIRS, layers=[0], read=tlsteer.Read.at(-40))
    with pytest.raises(ValueError, match=r"contrast data is empty"):
        tlsteer.extract_activations(model, [], layers=[0])
    with pytest.raises(ValueError, match=r"prompt 0 has 200 tokens, more than .*n_ctx=128"):
        tlsteer.extract_activations(model, [("x" * 200, "y")], layers=[0])
    with pytest.raises(ValueError, match=r"Read.at has 2 positions but there are 3 pairs"):
        tlsteer.extract_activations(model, PAIRS, layers=[0], read=tlsteer.Read.at([0, 0]))
    with pytest.raises(ValueError, match=r"Read.at has 2 positions but there are 3 pairs"):
        tlsteer.extract_activations(
            model, PAIRS, layers=[0], read=tlsteer.Read.at([0, 0]), share_prefix=False
        )
    with pytest.raises(
        KeyError,
        match=r"hook 'blocks.9.hook_resid_post' not in model: layer 9 is out of range "
        r"\(4 layers, valid: 0\.\.3\)",
    ):
        tlsteer.read_activations(model, PROMPTS, ["blocks.9.hook_resid_post"])
