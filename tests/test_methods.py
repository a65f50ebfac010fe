"""The comparison's methods, built from planted sparse codes: every direction equals its definition."""

from __future__ import annotations

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from tlsteer.contrast import ContrastActivations
from tlsteer.experiments.contrasts import ContrastReps
from tlsteer.experiments.methods import METHODS, build_methods
from tlsteer.sae import encode_steering_vector, output_scores
from tlsteer.sae.adapter import sae_fingerprint
from tlsteer.sae.selection import FeatureStats
from tlsteer.vector import SteeringVector

HOOK = "blocks.1.hook_resid_post"
D_SAE = 16
UP, DOWN, DENSE, FIRST = (2, 4, 6), (9,), 11, 13  # planted: raised, lowered, too dense, first-token


@pytest.fixture(scope="module")
def setup(tiny_llama):
    d_in = tiny_llama.cfg.d_model
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=D_SAE, metadata=SAEMetadata(hook_name=HOOK)))
    q, _ = torch.linalg.qr(torch.randn(d_in, D_SAE, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        sae.W_dec.copy_(q.T)
        sae.W_enc.copy_(q)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    gen = torch.Generator().manual_seed(1)
    pos = 0.2 * torch.rand(20, D_SAE, generator=gen)
    neg = 0.2 * torch.rand(30, D_SAE, generator=gen)
    for i, f in enumerate(UP):
        pos[:, f] += 1.0 + i  # feature 4 ranks above 2, 6 above both
    neg[:, DOWN[0]] += 1.5
    pos[:, DENSE] += 5.0
    pos[:, FIRST] += 5.0
    reps = ContrastReps.from_rows(
        pos @ sae.W_dec.detach(),
        neg @ sae.W_dec.detach(),
        pos,
        neg,
        hook_name=HOOK,
        dictionary=sae_fingerprint(sae),
        class_means=torch.randn(3, d_in, generator=gen),
    )
    density = torch.full((D_SAE,), 0.01)
    density[DENSE] = 0.5
    first = torch.zeros(D_SAE)
    first[FIRST] = 1.0
    stats = FeatureStats(HOOK, density, torch.full((D_SAE,), 2.0), first, 1000, 10, 1)
    return sae, reps, stats


def unit(t):
    return t / t.norm()


def test_every_direction_equals_its_definition(tiny_llama, setup):
    sae, reps, stats = setup
    methods = build_methods(
        tiny_llama,
        sae,
        HOOK,
        reps,
        3.0,
        stats,
        instruction="Be a pirate.",
        ks=(2,),
        k_output=2,
        n_candidates=3,
        max_density=0.1,
    )
    # the default: every family but the codebook's two (no codebook given), top-k expanded per k
    assert set(methods) == {
        m for m in METHODS if m not in ("feature_topk", "caa_projected", "codes_add", "codes_bottleneck")
    } | {"feature_top2", "caa_proj_top2"}
    W = sae.W_dec.detach()
    raw = reps.raw_pos.mean(0) - reps.raw_neg.mean(0)
    diff = reps.feat_pos.mean(0) - reps.feat_neg.mean(0)

    def close(name, want):
        torch.testing.assert_close(methods[name].direction[HOOK], unit(want), atol=1e-5, rtol=0)

    close("caa", raw)
    close("mean_centred", reps.raw_pos.mean(0) - reps.class_means.mean(0))
    close("feature_full", diff @ W)
    # filtered: the dense and the first-token features are gone; top 2 by magnitude are 6 and 4
    top2 = torch.zeros(D_SAE)
    top2[[6, 4]] = diff[[6, 4]]
    close("feature_top2", top2 @ W)
    # CAA projected onto the span of the same two decoder rows (orthonormal here: W[[6, 4]])
    rows = W[[4, 6]]
    close("caa_proj_top2", (rows @ raw) @ rows)
    # every vector method carries its cosine with CAA
    for name, m in methods.items():
        if m.direction is not None:
            want = float(unit(m.direction[HOOK]) @ unit(raw))
            assert m.cosine == pytest.approx(want, abs=1e-5), name
    assert methods["caa"].cosine == pytest.approx(1.0, abs=1e-6) and methods["prompting"].cosine is None
    # the 3 candidates are the raised features; the 2 with the best output score are kept, best first
    scores = output_scores(tiny_llama, sae, list(UP), hook_name=HOOK)
    best = sorted(UP, key=lambda f: -float(scores[f]))[:2]
    assert list(methods["clamp"].features) == best
    chosen = torch.zeros(D_SAE)
    chosen[best] = diff[best]
    close("feature_output", chosen @ W)
    assert methods["clamp"].off_features[0] == DOWN[0]
    close("single_feature", W[methods["clamp"].features[0]])
    encoded = encode_steering_vector(sae, SteeringVector({HOOK: raw})).to_steering_vector(sae)[HOOK]
    close("caa_encoded", encoded)
    assert (
        methods["random"].direction
        == build_methods(tiny_llama, sae, HOOK, reps, 3.0, stats, methods=["random"])["random"].direction
    )
    draws = build_methods(tiny_llama, sae, HOOK, reps, 3.0, stats, methods=["random"], n_random=8, seed=5)
    assert list(draws) == [f"random.{j}" for j in range(8)]
    seeded = build_methods(tiny_llama, sae, HOOK, reps, 3.0, stats, methods=["random"], seed=7)["random"]
    torch.testing.assert_close(draws["random.2"].direction[HOOK], seeded.direction[HOOK])  # seed + j
    directions = torch.stack([d.direction[HOOK] for d in draws.values()])
    assert (directions @ directions.T - torch.eye(8)).abs().max() < 0.9  # eight different directions
    # strength: unit direction times strength times the residual norm
    ((hook, edit),) = methods["caa"].at(0.5).edits
    caa_unit = methods["caa"].direction[HOOK]
    assert hook == HOOK and float(caa_unit.norm()) == pytest.approx(1.0)
    torch.testing.assert_close(edit.direction, 1.5 * caa_unit)  # the applied delta: strength x scale
    assert methods["prompting"].at(None).prefix == "Be a pirate." and not methods["prompting"].has_strength


def test_clamp_sets_features_to_strength_times_typical(tiny_llama, setup):
    sae, reps, stats = setup
    clamp = build_methods(
        tiny_llama, sae, HOOK, reps, 3.0, stats, methods=["clamp"], k_output=2, n_candidates=3
    )["clamp"]
    ((hook, edit),) = clamp.at(1.5).edits
    h = reps.raw_pos[:4]
    with torch.no_grad():
        after = sae.encode(h + edit(h))
    for f in clamp.features:
        torch.testing.assert_close(after[:, f], torch.full((4,), 3.0), atol=1e-4, rtol=0)  # 1.5 x typical 2.0
    torch.testing.assert_close(after[:, DOWN[0]], torch.zeros(4), atol=1e-4, rtol=0)
    assert hook == HOOK


def test_build_methods_bad_input(tiny_llama, setup):
    sae, reps, stats = setup
    with pytest.raises(ValueError, match="unknown method 'steer'"):
        build_methods(tiny_llama, sae, HOOK, reps, 3.0, stats, methods=["steer"])
    with pytest.raises(ValueError, match="non-empty instruction"):
        build_methods(tiny_llama, sae, HOOK, reps, 3.0, stats, methods=["prompting"])
    with pytest.raises(ValueError, match="codes_add and codes_bottleneck need codebook="):
        build_methods(tiny_llama, sae, HOOK, reps, 3.0, stats, methods=["codes_add"])
    pairs = ContrastReps(
        ContrastActivations(*[{HOOK: reps.raw_pos}] * 2, paired=True),
        ContrastActivations(*[{HOOK: reps.feat_pos}] * 2, paired=True, dictionary=reps.features.dictionary),
    )
    with pytest.raises(ValueError, match="mean_centred needs class means"):
        build_methods(tiny_llama, sae, HOOK, pairs, 3.0, stats, methods=["mean_centred"])
    with pytest.raises(ValueError, match="the direction is zero"):
        build_methods(tiny_llama, sae, HOOK, pairs, 3.0, stats, methods=["caa"])
    with pytest.raises(ValueError, match="a FeatureVector needs at least one nonzero feature"):
        build_methods(tiny_llama, sae, HOOK, pairs, 3.0, stats, methods=["feature_full"])
    with pytest.raises(ValueError, match="scale must be > 0"):
        build_methods(tiny_llama, sae, HOOK, reps, 0.0, stats, methods=["caa"])
    with pytest.raises(ValueError, match="non-finite"):
        ContrastReps.from_rows(
            reps.raw_pos * float("nan"),
            reps.raw_neg,
            reps.feat_pos,
            reps.feat_neg,
            hook_name=HOOK,
            dictionary="x",
        )
    with pytest.raises(ValueError, match="as many positives as negatives"):
        ContrastReps.from_rows(
            reps.raw_pos,
            reps.raw_neg,
            reps.feat_pos,
            reps.feat_neg,
            hook_name=HOOK,
            dictionary="x",
            paired=True,
        )
    with pytest.raises(ValueError, match="features must hold features, got activations"):
        ContrastReps(reps.raw, reps.raw)  # the same rows twice: the feature space is not tagged
    with pytest.raises(ValueError, match="raw_pos has 20 rows but feat_pos has 19"):
        ContrastReps.from_rows(
            reps.raw_pos, reps.raw_neg, reps.feat_pos[1:], reps.feat_neg, hook_name=HOOK, dictionary="x"
        )
