"""The SAE training API on tiny models: corpus split and packing, the activation cache, training,
folding (``tlsteer.sae.corpus``, ``tlsteer.sae.activation_cache``, ``tlsteer.sae.training``)."""

from __future__ import annotations

import copy
import hashlib
import json
import random

import numpy as np
import pytest
import torch

pytest.importorskip("sae_lens")

from datasets import Array2D, Dataset, Features, Sequence, Value  # noqa: E402

from tlsteer.sae.activation_cache import (  # noqa: E402
    CACHE_INFO_FILE,
    cache_activations,
    iter_activations,
    load_activation_cache,
)
from tlsteer.sae.corpus import (  # noqa: E402
    CorpusExample,
    build_corpus,
    is_heldout,
    load_corpus,
    pack_rows,
    text_examples,
)
from tlsteer.sae.training import (  # noqa: E402
    TopKTrainingConfig,
    fold_sae,
    train_topk_sae,
)

HOOK = "blocks.1.hook_resid_post"


def token_rows(n_rows: int, context: int, vocab: int, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (n_rows, context), generator=g, dtype=torch.int32)
    features = Features({"input_ids": Sequence(Value("int32"), length=context)})
    return Dataset.from_dict({"input_ids": ids.tolist()}, features=features)


# --- corpus: held-out split and packing ---


def test_is_heldout_is_the_documented_hash():
    for key in ("What is 2+2?", "Hello", "", "é"):
        digest = int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) / 16**12
        for fraction in (0.0, 0.05, 0.3, 0.5, 1.0):
            assert is_heldout(key, fraction) == (digest < fraction)


def test_heldout_split_is_deterministic_and_keeps_every_example_of_a_question_on_one_side(tiny_llama):
    questions = [f"question {i}?" for i in range(60)]
    examples = []
    for q in questions:  # three examples per question, with different texts and sources
        examples += [*text_examples("generated:a", [q]), CorpusExample("generated:b", q, q + " yes")]
        examples.append(CorpusExample("caa_ab:x", q, q + " (B) no"))
    examples += text_examples("neutral", questions)  # never held out: not a held-out source
    shuffled = examples[:]
    random.Random(1).shuffle(shuffled)
    a = build_corpus(tiny_llama, examples, context_size=16, heldout_fraction=0.3, seed=0)
    b = build_corpus(tiny_llama, shuffled, context_size=16, heldout_fraction=0.3, seed=0)
    held = {q for q in questions if is_heldout(q, 0.3)}
    assert 0 < len(held) < len(questions)
    expected = sorted(t.text for t in examples if t.source != "neutral" and t.key in held)
    assert sorted(a.heldout) == sorted(b.heldout) == expected  # every example of a held question
    assert a.sources["neutral"]["heldout_examples"] == 0
    assert sum(s["examples"] for s in a.sources.values()) == a.train_examples == len(examples) - len(expected)


def test_pack_rows_gives_full_rows_and_drops_the_last_partial_one():
    rows = pack_rows([[1, 2, 3], [4, 5], [6, 7, 8, 9]], 4)
    assert rows.dtype == np.int32
    np.testing.assert_array_equal(rows, [[1, 2, 3, 4], [5, 6, 7, 8]])
    assert pack_rows([[1, 2, 3]], 4).shape == (0, 4)
    with pytest.raises(ValueError, match="context_size must be an int >= 1, got 0"):
        pack_rows([[1]], 0)


