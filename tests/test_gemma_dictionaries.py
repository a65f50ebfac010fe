"""The dictionaries shipped for gemma-3-270m (marked ``gemma``): SAEs at layers 3 and 7, the same
relative depths as SmolLM2's 6 and 12, loaded offline, fitting the model, and as good on their
held-out texts as their provenance records."""

from __future__ import annotations

import json

import pytest

from tests.conftest import heldout_explained_variance
from tlsteer.sae import embedded as emb
from tlsteer.tokens import tokenize

pytestmark = pytest.mark.gemma

MODEL = "gemma-3-270m"
LAYERS = (3, 7)
EV_FLOOR = 0.85
"""Explained variance every shipped SAE must reach on its held-out texts (SmolLM2's floor)."""


def test_gemma_saes_are_shipped_at_the_matched_depths():
    assert emb.embedded_sae_layers(MODEL) == LAYERS
    assert emb.embedded_sae_path(model=MODEL).name == "layer_3"
    with pytest.raises(
        ValueError, match=r"no SAE is shipped for layer 6 of gemma-3-270m; shipped layers: 3, 7"
    ):
        emb.load_embedded_sae(6, model=MODEL)
    with pytest.raises(ValueError, match=r"no SAEs are shipped for model 'gpt2'"):
        emb.embedded_sae_layers("gpt2")


def test_gemma_saes_load_offline_and_fit_the_model(gemma, no_network):
    for layer in LAYERS:
        sae = emb.load_embedded_sae(layer, model=MODEL)
        meta = sae.cfg.metadata
        assert meta.hook_name == f"blocks.{layer}.hook_resid_post" and meta.hook_name in gemma.hook_dict
        assert meta.model_name == gemma.cfg.model_name == MODEL
        assert meta.seqpos_slice[0] >= 1  # <bos>, the attention sink, was never trained on
        assert sae.cfg.d_in == gemma.cfg.d_model == 640 and sae.cfg.d_sae == 8 * 640


@pytest.mark.parametrize("layer", LAYERS)
def test_gemma_sae_explained_variance_on_heldout_texts(gemma, layer):
    sae = emb.load_embedded_sae(layer, model=MODEL)
    texts = json.loads((emb.embedded_sae_path(layer, MODEL) / "heldout_texts.json").read_text())
    # position 0 (<bos>, the attention sink, never trained on) is what the helper leaves out
    assert all(tokenize(gemma, text)[0] == gemma.tokenizer.bos_token_id for text in texts)
    ev, n_tokens = heldout_explained_variance(gemma, layer, texts, sae)
    recorded = emb.embedded_sae_provenance(layer, MODEL)["evaluation"]["shipped_sample"]["explained_variance"]
    print(
        f"gemma layer {layer}: explained variance {ev:.4f} on {n_tokens} held-out tokens"
        f" (recorded {recorded})"
    )
    assert ev >= EV_FLOOR
    assert ev == pytest.approx(recorded, abs=0.01)


def test_gemma_codebooks_load_offline_and_reconstruct_heldout_texts(gemma, no_network):
    """Each codebook shipped for gemma-3-270m loads without the network, fits the model (5,120 codes,
    8 × d_model, the SAEs' width; k = 8), and explains about the variance its provenance records on
    the SAE's shipped held-out texts (position 0 left out; a sample of 2 texts, hence the tolerance),
    below the SAE at the same layer (8 codes per token against 64 features)."""
    from tlsteer.codebook import (
        embedded_codebook_layers,
        embedded_codebook_provenance,
        load_embedded_codebook,
    )

    layers = embedded_codebook_layers(MODEL)
    assert list(layers) == list(LAYERS)  # both of the SAEs' depths, and only those
    for layer in layers:
        book = load_embedded_codebook(layer, model=MODEL)
        assert book.hook_name == f"blocks.{layer}.hook_resid_post" and book.k == 8
        assert book.vectors.shape == (8 * 640, gemma.cfg.d_model)
        assert book.model_name == gemma.cfg.model_name == MODEL
        sae = emb.load_embedded_sae(layer, model=MODEL)
        texts = json.loads((emb.embedded_sae_path(layer, MODEL) / "heldout_texts.json").read_text())
        ev_book, ev_sae, n_tokens = heldout_explained_variance(gemma, layer, texts, book, sae)
        recorded = embedded_codebook_provenance(layer, MODEL)["quality"]["codebook"]["explained_variance"]
        print(
            f"gemma layer {layer}: codebook {ev_book:.4f} (recorded {recorded}), "
            f"SAE {ev_sae:.4f}, {n_tokens} tokens"
        )
        assert ev_book == pytest.approx(recorded, abs=0.1)
        assert 0.5 < ev_book < ev_sae
