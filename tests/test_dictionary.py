"""The feature-dictionary protocol: the SAE adapter satisfies it exactly, the check names what is wrong,
and a dictionary that is not an SAE works wherever the protocol is read (the feature token view)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
import torch

import tlsteer
from tests.test_sae import HOOK, random_sae
from tlsteer.dictionary import FeatureDictionary, check_feature_dictionary, check_feature_ids, fingerprint
from tlsteer.eval.token_view import feature_token_view
from tlsteer.sae.adapter import SAEDictionary, as_feature_dictionary, sae_fingerprint

PROMPT = "The cat sat on the mat"


@dataclass(frozen=True)
class Codebook:
    """A plain linear dictionary, no sae-lens: ``encode = acts @ W.T``, ``decode = f @ W``."""

    weights: torch.Tensor
    hook_name: str = HOOK

    @property
    def width(self) -> int:
        return self.weights.shape[0]

    @property
    def d_model(self) -> int:
        return self.weights.shape[1]

    def encode(self, acts):
        return acts.float() @ self.weights.T

    def decode(self, features):
        return features.float() @ self.weights

    def decoder_rows(self, ids):
        return self.weights[ids]

    def decode_change(self, df, ids):
        return df.float() @ self.weights[ids]


def codebook(d_model=32, width=10, seed=0) -> Codebook:
    return Codebook(torch.randn(width, d_model, generator=torch.Generator().manual_seed(seed)))


def test_an_adapted_sae_is_a_feature_dictionary_with_the_sae_s_numbers(tiny_llama):
    sae = random_sae("standard")
    fd = as_feature_dictionary(sae)
    assert isinstance(fd, FeatureDictionary) and check_feature_dictionary(fd, tiny_llama) is fd
    assert (fd.hook_name, fd.width, fd.d_model) == (HOOK, 64, 32)
    acts = torch.randn(5, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(fd.encode(acts.double()), sae.encode(acts))
        codes = fd.encode(acts)
        torch.testing.assert_close(fd.decode(codes), sae.decode(codes))
    ids = torch.tensor([3, 0, 63])
    assert torch.equal(fd.decoder_rows(ids), sae.W_dec.detach()[ids])
    assert fingerprint(fd) == sae_fingerprint(sae)
    assert as_feature_dictionary(fd) is fd and isinstance(fd, SAEDictionary)


def test_the_adapter_refuses_a_hook_it_cannot_name():
    with pytest.raises(ValueError, match="the SAE has no hook name"):
        as_feature_dictionary(random_sae("standard", hook=None))
    with pytest.raises(ValueError, match="disagrees with the SAE's own hook"):
        as_feature_dictionary(random_sae("standard"), hook_name="blocks.0.hook_resid_post")
    bare = as_feature_dictionary(random_sae("standard", hook=None), hook_name="blocks.0.hook_resid_post")
    assert bare.hook_name == "blocks.0.hook_resid_post"


def test_the_check_names_what_is_missing_or_wrong(tiny_llama):
    with pytest.raises(
        TypeError,
        match=r"expected a feature dictionary \(hook_name, width, d_model, encode, decode, decoder_rows, "
        r"decode_change\), got object lacking hook_name, width, d_model, encode, decode, decoder_rows, "
        r"decode_change$",
    ):
        check_feature_dictionary(object())
    with pytest.raises(
        TypeError, match=r"StandardSAE lacking hook_name, width, d_model, decoder_rows, decode_change; adapt"
    ):
        check_feature_dictionary(random_sae("standard"))
    with pytest.raises(
        TypeError, match="hook_name must be a hook name like 'blocks.3.hook_resid_post', got ''"
    ):
        check_feature_dictionary(replace(codebook(), hook_name=""))
    with pytest.raises(TypeError, match="the dictionary's width must be an int >= 1, got 0"):
        check_feature_dictionary(codebook(width=0))
    with pytest.raises(ValueError, match="the dictionary has d_model=16 but model.cfg.d_model=32"):
        check_feature_dictionary(codebook(d_model=16), tiny_llama)
    with pytest.raises(KeyError, match="blocks.9.hook_resid_post"):
        check_feature_dictionary(replace(codebook(), hook_name="blocks.9.hook_resid_post"), tiny_llama)
    assert check_feature_dictionary(codebook()).width == 10  # no model: the shape alone


def test_feature_ids_name_the_dictionary_and_its_width():
    assert check_feature_ids(torch.tensor([2, 0]), 5) == [2, 0] and check_feature_ids(4, 5) == [4]
    with pytest.raises(
        IndexError, match=r"feature 5 is out of range: the dictionary has width=5 features \(valid"
    ):
        check_feature_ids([1, 5], 5)
    with pytest.raises(IndexError, match="the SAE has d_sae=5 features"):
        check_feature_ids([5], 5, owner="the SAE", size="d_sae")
    with pytest.raises(ValueError, match=r"given more than once: \[1\]"):
        check_feature_ids([1, 1], 5)


def test_a_dictionary_that_is_not_an_sae_drives_the_feature_view(tiny_llama):
    book = codebook()
    view = feature_token_view(tiny_llama, book, [0, 7], PROMPT)
    ids = tlsteer.tokenize(tiny_llama, PROMPT)
    _, cache = tiny_llama.run_with_cache(torch.tensor([ids]), names_filter=HOOK)
    expected = (cache[HOOK][0] @ book.weights.T)[:, [0, 7]].T
    torch.testing.assert_close(torch.tensor(view.activations), expected, rtol=1e-5, atol=1e-5)
    assert view.dictionary_fingerprint == fingerprint(book) and view.hook_name == HOOK
    with pytest.raises(IndexError, match="the dictionary has width=10 features"):
        feature_token_view(tiny_llama, book, [10], PROMPT)