def test_build_corpus_packs_the_shuffled_training_tokens_and_saves_what_load_corpus_reads(
    tiny_llama, tmp_path
):
    texts = [f"text number {i} " * (1 + i % 4) for i in range(30)]
    corpus = build_corpus(tiny_llama, text_examples("neutral", texts), context_size=32, seed=3)
    assert corpus.rows.shape == (corpus.train_tokens // 32, 32)
    assert corpus.summary()["dropped_tokens"] == corpus.train_tokens - corpus.rows.size < 32
    # the rows are a prefix of the seeded shuffle of the tokenized texts, concatenated
    from tlsteer.tokens import tokenize

    ids = [tokenize(tiny_llama, t) for t in texts]
    random.Random("3:pack").shuffle(ids)
    flat = [t for row in ids for t in row]
    np.testing.assert_array_equal(corpus.rows.ravel(), flat[: corpus.rows.size])
    corpus.save(tmp_path / "c")
    loaded = load_corpus(tmp_path / "c")
    assert loaded.rows_sha256 == corpus.rows_sha256 == hashlib.sha256(corpus.rows.tobytes()).hexdigest()
    assert loaded.dataset["input_ids"] == corpus.rows.tolist()
    with pytest.raises(FileNotFoundError, match="no corpus in"):
        load_corpus(tmp_path / "missing")


# --- the activation cache ---


def test_cache_reader_returns_the_hook_activations_of_the_cached_rows(tiny_llama, tmp_path):
    dataset = token_rows(18, 12, tiny_llama.cfg.d_vocab)
    cache = cache_activations(
        tiny_llama,
        dataset,
        hook_name=HOOK,
        folder=tmp_path / "acts",
        rows_sha256="corpus-a",
        seqpos_slice=(2, None),
        dtype=torch.float32,
        model_batch=4,
        max_shard_gb=1e-5,  # one model batch per shard: 4 shards, consolidated in order
    )
    assert (cache.rows, cache.positions, cache.tokens, cache.info["rows_dropped"]) == (16, 10, 160, 2)
    assert cache.info["shards"] == 4
    batches = list(iter_activations(tmp_path / "acts", batch_rows=5))
    assert [b.first_row for b in batches] == [0, 5, 10, 15]
    acts = torch.cat([b.acts for b in batches])
    token_ids = torch.cat([b.token_ids for b in batches])
    tokens = torch.tensor(dataset["input_ids"][:16], dtype=torch.long)
    with torch.no_grad():
        expected = torch.cat(
            [
                tiny_llama.run_with_cache(tokens[i : i + 4], names_filter=[HOOK])[1][HOOK]
                for i in range(0, 16, 4)
            ]
        )[:, 2:]
    assert acts.shape == (16, 10, tiny_llama.cfg.d_model)
    torch.testing.assert_close(acts, expected, rtol=0, atol=1e-6)
    assert torch.equal(token_ids, tokens[:, 2:])
    # the same key reuses the folder; another corpus caches again
    info_mtime = (tmp_path / "acts" / CACHE_INFO_FILE).stat().st_mtime_ns
    again = cache_activations(
        tiny_llama, dataset, hook_name=HOOK, folder=tmp_path / "acts", rows_sha256="corpus-a",
        dtype=torch.float32, model_batch=4, max_shard_gb=1e-5,
    )  # fmt: skip
    assert again.info == cache.info
    assert (tmp_path / "acts" / CACHE_INFO_FILE).stat().st_mtime_ns == info_mtime
    other = cache_activations(
        tiny_llama, dataset, hook_name=HOOK, folder=tmp_path / "acts", rows_sha256="corpus-b",
        dtype=torch.float32, model_batch=4, max_shard_gb=1e-5,
    )  # fmt: skip
    assert other.info["key"]["rows_sha256"] == "corpus-b"


def test_cache_errors_name_the_bad_value(tiny_llama, tmp_path):
    dataset = token_rows(3, 8, tiny_llama.cfg.d_vocab)
    with pytest.raises(ValueError, match=r"the corpus has 3 rows, fewer than one model batch \(4\)"):
        cache_activations(
            tiny_llama, dataset, hook_name=HOOK, folder=tmp_path / "a", rows_sha256="x", model_batch=4
        )
    with pytest.raises(KeyError, match="hook 'blocks.9.hook_resid_post' not in model"):
        cache_activations(
            tiny_llama, dataset, hook_name="blocks.9.hook_resid_post", folder=tmp_path / "a", rows_sha256="x"
        )
    with pytest.raises(FileNotFoundError, match="no activation cache in"):
        load_activation_cache(tmp_path / "nothing")


def test_activations_beyond_float16_are_refused_not_cached_as_inf(tiny_llama, tmp_path):
    """gemma-3-270m's layer-7 residual passes float16's 65,504; the overflow would be cached as inf."""
    dataset = token_rows(8, 8, tiny_llama.cfg.d_vocab)
    with (
        tiny_llama.hooks(fwd_hooks=[(HOOK, lambda act, hook: act * 1e5)]),
        pytest.raises(
            ValueError,
            match=r"cached values of blocks\.\d\.hook_resid_post are not finite.*"
            r"overflow float16.*dtype=torch\.float32",
        ),
    ):
        cache_activations(
            tiny_llama, dataset, hook_name=HOOK, folder=tmp_path / "acts", rows_sha256="x",
            dtype=torch.float16, model_batch=4,
        )  # fmt: skip
    assert not (tmp_path / "acts").exists()
    with tiny_llama.hooks(fwd_hooks=[(HOOK, lambda act, hook: act * 1e5)]):
        cache = cache_activations(
            tiny_llama, dataset, hook_name=HOOK, folder=tmp_path / "acts", rows_sha256="x",
            dtype=torch.float32, model_batch=4,
        )  # fmt: skip
    assert cache.tokens == 8 * 6 and torch.isfinite(next(iter_activations(tmp_path / "acts")).acts).all()


# --- training on a planted signal, and folding ---


def planted_activations(n_tokens: int, d_model: int, sample_seed: int = 1) -> torch.Tensor:
    """Each token: 2 of 24 fixed unit directions (the same for every call) with magnitudes in
    [1, 3], plus a fixed offset; ``sample_seed`` draws which and how much."""
    g = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(24, d_model, generator=g), dim=-1)
    offset = torch.randn(d_model, generator=g)
    out = torch.empty(n_tokens, d_model)
    g2 = torch.Generator().manual_seed(sample_seed)
    for i in range(n_tokens):
        which = torch.randperm(24, generator=g2)[:2]
        mags = 1 + 2 * torch.rand(2, generator=g2)
        out[i] = mags @ dirs[which] + offset
    return out


