"""The second architecture, Gemma 3: the tiny Gemma-3-like model's sliding windows, base-model chat
formatting, and (marked ``gemma``) gemma-3-270m itself: its conversion, and the guarantees on it.

Most guarantees run on the tiny Gemma 3 model through the ``tiny`` fixture of every test that takes
it (invariants, KV cache on = off in every position mode, batched = one by one, prefix-shared
extraction, the cached sweep engine); this file holds what is particular to Gemma 3.
"""

from __future__ import annotations

import pytest
import torch

import tlsteer
from tlsteer.data import PlainFormat, chat_prompt, reply_start, use_plain_format
from tlsteer.kv import has_local_attention
from tlsteer.models import TINY_WINDOW, tiny_model
from tlsteer.tokens import tokenize


def resid(model, tokens, layer):
    _, cache = model.run_with_cache(tokens, names_filter=[f"blocks.{layer}.hook_resid_post"])
    return cache[f"blocks.{layer}.hook_resid_post"][0]


def test_tiny_gemma3_windows_hide_what_lies_outside_them():
    model = tiny_model("gemma3", n_layers=3)
    assert model.cfg.attn_types == ["local", "local", "global"] and has_local_attention(model)
    assert not has_local_attention(tiny_model("llama"))
    text = "abcdefghijklmnopqrstuvwxyz0123456789"
    tokens = model.to_tokens(text)
    changed = tokens.clone()
    changed[0, 2] = model.tokenizer.convert_tokens_to_ids("Z")  # position 2 ("b")
    n = tokens.shape[1]
    with torch.no_grad():
        for layer, reach in ((0, TINY_WINDOW), (1, 2 * TINY_WINDOW - 1)):
            a, b = resid(model, tokens, layer), resid(model, changed, layer)
            moved = (a - b).abs().amax(dim=-1) > 1e-6
            # one local layer carries a change TINY_WINDOW - 1 positions on; two, twice that
            assert moved[2 : 2 + reach].all() and not moved[2 + reach :].any(), (layer, moved)
        a, b = resid(model, tokens, 2), resid(model, changed, 2)
        assert ((a - b).abs().amax(dim=-1) > 1e-6)[2:n].all()  # the global layer sees everything


