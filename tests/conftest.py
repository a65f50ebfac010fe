"""Shared fixtures: tiny config-built HookedTransformers with an offline character tokenizer,
and the embedded model (session-scoped, for tests marked ``embedded``)."""

from __future__ import annotations

import string
import warnings

import pytest
import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformer_lens import HookedTransformer
from transformer_lens.config.hooked_transformer_config import HookedTransformerConfig
from transformers import PreTrainedTokenizerFast

from tlsteer.models import attach_tokenizer

SPECIALS = ["<pad>", "<bos>", "<eos>", "<|user|>", "<|end|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|user|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer with a chat template, built offline."""
    chars = list(string.printable)
    vocab = {tok: i for i, tok in enumerate(SPECIALS + chars)}
    inner = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    inner.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=inner,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        additional_special_tokens=SPECIALS[3:],
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def make_model(arch: str, seed: int = 0, n_layers: int = 4) -> HookedTransformer:
    tok = make_tokenizer()
    common = dict(
        n_layers=n_layers,
        d_model=32,
        d_head=8,
        n_heads=4,
        d_mlp=64,
        n_ctx=128,
        d_vocab=len(tok),
        seed=seed,
        device="cpu",
        dtype=torch.float32,
        default_prepend_bos=False,
    )
    if arch == "llama":
        cfg = HookedTransformerConfig(
            **common,
            act_fn="silu",
            normalization_type="RMS",
            positional_embedding_type="rotary",
            rotary_dim=8,
            gated_mlp=True,
            n_key_value_heads=2,
            final_rms=True,
            original_architecture="LlamaForCausalLM",
            model_name="tiny-llama",
        )
    else:
        cfg = HookedTransformerConfig(
            **common,
            act_fn="gelu",
            normalization_type="LN",
            positional_embedding_type="standard",
            model_name="tiny-gpt2",
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(cfg)
    # Random init is small; scale weights so that steering and positions visibly matter.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2 and "W_" in name:
                p.mul_(2.0)
    attach_tokenizer(model, tok)
    model.eval()
    return model


@pytest.fixture(scope="session")
def tiny_llama() -> HookedTransformer:
    return make_model("llama")


@pytest.fixture(scope="session")
def tiny_gpt2() -> HookedTransformer:
    return make_model("gpt2", seed=1)


@pytest.fixture(scope="session", params=["llama", "gpt2"])
def tiny(request, tiny_llama, tiny_gpt2) -> HookedTransformer:
    return tiny_llama if request.param == "llama" else tiny_gpt2


@pytest.fixture(scope="session")
def embedded():
    import tlsteer

    return tlsteer.load_model()


@pytest.fixture(autouse=True)
def _no_leftover_hooks(request):
    """Every test leaves the session models without hooks."""
    yield
    for name in ("tiny_llama", "tiny_gpt2", "embedded"):
        if name in request.fixturenames:
            model = request.getfixturevalue(name)
            assert count_hooks(model) == 0, f"{name} has hooks left after {request.node.name}"


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
