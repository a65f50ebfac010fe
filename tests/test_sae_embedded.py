"""The SAEs shipped for the embedded model: discovery, errors, offline loading, held-out quality.

The discovery and error tests build fake weight folders and always run. The tests on real weights
skip, saying how to build them, until ``tlsteer/sae/weights/layer_{L}/`` exists.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import heldout_explained_variance
from tlsteer.sae import embedded as emb
from tlsteer.sae import sae_quality

pytestmark = pytest.mark.embedded

EV_FLOOR = 0.85
"""Explained variance every shipped SAE must reach on its held-out conversations."""

needs_weights = pytest.mark.skipif(
    not emb.embedded_sae_layers(),
    reason=f"no SAE is shipped in tlsteer/sae/weights yet; build them with: {emb.BUILD_COMMAND}",
)


@pytest.fixture
def fake_weights(tmp_path, monkeypatch):
    for name in ("layer_12", "layer_3", "layer_7"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "cfg.json").write_text("{}")
        (tmp_path / name / "sae_weights.safetensors").write_bytes(b"")
    (tmp_path / "layer_9").mkdir()  # no weights: not shipped
    (tmp_path / "notes").mkdir()
    monkeypatch.setattr(emb, "WEIGHTS_DIR", tmp_path)
    return tmp_path


def test_layers_are_the_complete_layer_folders(fake_weights):
    assert emb.embedded_sae_layers() == (3, 7, 12)
    assert emb.embedded_sae_path() == fake_weights / "layer_3"
    assert emb.embedded_sae_path(12) == fake_weights / "layer_12"


def test_unknown_layer_names_the_shipped_ones(fake_weights):
    with pytest.raises(ValueError, match=r"^no SAE is shipped for layer 9; shipped layers: 3, 7, 12$"):
        emb.load_embedded_sae(9)
    with pytest.raises(TypeError, match="layer must be an int or None, got True"):
        emb.embedded_sae_path(True)


def test_no_weights_says_how_to_build_them(tmp_path, monkeypatch):
    monkeypatch.setattr(emb, "WEIGHTS_DIR", tmp_path / "missing")
    assert emb.embedded_sae_layers() == ()
    with pytest.raises(
        FileNotFoundError, match=r"no SAE is shipped in .*python benchmarks/rebuild_saes.py --caa-dir"
    ):
        emb.load_embedded_sae()


@needs_weights
def test_shipped_saes_load_offline_and_fit_the_model(embedded, no_network):
    for layer in emb.embedded_sae_layers():
        sae = emb.load_embedded_sae(layer)
        meta = sae.cfg.metadata
        assert meta.hook_name == f"blocks.{layer}.hook_resid_post"
        assert meta.hook_name in embedded.hook_dict
        assert meta.model_name == embedded.cfg.model_name == emb.EMBEDDED_SAE_MODEL
        assert list(meta.seqpos_slice) == emb.embedded_sae_provenance(layer)["seqpos_slice"]
        assert meta.seqpos_slice[0] >= 1  # the attention sink at position 0 was never trained on
        assert sae.cfg.d_in == embedded.cfg.d_model
        assert sae.W_dec.shape == (sae.cfg.d_sae, embedded.cfg.d_model)
        assert sae.W_dec.dtype == torch.float32
    default = emb.load_embedded_sae()
    assert default.cfg.metadata.hook_name == f"blocks.{emb.embedded_sae_layers()[0]}.hook_resid_post"


@needs_weights
@pytest.mark.parametrize("layer", emb.embedded_sae_layers() or [None])
def test_explained_variance_on_heldout_conversations(embedded, layer):
    sae = emb.load_embedded_sae(layer)
    folder = emb.embedded_sae_path(layer)
    texts = json.loads((folder / "heldout_texts.json").read_text())
    ev, n_tokens = heldout_explained_variance(embedded, layer, texts, sae)  # position 0 left out
    recorded = emb.embedded_sae_provenance(layer)["evaluation"]["shipped_sample"]["explained_variance"]
    print(f"layer {layer}: explained variance {ev:.4f} on {n_tokens} held-out tokens (recorded {recorded})")
    assert ev >= EV_FLOOR
    assert ev == pytest.approx(recorded, abs=0.01)


QUALITY = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "sae_quality.json"


@needs_weights
@pytest.mark.parametrize("layer", emb.embedded_sae_layers() or [None])
def test_quality_numbers_of_the_readme_reproduce(embedded, layer):
    """``python benchmarks/sae_quality.py`` wrote these for the shipped sample; they come back."""
    recorded = json.loads(QUALITY.read_text())["layers"][str(layer)]["shipped"]
    texts = json.loads((emb.embedded_sae_path(layer) / "heldout_texts.json").read_text())
    quality = sae_quality(embedded, emb.load_embedded_sae(layer), texts)
    assert quality.n_tokens == recorded["n_tokens"] and quality.skip_first == recorded["skip_first"] == 1
    assert quality.explained_variance == pytest.approx(recorded["explained_variance"], abs=0.005)
    assert quality.l0 == pytest.approx(recorded["l0"], abs=0.5)
    assert quality.ce_loss_score == pytest.approx(recorded["ce_loss_score"], abs=0.005)
    assert quality.added_loss == pytest.approx(recorded["added_loss"], abs=0.005)


def test_the_no_network_fixture_refuses_connections(no_network):
    import socket

    with socket.socket() as sock, pytest.raises(AssertionError, match="network access in an offline test"):
        sock.connect(("127.0.0.1", 9))
