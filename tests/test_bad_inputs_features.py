"""Bad input to FeatureVector's selections and to load_sae: refused with errors that name the value."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata
from safetensors.torch import load_file, save_file

from tlsteer.sae import FeatureVector, load_sae

HOOK = "blocks.1.hook_resid_post"
DENSITIES = torch.tensor([0.9, 0.1, 0.6, 0.2, 0.3, 0.8])


def random_sae(seed=0, d_in=32, d_sae=64):
    """A standard sae-lens SAE at HOOK with random nonzero weights."""
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(hook_name=HOOK)))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in (sae.W_dec, sae.W_enc, sae.b_enc, sae.b_dec):
            param.copy_(torch.randn(param.shape, generator=gen))
    return sae


@pytest.fixture(scope="module")
def standard_sae():
    return random_sae()


def hand_made():
    return FeatureVector(torch.tensor([0.0, 3.0, -5.0, 1.0, -0.5, 2.0]), HOOK, "f" * 16, formula="paired")


# -- FeatureVector ------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), -0.1, 1.5])
def test_share_thresholds_must_be_finite_and_in_zero_one(bad):
    fv = hand_made()
    with pytest.raises(
        ValueError,
        match=rf"ceiling \(a share of tokens\) must be a finite number in \[0, 1\], "
        rf"got {re.escape(repr(bad))}$",
    ):
        fv.max_density(bad, DENSITIES)
    with pytest.raises(
        ValueError,
        match=rf"threshold \(a share of examples\) must be a finite number in \[0, 1\], "
        rf"got {re.escape(repr(bad))}$",
    ):
        fv.min_frequency(bad, DENSITIES)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), torch.tensor(float("nan"))])
def test_output_score_threshold_must_be_finite(bad):
    scores = torch.tensor([9.0, -1.0, 0.5, 2.0, 0.0, 1.0])
    with pytest.raises(ValueError, match=r"^threshold must be a finite number, got (nan|inf|-inf)$"):
        hand_made().by_output_score(scores, threshold=bad)
    assert hand_made().by_output_score(scores, threshold=torch.tensor(0.5)).features == [2, 3, 5]


@pytest.mark.parametrize("bad", ["0.5", None, True])
def test_thresholds_must_be_numbers(bad):
    with pytest.raises(TypeError, match=r"ceiling \(a share of tokens\) must be a finite number in \[0, 1\]"):
        hand_made().max_density(bad, DENSITIES)


@pytest.mark.parametrize("k", [-1, 0, 2.5, True, "3"])
def test_table_refuses_k_below_one_or_not_an_int(tiny_llama, standard_sae, k):
    fv = FeatureVector.from_dictionary(standard_sae, torch.linspace(-1, 1, 65)[:64] + 0.01)
    with pytest.raises(ValueError, match=rf"^k must be an int >= 1, got {re.escape(repr(k))}$"):
        fv.table(tiny_llama, standard_sae, k=k)
    with pytest.raises(ValueError, match=r"^n_tokens must be an int >= 1, got 0$"):
        fv.table(tiny_llama, standard_sae, n_tokens=0)
    assert len(fv.table(tiny_llama, standard_sae, k=64)) == 64


def test_a_vector_with_no_nonzero_feature_is_refused(standard_sae):
    with pytest.raises(
        ValueError,
        match=r"a FeatureVector needs at least one nonzero feature; all 6 values are 0 "
        r".*would change nothing",
    ):
        FeatureVector(torch.zeros(6), HOOK, "f" * 16, formula="paired")
    with pytest.raises(ValueError, match="all 64 values are 0"):
        FeatureVector.from_dictionary(standard_sae, torch.zeros(64))


def test_a_selection_that_removes_every_feature_is_refused_by_name():
    fv = hand_made()
    with pytest.raises(
        ValueError, match=r"^max_density\(0\.05\) removed all 5 nonzero features of the vector"
    ):
        fv.max_density(0.05, DENSITIES)
    with pytest.raises(ValueError, match=r"^min_frequency\(1\) removed all 5 nonzero features"):
        fv.min_frequency(1.0, DENSITIES)
    with pytest.raises(ValueError, match=r"^sign\(negative\) removed all 3 nonzero features"):
        fv.sign("positive").sign("negative")
    with pytest.raises(ValueError, match=r"^drop\(5 features\) removed all 5 nonzero features"):
        fv.drop([1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match=r"^drop_first_token_features\(2 features\) removed all 2"):
        fv.top_k(2).drop_first_token_features([1, 2])
    scores = torch.tensor([9.0, -1.0, 0.5, 2.0, 0.0, 1.0])
    with pytest.raises(ValueError, match=r"^by_output_score\(>=100\) removed all 5 nonzero features"):
        fv.by_output_score(scores, threshold=100)
    assert fv.max_density(0.1, DENSITIES).features == [1]  # one left is still a vector


# -- load_sae -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sae") / "ok"
    random_sae().save_model(folder)
    return folder


def corrupt(saved, tmp_path, edit_cfg=None, weights=None):
    folder = tmp_path / "broken"
    shutil.copytree(saved, folder)
    if edit_cfg is not None:
        cfg = json.loads((folder / "cfg.json").read_text())
        (folder / "cfg.json").write_text(edit_cfg(cfg) if callable(edit_cfg) else edit_cfg)
    if weights is not None:
        weights(folder / "sae_weights.safetensors")
    return folder


def without(*keys):
    return lambda cfg: json.dumps({k: v for k, v in cfg.items() if k not in keys})


@pytest.mark.parametrize(
    ("edit_cfg", "match"),
    [
        (
            without("dtype"),
            r"cfg\.json' lacks 'dtype' \(it has 'apply_b_dec_to_input', .*expected an SAE config",
        ),
        ("{}", r"cfg\.json' lacks 'd_in', 'd_sae', 'dtype' \(it is empty\)"),
        ("{not json", r"cfg\.json' is not valid JSON \(Expecting property name.*sae\.save_model\(path\)"),
        ("[1, 2]", r"cfg\.json' holds a JSON list; expected the JSON object of an SAE's config"),
        (
            lambda cfg: json.dumps({**cfg, "architecture": "topkk"}),
            r"cfg\.json' names architecture 'topkk', which sae-lens does not know; valid: 'standard'.*"
            r"closest: 'topk'",
        ),
        (without("architecture"), r"could not load the SAE in '.*broken' \(KeyError: 'architecture'\)"),
        (
            lambda cfg: json.dumps({**cfg, "d_sae": 65}),
            r"(?s)could not load the SAE in '.*broken' \(RuntimeError: .*size mismatch for W_dec",
        ),
    ],
)
def test_load_sae_names_the_broken_config(saved, tmp_path, edit_cfg, match):
    folder = corrupt(saved, tmp_path, edit_cfg=edit_cfg)
    with pytest.raises(ValueError, match=match) as caught:
        load_sae(folder)
    assert str(folder) in str(caught.value)


def truncate(path):
    path.write_bytes(path.read_bytes()[:200])


def drop_w_dec(path):
    weights = load_file(str(path))
    weights.pop("W_dec")
    save_file(weights, str(path))


@pytest.mark.parametrize(
    ("weights", "error", "match"),
    [
        (lambda p: p.write_bytes(b"garbage"), ValueError, r"is not a readable safetensors file \(.*header"),
        (truncate, ValueError, r"is not a readable safetensors file"),
        (lambda p: p.unlink(), FileNotFoundError, r"sae_weights\.safetensors is missing; expected a folder"),
        (drop_w_dec, ValueError, r"(?s)\(RuntimeError: .*Missing key\(s\) in state_dict: \"W_dec\""),
    ],
)
def test_load_sae_names_the_broken_weights(saved, tmp_path, weights, error, match):
    folder = corrupt(saved, tmp_path, weights=weights)
    with pytest.raises(error, match=match) as caught:
        load_sae(folder)
    assert str(folder) in str(caught.value)


def test_load_sae_still_reads_a_good_folder_and_a_dtype_override(saved):
    assert load_sae(saved).W_dec.dtype == torch.float32
    folder_without_dtype = saved.parent / "no_dtype"
    shutil.copytree(saved, folder_without_dtype)
    cfg = json.loads((folder_without_dtype / "cfg.json").read_text())
    (folder_without_dtype / "cfg.json").write_text(without("dtype")(cfg))
    assert load_sae(folder_without_dtype, dtype=torch.float64).W_dec.dtype == torch.float64
