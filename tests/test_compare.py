"""The feature-vs-CAA engine on tiny models: contrasts, calibration, perplexity and the A/B cells."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from tests.conftest import TOY_CLASS_WORDS, toy_class_dataset
from tlsteer.data import ABItem, ContrastPair, chat_prompt
from tlsteer.eval.ab import ab_eval, ab_scores, question_end
from tlsteer.eval.budget import kl_stats
from tlsteer.eval.prefix_generation import perplexities
from tlsteer.experiments.ab_task import ABTask, run_ab_task, steered_ab_scores
from tlsteer.experiments.cells import UNSTEERED, Interval, calibrate_method
from tlsteer.experiments.comparison_config import ComparisonConfig
from tlsteer.experiments.comparison_result import ComparisonResult
from tlsteer.experiments.contrasts import ContrastReps, contrast_from_pairs
from tlsteer.experiments.feature_vs_caa import applicable_methods, feature_vs_caa
from tlsteer.experiments.methods import METHODS, Method, build_methods
from tlsteer.extract import read_activations
from tlsteer.positions import Positions
from tlsteer.read import Read
from tlsteer.sae.selection import feature_stats
from tlsteer.steering import Steering
from tlsteer.tokens import tokenize
from tlsteer.vector import SteeringVector

HOOK = "blocks.1.hook_resid_post"
NEUTRAL = ["Water boils at 100 degrees.", "The Nile flows north.", "Mix oil and vinegar well.", "Hi there"]
ITEMS = [
    ABItem(f"Pick one {i}?\n (A) yes\n (B) no", *(("(A)", "(B)") if i % 2 else ("(B)", "(A)")))
    for i in range(6)
]


@pytest.fixture(scope="module")
def sae(tiny_llama):
    sae = StandardSAE(
        StandardSAEConfig(d_in=tiny_llama.cfg.d_model, d_sae=24, metadata=SAEMetadata(hook_name=HOOK))
    )
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn(24, tiny_llama.cfg.d_model, generator=gen) / 4)
        sae.W_enc.copy_(sae.W_dec.T.clone())
        sae.b_enc.fill_(0.05)
    return sae


def pairs(model, n=6):
    out = []
    for item in ITEMS[:n]:
        pos, neg = (chat_prompt(model, item.question, a) for a in (item.matching, item.not_matching))
        out.append(ContrastPair(pos, neg, read_index=-2))
    return out


def test_perplexities_equal_one_at_a_time(tiny_llama):
    prompts = [tokenize(tiny_llama, t) for t in ("hello there", "a", "what is it now")]
    new = [[5, 6, 7], [8], [9, 10]]
    batched = perplexities(tiny_llama, prompts, new, batch_size=2)
    alone = [float(perplexities(tiny_llama, [p], [n])[0]) for p, n in zip(prompts, new, strict=True)]
    np.testing.assert_allclose(batched, alone, rtol=1e-4)


def test_contrast_from_pairs_reads_each_side_at_its_letter(tiny_llama, sae):
    data = pairs(tiny_llama)
    reps = contrast_from_pairs(tiny_llama, sae, data, HOOK, batch_size=4)
    pos = read_activations(tiny_llama, [p.positive for p in data], [HOOK], read=Read.at(-2))[HOOK]
    neg = read_activations(tiny_llama, [p.negative for p in data], [HOOK], read=Read.at(-2))[HOOK]
    torch.testing.assert_close(reps.raw_pos, pos, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(reps.raw_neg, neg, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(reps.feat_pos, sae.encode(pos), atol=1e-4, rtol=1e-4)
    assert reps.paired


def test_calibration_meets_each_budget_and_reports_its_kl(tiny_llama):
    d = torch.randn(tiny_llama.cfg.d_model, generator=torch.Generator().manual_seed(2))
    method = Method("caa", "vector", SteeringVector({HOOK: d / d.norm()}), scale=10.0, hook_name=HOOK)
    cal = calibrate_method(tiny_llama, method, NEUTRAL, [0.05, 0.2])
    for budget, row in cal.items():
        assert row["reached"] and abs(row["kl_mean"] / budget - 1) <= 0.1
        steering = method.direction.steering(row["strength"] * 10.0, positions=Positions.start_at(1))
        again = kl_stats(tiny_llama, steering, prompts=NEUTRAL, measure_from=1)
        assert row["kl_mean"] == pytest.approx(again.mean) and row["kl_p95"] == pytest.approx(again.p95)
    assert cal[0.05]["strength"] < cal[0.2]["strength"]
    # a budget the method cannot spend within its strength range is reported, not hidden
    weak = Method("caa", "vector", method.direction, scale=0.01, hook_name=HOOK)
    assert not calibrate_method(tiny_llama, weak, NEUTRAL, [0.2])[0.2]["reached"]
    prompt = Method("prompting", "prompt", prefix="Talk like a pirate.", hook_name=HOOK)
    measured = calibrate_method(tiny_llama, prompt, NEUTRAL, [0.1, 0.5])
    direct = kl_stats(tiny_llama, Steering.from_prompt("Talk like a pirate."), prompts=NEUTRAL).mean
    assert measured[0.1]["kl_mean"] == measured[0.5]["kl_mean"] == pytest.approx(direct)
    assert measured[0.1]["strength"] is None


def test_ab_cells_match_a_direct_ab_eval(tiny_llama, sae):
    data = pairs(tiny_llama)
    reps = contrast_from_pairs(tiny_llama, sae, data, HOOK)
    stats = feature_stats(tiny_llama, sae, NEUTRAL)
    methods = build_methods(
        tiny_llama,
        sae,
        HOOK,
        reps,
        10.0,
        stats,
        instruction="Say yes.",
        methods=["caa", "random", "prompting"],
    )
    cal = {n: calibrate_method(tiny_llama, m, NEUTRAL, [0.05, 0.2]) for n, m in methods.items()}
    cells = run_ab_task(tiny_llama, methods, cal, ITEMS, n_resamples=200, mmlu=ITEMS[::-1])
    assert set(cells) == {
        UNSTEERED,
        ("caa", 0.05),
        ("caa", 0.2),
        ("random", 0.05),
        ("random", 0.2),
        ("prompting", None),
    }
    assert all(key == cell.key for key, cell in cells.items())
    plain = ab_eval(tiny_llama, ITEMS, outside_ab="zero")
    assert cells[UNSTEERED].success.value == pytest.approx(plain.p_matching)
    strength = cal["caa"][0.2]["strength"]
    scale = methods["caa"].scale
    caa = methods["caa"].direction.steering(strength * scale, positions=question_end(tiny_llama))
    steered = ab_eval(tiny_llama, ITEMS, caa, outside_ab="zero")
    cell = cells["caa", 0.2]
    assert cell.success.value == pytest.approx(steered.p_matching)
    assert cell.success.low <= cell.success.value <= cell.success.high
    assert cell.strength == strength
    # MMLU: the same items read as accuracy, in every cell, with the change from unsteered
    correct = [float(x.p_matching > 0.5) for x in steered.scores[::-1]]
    assert cell.mmlu is not None and cell.mmlu.value == pytest.approx(np.mean(correct))
    base = np.mean([float(x.p_matching > 0.5) for x in plain.scores])
    assert cell.mmlu_change == pytest.approx(np.mean(correct) - base)
    assert cells[UNSTEERED].mmlu_change is None and cells[UNSTEERED].kl_mean is None


def test_steered_ab_scores_equal_each_steering_run_alone(tiny_llama, sae):
    data = pairs(tiny_llama)
    reps = contrast_from_pairs(tiny_llama, sae, data, HOOK)
    stats = feature_stats(tiny_llama, sae, NEUTRAL)
    methods = build_methods(
        tiny_llama, sae, HOOK, reps, 10.0, stats, instruction="Say yes.", methods=["caa", "prompting"]
    )
    methods["clamp"] = Method(
        "clamp",
        "clamp",
        features=(0, 3),
        off_features=(5,),
        typical=torch.tensor([1.0, 2.0]),
        sae=sae,
        hook_name=HOOK,
    )
    other = SteeringVector({"blocks.0.hook_resid_post": torch.ones(tiny_llama.cfg.d_model)})
    steerings = {
        "caa": methods["caa"].at(0.3),
        "clamp": methods["clamp"].at(2.0),  # an SAE edit, not a vector
        "prompting": methods["prompting"].at(None),  # a prefix: runs on its own
        "two_hooks": Steering.from_vectors([(methods["caa"].direction, 2.0), (other, 0.5)]),  # on its own
        "unsteered": Steering(),
    }
    got = steered_ab_scores(tiny_llama, ITEMS, steerings, outside_ab="zero")
    assert list(got) == list(steerings)
    for key, steering in steerings.items():
        items = [ABItem(steering.instruct(i.question), i.matching, i.not_matching) for i in ITEMS]
        alone = ab_scores(
            tiny_llama, items, steering.without_prefix().at(question_end(tiny_llama)), outside_ab="zero"
        )
        np.testing.assert_allclose(
            [s.p_matching for s in got[key]], [s.p_matching for s in alone], atol=1e-4, err_msg=key
        )
    # the steerings do differ from each other, so the check above can fail
    assert (
        max(abs(a.p_matching - b.p_matching) for a, b in zip(got["caa"], got["unsteered"], strict=True))
        > 1e-3
    )
    assert (
        max(abs(a.p_matching - b.p_matching) for a, b in zip(got["clamp"], got["unsteered"], strict=True))
        > 1e-3
    )


def test_feature_vs_caa_writes_json_and_figure(tiny_llama, sae, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tlsteer")
    task = ABTask("toy", pairs(tiny_llama), ITEMS, instruction="Say yes.")
    config = ComparisonConfig(
        methods=["caa", "feature_full", "random", "prompting"], budgets=[0.1], n_resamples=200
    )
    result = feature_vs_caa(tiny_llama, sae, task, config, neutral=NEUTRAL, mmlu=ITEMS[:4], out_dir=tmp_path)
    assert isinstance(result, ComparisonResult) and result.kind == "ab" and result.dataset == "toy"
    assert list(result.cells) == [
        UNSTEERED,
        ("caa", 0.1),
        ("feature_full", 0.1),
        ("random", 0.1),
        ("prompting", None),
    ]
    assert result.config == config  # the methods it was given are the methods that ran
    assert (result.n_train_pairs, result.n_test_items, result.n_neutral) == (6, 6, 4)
    # progress is logged at INFO (not WARNING), stage by stage, under the tlsteer logger
    stages = [r.getMessage() for r in caplog.records if r.name == "tlsteer.experiments.feature_vs_caa"]
    assert {r.levelno for r in caplog.records if r.name.startswith("tlsteer")} == {logging.INFO}
    assert any(m.endswith("toy: 4 methods built") for m in stages) and stages[-1].endswith("toy: done")
    # the JSON it wrote is the committed schema, and loads back equal
    path = tmp_path / "feature_vs_caa_toy.json"
    saved = json.loads(path.read_text())
    assert saved["cells"]["caa@0.1"]["p_matching"] == result.cells["caa", 0.1].success.to_dict()
    assert set(saved["cells"]) == {"unsteered", "caa@0.1", "feature_full@0.1", "random@0.1", "prompting"}
    assert saved["settings"]["methods"] == ["caa", "feature_full", "random", "prompting"]
    assert saved["cells"]["prompting"]["strength"] is None and "strength" not in saved["cells"]["unsteered"]
    assert ComparisonResult.load(path) == result
    again = result.save(tmp_path / "again" / "toy.json")
    assert again.read_text() == path.read_text()
    assert (tmp_path / "feature_vs_caa_toy.png").stat().st_size > 0
    assert not (tmp_path / "feature_vs_caa_toy_transfer.png").exists()  # an A/B task has no classes
    with pytest.raises(TypeError, match="ClassDataset, an ABTask or an AnalogyTask"):
        feature_vs_caa(tiny_llama, sae, ["not", "a", "task"], neutral=NEUTRAL)
    with pytest.raises(
        TypeError, match=r"config must be a ComparisonConfig .*, got dict \{'budgets': \[0.1\]\}"
    ):
        feature_vs_caa(tiny_llama, sae, task, {"budgets": [0.1]}, neutral=NEUTRAL)
    with pytest.raises(ValueError, match="at least 2 training pairs"):
        ABTask("tiny", pairs(tiny_llama)[:1], ITEMS)


def test_methods_that_do_not_apply_are_refused_not_dropped(tiny_llama, sae):
    """mean_centred (no class means) and prompting (no instruction) used to vanish from an A/B or
    analogy run without a word; now they are refused, naming the method and what is valid."""
    task = ABTask("toy", pairs(tiny_llama), ITEMS, instruction="Say yes.")
    bare = ABTask("bare", pairs(tiny_llama), ITEMS)
    valid = (
        "valid for ABTask 'toy': 'caa', 'feature_full', 'feature_topk', 'feature_output', 'single_feature'"
    )
    with pytest.raises(
        ValueError,
        match=rf"method 'mean_centred' does not apply to ABTask 'toy': it has two sides .*; {valid}",
    ):
        feature_vs_caa(
            tiny_llama, sae, task, ComparisonConfig(methods=["caa", "mean_centred"]), neutral=NEUTRAL
        )
    with pytest.raises(
        ValueError, match="method 'prompting' does not apply to ABTask 'bare': it has no instruction"
    ):
        feature_vs_caa(tiny_llama, sae, bare, ComparisonConfig(methods=["caa", "prompting"]), neutral=NEUTRAL)
    # settings only a class set reads are refused for an A/B task
    with pytest.raises(
        ValueError, match="config.targets applies to a ClassDataset only, not to ABTask 'toy'"
    ):
        feature_vs_caa(tiny_llama, sae, task, ComparisonConfig(targets=["a"]), neutral=NEUTRAL)
    with pytest.raises(ValueError, match="instructions= applies to a ClassDataset only, not to ABTask 'toy'"):
        feature_vs_caa(tiny_llama, sae, task, instructions={"a": "Be a."}, neutral=NEUTRAL)
    with pytest.raises(
        ValueError, match="split_seed applies to a ClassDataset only; ABTask 'toy' has no split"
    ):
        feature_vs_caa(tiny_llama, sae, task, ComparisonConfig(split_seed=1), neutral=NEUTRAL)
    # the default is every method that applies
    assert "mean_centred" not in applicable_methods(task) and "prompting" in applicable_methods(task)
    assert "prompting" not in applicable_methods(bare)
    codes = {"codes_add", "codes_bottleneck"}
    assert set(applicable_methods(task)) == set(METHODS) - {"mean_centred"} - codes
    assert codes <= set(applicable_methods(task, codebook=object()))
    with pytest.raises(ValueError, match="method 'codes_add' does not apply .* pass codebook="):
        feature_vs_caa(tiny_llama, sae, task, ComparisonConfig(methods=["caa", "codes_add"]), neutral=NEUTRAL)


def test_contrast_reps_use_class_means_for_mean_centred():
    reps = ContrastReps.from_rows(
        torch.ones(2, 3),
        torch.zeros(4, 3),
        torch.ones(2, 5),
        torch.zeros(4, 5),
        hook_name=HOOK,
        dictionary="x",
    )
    assert torch.equal(reps.raw_difference(), torch.ones(3)) and torch.equal(
        reps.feature_difference(), torch.ones(5)
    )


def test_feature_vs_caa_on_a_class_set_steers_each_target_and_judges_among_all(tiny_llama, sae):
    pytest.importorskip("sentence_transformers", reason="the judge extra is not installed")
    ds = toy_class_dataset()
    words = TOY_CLASS_WORDS
    config = ComparisonConfig(
        methods=["caa", "mean_centred", "random", "prompting"],
        budgets=[0.1],
        n_prompts=4,
        targets=["calm", "loud"],
        seeds=[0, 1],
        max_new_tokens=3,
        n_resamples=200,
        n_random=2,
        n_calibration_prompts=4,
    )
    result = feature_vs_caa(
        tiny_llama,
        sae,
        ds,
        config,
        instructions={"calm": "Be calm.", "loud": "Be loud."},
        prompts=["Say something.", "Tell a story.", "Hello?", "What now?"],
        neutral=NEUTRAL,
    )
    assert result.kind == "class_set" and result.targets == ("calm", "loud")
    assert result.classes == tuple(words) and result.config == config
    assert set(result.cells) == {
        UNSTEERED,
        ("caa", 0.1),
        ("mean_centred", 0.1),
        ("random", 0.1),
        ("prompting", None),
    }
    # the paired design: every target on every prompt; a unit's outcome is its mean over seeds
    assert result.units == tuple((t, p) for t in ("calm", "loud") for p in range(4))
    for key, cell in result.cells.items():
        assert cell.n_generations == 16, key  # 2 targets x 4 prompts x 2 seeds
        assert cell.transfer is not None and set(cell.transfer) == {"calm", "loud"}
        assert set(cell.transfer["calm"]) <= {*words, "other"}
        assert cell.success.low <= cell.success.value <= cell.success.high
        assert cell.outcomes is not None and len(cell.outcomes) == 8
        assert np.mean(cell.outcomes) == pytest.approx(cell.success.value)
    assert result.cells["caa", 0.1].cosine == pytest.approx(1.0, abs=1e-5)
    assert result.cells["prompting", None].cosine is None
    assert result.config.calibration == "reply"
    assert result.cells[UNSTEERED].selectivity == Interval(0.0, 0.0, 0.0)
    strength = result.cells["caa", 0.1].strength
    assert isinstance(strength, tuple) and len(strength) == 2  # one per target
    assert result.cells["prompting", None].strength == (None, None)
    assert set(result.examples) == set(result.cells) - {UNSTEERED}
    assert all(len(texts) == 2 for texts in result.examples["caa", 0.1].values())
    assert result.to_dict()["settings"]["split_seed"] == 0  # the training split, as before split_seed existed
    # a class-set result survives a JSON round trip, and its frame has one row per cell
    assert ComparisonResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    frame = result.to_frame()
    assert len(frame) == len(result.cells) and list(frame["success"]) == [
        c.success.value for c in result.cells.values()
    ]
    with pytest.raises(
        ValueError, match="targets must be classes of 'toy_classes', got 'nope'; classes: 'calm'"
    ):
        feature_vs_caa(
            tiny_llama, sae, ds, ComparisonConfig(methods=["caa"], targets=["calm", "nope"]), neutral=NEUTRAL
        )


def test_code_methods_add_the_rising_codes_and_force_the_top_ones(tiny_llama, sae):
    """Planted code firing rates: codes 3 and 5 rise, 7 falls; codes_add is their rows weighted by
    the rise, codes_bottleneck forces the top k // 2 of them (here code 3) and has no strength."""
    from tlsteer.codebook import Codebook

    d = tiny_llama.cfg.d_model
    book = Codebook(torch.randn(10, d, generator=torch.Generator().manual_seed(2)), k=2, hook_name=HOOK)
    pos, neg = torch.zeros(4, 10), torch.zeros(4, 10)
    pos[:, 3], pos[:2, 5], neg[:, 7] = 1.0, 1.0, 1.0
    raw = torch.randn(8, d, generator=torch.Generator().manual_seed(3))
    reps = ContrastReps.from_rows(
        raw[:4], raw[4:], torch.rand(4, 24), torch.rand(4, 24), hook_name=HOOK, dictionary="x"
    )
    code_reps = ContrastReps.from_rows(raw[:4], raw[4:], pos, neg, hook_name=HOOK, dictionary="book")
    stats = feature_stats(tiny_llama, sae, NEUTRAL)
    built = build_methods(
        tiny_llama,
        sae,
        HOOK,
        reps,
        1.0,
        stats,
        methods=["codes_add", "codes_bottleneck"],
        codebook=book,
        code_reps=code_reps,
    )
    want = 1.0 * book.vectors[3] / 2 + 0.5 * book.vectors[5] / 2
    got = built["codes_add"].direction[HOOK]
    torch.testing.assert_close(got, want / want.norm())
    bottleneck = built["codes_bottleneck"]
    assert bottleneck.features == (3,) and not bottleneck.has_strength and bottleneck.kind == "fixed"
    x = torch.randn(1, 5, d)
    steered = bottleneck.at(None)
    assert steered.edits and steered.edits[0][0] == HOOK
    torch.testing.assert_close(x + steered.edits[0][1](x), book.reconstruct(x, [3]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="need codebook= .* and code_reps="):
        build_methods(tiny_llama, sae, HOOK, reps, 1.0, stats, methods=["codes_add"])


def test_the_codebook_arm_joins_a_class_set_comparison(tiny_llama, sae):
    pytest.importorskip("sentence_transformers", reason="the judge extra is not installed")
    from tlsteer.codebook import Codebook

    book = Codebook(
        torch.randn(16, tiny_llama.cfg.d_model, generator=torch.Generator().manual_seed(5)),
        k=4,
        hook_name=HOOK,
    )
    config = ComparisonConfig(
        methods=["caa", "codes_add", "codes_bottleneck"],
        budgets=[0.1],
        n_prompts=3,
        targets=["calm", "loud"],
        max_new_tokens=3,
        n_resamples=100,
        n_calibration_prompts=3,
    )
    result = feature_vs_caa(
        tiny_llama,
        sae,
        toy_class_dataset(),
        config,
        prompts=["Say something.", "Tell a story.", "Hello?"],
        neutral=NEUTRAL,
        codebook=book,
        calibration_prompts=["One.", "Two.", "Three."],
    )
    assert set(result.cells) == {UNSTEERED, ("caa", 0.1), ("codes_add", 0.1), ("codes_bottleneck", None)}
    bottleneck = result.cells["codes_bottleneck", None]
    assert bottleneck.strength == (None, None) and bottleneck.kl_mean > 0
    assert result.cells["codes_add", 0.1].cosine is not None
    assert len(result.cells["codes_bottleneck", None].outcomes or ()) == 6


class LengthJudge:
    """A deterministic stand-in judge: the class is the text's length modulo K."""

    classes = ("a", "b", "c")

    def predict(self, texts):
        return [self.classes[len(t) % 3] for t in texts]


def test_class_cells_equal_a_plain_generation_loop(tiny_llama):
    from tlsteer.decode import generate_tokens
    from tlsteer.experiments.class_task import run_class_task

    hook = HOOK
    gen = torch.Generator().manual_seed(3)
    methods, cal = {}, {}
    for t in ("a", "b"):
        d = torch.randn(tiny_llama.cfg.d_model, generator=gen)
        direction = SteeringVector({hook: d / d.norm()})
        methods[t] = {
            "caa": Method("caa", "vector", direction, scale=10.0, hook_name=hook),
            "prompting": Method("prompting", "prompt", prefix=f"Be {t}.", hook_name=hook),
        }
        cal[t] = {
            "caa": {0.1: {"strength": 0.3, "kl_mean": 0.1, "kl_p95": 0.2, "reached": True}},
            "prompting": {0.1: {"strength": None, "kl_mean": 0.2, "kl_p95": 0.4, "reached": False}},
        }
    prompts = {"a": ["Say something.", "Hello?"], "b": ["Tell a story.", "What now?"]}
    seeds = [0, 1]
    cells, examples, units = run_class_task(
        tiny_llama,
        LengthJudge(),
        methods,
        cal,
        prompts,
        seeds=seeds,
        max_new_tokens=5,
        n_resamples=200,
        max_rows=3,
    )

    def plain(t, steering):
        rows = [(p, s) for s in seeds for p in prompts[t]]
        texts = [p if not steering.prefix else f"{steering.prefix}\n\n{p}" for p, _ in rows]
        out = generate_tokens(
            tiny_llama,
            texts,
            steering.without_prefix().at(Positions.last()),
            max_new_tokens=5,
            do_sample=True,
            temperature=0.7,
            seed=[s for _, s in rows],
            chat=True,
        )
        labels = LengthJudge().predict(list(out.texts))
        plain_ids = [tokenize(tiny_llama, chat_prompt(tiny_llama, p)) for p, _ in rows]
        return [lab == t for lab in labels], perplexities(
            tiny_llama, plain_ids, [list(n) for n in out.new_tokens]
        )

    assert set(cells) == {UNSTEERED, ("caa", 0.1), ("prompting", None)}
    assert set(examples) == {("caa", 0.1), ("prompting", None)}
    for key in (("caa", 0.1), ("prompting", None)):
        hits, ppl = [], []
        for t in ("a", "b"):
            name = key[0]
            steering = methods[t][name].at(0.3 if name == "caa" else None)
            h, p = plain(t, steering)
            hits += h
            ppl += list(p)
        cell = cells[key]
        assert cell.success.value == pytest.approx(np.mean(hits)), key
        assert cell.perplexity is not None
        assert cell.perplexity.value == pytest.approx(float(np.exp(np.mean(np.log(ppl)))), rel=1e-4)
        assert cell.n_generations == 8
    assert cells["caa", 0.1].strength == (0.3, 0.3) and cells["caa", 0.1].kl_mean == pytest.approx(0.1)
    # the mapping form gives each target its own prompts: units index the concatenated prompts
    assert units == (("a", 0), ("a", 1), ("b", 2), ("b", 3))
    assert cells["prompting", None].reached is False