def write_planted_cache(folder, acts: torch.Tensor, context: int, seqpos: tuple) -> None:
    """A cache in the documented format (activation_cache's docstring), written by hand."""
    positions = len(range(context)[slice(*seqpos)])
    rows = acts.shape[0] // positions
    x = acts[: rows * positions].reshape(rows, positions, -1)
    features = Features(
        {
            HOOK: Array2D(shape=(positions, x.shape[-1]), dtype="float32"),
            "token_ids": Sequence(Value("int32"), length=positions),
        }
    )
    Dataset.from_dict(
        {HOOK: x.numpy(), "token_ids": np.zeros((rows, positions), dtype=np.int32)}, features=features
    ).save_to_disk(str(folder))
    key = {"rows_sha256": "planted", "hook_name": HOOK, "dtype": "float32", "context_size": context,
           "seqpos_slice": list(seqpos), "rows": rows}  # fmt: skip
    info = {
        "key": key,
        "tokens": rows * positions,
        "rows_dropped": 0,
        "shards": 1,
        "seconds": 0.0,
        "tokens_per_s": 0.0,
    }
    (folder / CACHE_INFO_FILE).write_text(json.dumps(info))


@pytest.fixture(scope="module")
def planted_sae(tiny_llama, tmp_path_factory):
    folder = tmp_path_factory.mktemp("planted") / "acts"
    d_model = tiny_llama.cfg.d_model
    write_planted_cache(folder, planted_activations(4000, d_model), context=22, seqpos=(2, None))
    cache = load_activation_cache(folder)
    config = TopKTrainingConfig(
        width=48, k=4, training_tokens=12_000, batch_size=200, lr=2e-2, dead_window_tokens=4000,
        norm_estimate_batches=2, mixing_buffer_tokens=2000, model_batch=10, seed=0,
    )  # fmt: skip
    dataset = token_rows(200, 22, tiny_llama.cfg.d_vocab)
    return train_topk_sae(tiny_llama, dataset, hook_name=HOOK, config=config, cache=cache)