def test_a_base_model_is_refused_until_a_plain_format_is_chosen():
    model = tiny_model("gemma3")
    assert model.tokenizer.chat_template is None and model.cfg.tokenizer_prepends_bos
    with pytest.raises(ValueError, match=r"'tiny-gemma3' has no chat template .*use_plain_format"):
        chat_prompt(model, "Hi")
    with pytest.raises(ValueError, match="no chat template"):
        tlsteer.generate(model, ["Hi"], max_new_tokens=2, chat=True)
    with pytest.raises(ValueError, match="has a chat template of its own"):
        use_plain_format(tiny_model("llama"))
    use_plain_format(model)
    assert chat_prompt(model, "Why?") == "Question: Why?\nAnswer:"
    text = chat_prompt(model, "Why?", "Because.")
    assert text == "Question: Why?\nAnswer: Because."
    ids = tokenize(model, text)
    start = reply_start(model, text)
    assert tlsteer.tokenize(model, text)[0] == model.tokenizer.bos_token_id
    assert "".join(model.tokenizer.convert_ids_to_tokens(ids[start:])) == " Because."
    two_turns = model.tokenizer.apply_chat_template(
        [
            {"role": "user", "content": "A?"},
            {"role": "assistant", "content": "a."},
            {"role": "user", "content": "B?"},
        ],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert two_turns == "Question: A?\nAnswer: a.\n\nQuestion: B?\nAnswer:"
    use_plain_format(model, PlainFormat("User: ", "\nBot:", "\n"))  # a plain format may be replaced
    assert chat_prompt(model, "Hi", "yo") == "User: Hi\nBot: yo"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"answer": "  "}, "must hold a visible label"),
        ({"question": "{{ x }}"}, "may not contain braces"),
        ({"separator": 3}, "separator"),
    ],
)
def test_plain_format_bad_input(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        PlainFormat(**kwargs)


def test_prefix_sharing_shares_no_head_under_sliding_windows(tiny_gemma3, monkeypatch):
    """A shared head would put padding inside rows, which TransformerLens's windows count."""
    import tlsteer.prefix as prefix

    calls = []
    real = prefix.head_cache
    monkeypatch.setattr(prefix, "head_cache", lambda *a: calls.append(a) or real(*a))
    head = "Question: Answer with a letter, please, and be brief. "
    pairs = [tlsteer.ContrastPair(f"{head}{q} (A)", f"{head}{q} (B)", -1) for q in ["Wet?", "Fly?", "Four?"]]
    plain = tlsteer.extract_activations(tiny_gemma3, pairs, share_prefix=False, batch_size=2)
    shared = tlsteer.extract_activations(tiny_gemma3, pairs, share_prefix=True, batch_size=2)
    assert calls == []
    for hook in plain.hooks:
        assert (plain.positive[hook] - shared.positive[hook]).abs().max() <= 1e-4
        assert (plain.negative[hook] - shared.negative[hook]).abs().max() <= 1e-4


# -- gemma-3-270m itself ---------------------------------------------------------------------------


@pytest.mark.gemma
def test_gemma_converts_like_transformers(gemma):
    from tlsteer.models import load_hf_model

    cfg = gemma.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.original_architecture) == (18, 640, "Gemma3ForCausalLM")
    assert cfg.attn_types.count("global") == 3 and cfg.window_size == 512 and cfg.use_qk_norm
    hf_model, tokenizer = load_hf_model("gemma-3-270m")
    text = chat_prompt(gemma, "What is the capital of France?", "The capital of France is")
    ids = tokenize(gemma, text)
    assert ids == tokenizer.encode(text) and ids[0] == tokenizer.bos_token_id
    with torch.no_grad():
        ours, theirs = gemma(torch.tensor([ids]))[0], hf_model(torch.tensor([ids])).logits[0]
    diff = (ours - theirs).abs().max().item()
    print(f"gemma-3-270m: max |TransformerLens - transformers| logit = {diff:.2e} over {len(ids)} positions")
    assert diff <= 1e-3
    assert tlsteer.models.gemma_terms().name == "GEMMA_TERMS.html"


@pytest.mark.gemma
@pytest.mark.parametrize("where", [tlsteer.Positions.all(), tlsteer.Positions.last()], ids=["all", "last"])
def test_gemma_invariants_across_its_window(gemma, where):
    """The invariance check on prompts longer than the 512-token window, generation crossing it."""
    words = ("the river runs past an old mill and a field of barley " * 60).split()
    long_prompt = " ".join(words[:505])
    n = len(tokenize(gemma, long_prompt))
    assert 505 <= n <= 512 - 2 < n + 8  # generating 8 tokens crosses the window
    gen = torch.Generator().manual_seed(0)
    d = torch.randn(gemma.cfg.d_model, generator=gen)
    vec = tlsteer.SteeringVector({"blocks.6.hook_resid_post": 40.0 * d / d.norm()})
    report = tlsteer.check_invariants(
        gemma,
        vec.steering(1.0, positions=where),
        [long_prompt, "Hi there"],
        max_new_tokens=8,
    )
    print(report)
    assert report.passed, str(report)


@pytest.mark.gemma
def test_gemma_prefix_shared_extraction_equals_plain_reads(gemma):
    pairs = tlsteer.load_builtin_dataset("sentiment", gemma, limit=6)
    assert pairs[0].positive.startswith("Question: ")  # the plain format: no other model's template
    plain = tlsteer.extract_activations(gemma, pairs, layers=[3, 7], share_prefix=False, batch_size=3)
    shared = tlsteer.extract_activations(gemma, pairs, layers=[3, 7], share_prefix=True, batch_size=3)
    for hook in plain.hooks:
        for side in ("positive", "negative"):
            a, b = getattr(plain, side)[hook], getattr(shared, side)[hook]
            assert (a - b).abs().max() <= 1e-4 * max(1.0, float(a.norm(dim=-1).max()))