def explained_variance(sae, x: torch.Tensor) -> float:
    with torch.no_grad():
        recon = sae.decode(sae.encode(x))
    return float(1 - (x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def test_topk_sae_trained_from_a_cache_recovers_a_planted_sparse_signal(planted_sae, tiny_llama):
    fresh = planted_activations(500, tiny_llama.cfg.d_model, sample_seed=99)  # never trained on
    assert planted_sae.sample_tokens == 4000  # every cached row (fewer than the 256 sampled)
    assert explained_variance(planted_sae.sae, fresh) > 0.9
    summary = planted_sae.summary()
    assert summary["epochs_over_cache"] == 3.0  # 12,000 tokens over a cache of 4,000
    assert summary["dead_feature_window"] == 20 and summary["n_batches_for_norm_estimate"] == 2


def test_folding_leaves_the_reconstruction_unchanged(planted_sae, tiny_llama):
    x = planted_activations(300, tiny_llama.cfg.d_model, sample_seed=5)
    sae = copy.deepcopy(planted_sae.sae)
    with torch.no_grad():  # make the decoder norms far from 1, compensated in the encoder
        scale = torch.linspace(0.3, 3.0, sae.cfg.d_sae)
        sae.W_dec.mul_(scale[:, None])
        sae.W_enc.div_(scale[None, :])
        before = sae.decode(sae.encode(x))
        fold_sae(sae)
        after = sae.decode(sae.encode(x))
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(sae.cfg.d_sae), rtol=0, atol=1e-6)


def test_folding_a_norm_scaling_factor_reads_raw_activations(planted_sae, tiny_llama):
    x = planted_activations(300, tiny_llama.cfg.d_model, sample_seed=6)
    sae = copy.deepcopy(planted_sae.sae)
    factor = 0.37  # as if it had been trained on x * factor
    with torch.no_grad():
        before = sae.decode(sae.encode(x * factor)) / factor
        fold_sae(sae, norm_scaling_factor=factor)
        after = sae.decode(sae.encode(x))
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="norm_scaling_factor must be a number > 0, got -1.0"):
        fold_sae(sae, norm_scaling_factor=-1.0)


def test_training_config_errors_name_the_bad_value():
    with pytest.raises(ValueError, match=r"training_tokens=100 is less than one batch \(4096\)"):
        TopKTrainingConfig(training_tokens=100)
    with pytest.raises(ValueError, match="k=80 is more than the width 64"):
        TopKTrainingConfig(width=64, k=80)
    with pytest.raises(ValueError, match="warmup_fraction must be in"):
        TopKTrainingConfig(warmup_fraction=1.5)


# --- quality targets (benchmarks/sae_quality.py) ---


def test_quality_meets_every_target_or_not_and_summarises_without_densities():
    from tlsteer.sae.quality import QualityTargets, SAEQuality

    def quality(**changes):
        base = dict(
            hook_name=HOOK, explained_variance=0.9, explained_variance_per_token=0.912345, l0=64.0,
            dead_share=0.049, ce_loss_score=0.97, added_loss=0.01, loss_clean=1.0, loss_with_sae=1.01,
            loss_zero_ablation=2.0, n_tokens=10, n_loss_tokens=9, n_texts=2, skip_first=1,
            densities=torch.zeros(4),
        )  # fmt: skip
        return SAEQuality(**{**base, **changes})

    assert quality().meets()  # every target met exactly at its bound
    for change in (
        {"explained_variance": 0.8999},
        {"l0": 64.5},
        {"dead_share": 0.05},
        {"ce_loss_score": 0.969},
    ):
        assert not quality(**change).meets(), change
    assert quality(l0=70.0).meets(QualityTargets(l0_max=80))
    row = quality().to_dict()
    assert "densities" not in row and row["explained_variance_per_token"] == 0.9123 and row["n_tokens"] == 10
    assert QualityTargets().to_dict() == {
        "explained_variance": 0.9, "l0_max": 64, "dead_share_max": 0.05, "ce_loss_score": 0.97,
    }  # fmt: skip
