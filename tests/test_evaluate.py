"""Evaluation: A/B results and accuracy, KL on neutral text, sweeps, steerability, competition,
calibration and vector diagnostics, each against a plain reference loop or exact algebra."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from tlsteer import Positions, Steering, SteeringVector
from tlsteer.contrast import ContrastActivations
from tlsteer.data import ABItem, chat_prompt, load_ab_items
from tlsteer.eval.ab import (
    ABResult,
    ABScore,
    ab_accuracy,
    ab_eval,
    ab_scores,
    kl_on_neutral,
    question_end,
    tokens_after_question,
)
from tlsteer.eval.budget import kl_stats
from tlsteer.eval.cached import cached_ab_scores
from tlsteer.eval.diagnostics import (
    cosine_matrix,
    layer_diagnostics,
    normalize_to_mean_norm,
    pair_cosines,
    projection_accuracy,
    relative_norms,
    split_activations,
    steerability,
)
from tlsteer.eval.sweeps import (
    ITEM_COLUMNS,
    SUMMARY_COLUMNS,
    calibrate_multiplier,
    compete,
    residual_norms,
    summarize_sweep,
    sweep,
    sweep_items,
    to_json,
)
from tlsteer.eval.token_view import token_view
from tlsteer.tokens import tokenize
from tlsteer.vector import VectorMetadata

HOOK = "blocks.1.hook_resid_post"
HOOK2 = "blocks.2.hook_resid_post"
ITEMS = [
    ABItem(f"Pick one {i}?\n (A) yes\n (B) no", *(("(A)", "(B)") if i % 2 else ("(B)", "(A)")))
    for i in range(6)
]
NEUTRAL = ["Water boils at 100 degrees.", "The Nile flows north.", "Mix oil and vinegar.", "Hi"]


def direction(seed: int, scale: float = 1.0) -> torch.Tensor:
    d = torch.randn(32, generator=torch.Generator().manual_seed(seed))
    return scale * d / d.norm()


def vector(*hooks: str, seed: int = 0, scale: float = 1.0) -> SteeringVector:
    return SteeringVector({h: direction(seed + i, scale) for i, h in enumerate(hooks)})


def caa(model, vec: SteeringVector, multiplier: float) -> Steering:
    """The old A/B default: steer from the end of the question (CAA's positions)."""
    return vec.steering(multiplier, positions=question_end(model))


# -- ab_eval / ab_accuracy ------------------------------------------------------------------------


def test_ab_result_summary_algebra():
    scores = (ABScore(0.75, 0.5, 1.0), ABScore(0.25, 0.25, -3.0), ABScore(0.0, 0.0, float("nan")))
    result = ABResult(scores)
    assert result.scores == scores
    assert result.n_items == 3
    assert result.p_matching == pytest.approx(1.0 / 3, abs=1e-15)
    assert result.n_matching == 1
    assert result.letter_mass == pytest.approx(0.25, abs=1e-15)
    assert result.logit_diff == -1.0  # the NaN item is left out of the mean
    assert math.isnan(ABResult((ABScore(0.0, 0.0, float("nan")),)).logit_diff)
    with pytest.raises(ValueError, match="needs at least one ABScore"):
        ABResult(())


def test_ab_eval_keeps_every_item(tiny):
    vec = vector(HOOK, scale=6.0)
    plain = ab_eval(tiny, ITEMS, batch_size=4)
    steered = ab_eval(tiny, ITEMS, caa(tiny, vec, 1.0), batch_size=4)
    assert plain.scores == tuple(ab_scores(tiny, ITEMS, batch_size=4))
    assert steered.scores == tuple(ab_scores(tiny, ITEMS, caa(tiny, vec, 1.0), batch_size=4))
    for result in (plain, steered):
        p = [s.p_matching for s in result.scores]
        assert result.p_matching == pytest.approx(sum(p) / len(p), abs=1e-12)
        assert result.n_matching == sum(x > 0.5 for x in p)
        assert result.letter_mass == pytest.approx(np.mean([s.letter_mass for s in result.scores]), abs=1e-12)
        assert result.logit_diff == pytest.approx(np.mean([s.logit_diff for s in result.scores]), abs=1e-6)
    assert abs(plain.logit_diff - steered.logit_diff) > 1e-2
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        ab_eval(tiny, ITEMS, batch_size=0)


def test_ab_accuracy_matches_reference_loop(tiny_llama, tmp_path):
    model = tiny_llama
    raw = [
        {"prompt": it.question, "correct": it.matching, "incorrect": it.not_matching, "topic": "x"}
        for it in ITEMS
    ]
    path = tmp_path / "mmlu.json"
    path.write_text(json.dumps(raw))
    items = load_ab_items(path)
    right, p_correct = [], []
    a_id, b_id = tokenize(model, "(A")[-1], tokenize(model, "(B")[-1]
    for it in items:
        tokens = torch.tensor([tokenize(model, chat_prompt(model, it.question, "("))])
        with torch.no_grad():
            probs = model(tokens)[0, -1].softmax(-1)
        p_a, p_b = float(probs[a_id]), float(probs[b_id])
        p_c, p_i = (p_a, p_b) if it.matching == "(A)" else (p_b, p_a)
        right.append(p_c > p_i)
        p_correct.append(p_c / (p_c + p_i))
    acc = ab_accuracy(model, items, batch_size=4)
    assert acc.n_items == len(items)
    assert acc.n_correct == sum(right)
    assert acc.accuracy == sum(right) / len(right)
    assert acc.p_correct == pytest.approx(np.mean(p_correct), abs=1e-5)
    assert 0 < acc.n_correct < len(items)  # the reference is not trivially all or none


def test_question_end_is_the_old_default_from_the_last_question_token(tiny):
    """question_end(model) steers from the question's last token on, as the old A/B default did."""
    vec = vector(HOOK, scale=6.0)
    n_after = tokens_after_question(tiny)
    got = ab_scores(tiny, ITEMS, caa(tiny, vec, 1.0), batch_size=4)
    for item, score in zip(ITEMS, got, strict=True):
        ids = tokenize(tiny, chat_prompt(tiny, item.question, "("))
        first = len(ids) - n_after - 1

        def steer(act, hook, first=first):
            out = act.clone()
            out[:, first:] += vec[HOOK]
            return out

        with torch.no_grad():
            logits = tiny.run_with_hooks(torch.tensor([ids]), fwd_hooks=[(HOOK, steer)])[0, -1]
        m_id = tokenize(tiny, "(" + item.matching[1])[-1]
        o_id = tokenize(tiny, "(" + item.not_matching[1])[-1]
        assert score.logit_diff == pytest.approx(float(logits[m_id] - logits[o_id]), abs=1e-4)
    # any positions count in each item's own tokens: a left-padded batch equals each item alone
    for positions in (Positions.all(), Positions.start_at(5), Positions.at([2, 6]), question_end(tiny)):
        steering = vec.steering(1.0, positions=positions)
        batched = ab_scores(tiny, ITEMS, steering, batch_size=4)
        alone = ab_scores(tiny, ITEMS, steering, batch_size=1)
        for a, b in zip(batched, alone, strict=True):
            assert a.logit_diff == pytest.approx(b.logit_diff, abs=1e-4)


def test_ab_scores_with_a_prompt_prefix_equals_the_questions_prefixed_by_hand(tiny):
    prefix = "Answer honestly."
    by_hand = [ABItem(f"{prefix}\n\n{it.question}", it.matching, it.not_matching) for it in ITEMS]
    prompted = Steering.from_prompt(prefix)
    got = ab_scores(tiny, ITEMS, prompted, batch_size=4)
    assert got == ab_scores(tiny, by_hand, batch_size=4)
    plain = ab_scores(tiny, ITEMS, batch_size=4)
    assert max(abs(a.logit_diff - b.logit_diff) for a, b in zip(got, plain, strict=True)) > 1e-3
    vec = vector(HOOK, scale=6.0)
    for positions in (question_end(tiny), Positions.all(), Positions.start_at(5)):
        steering = vec.steering(1.0, positions=positions)
        with_prefix = ab_scores(tiny, ITEMS, prompted + steering, batch_size=4)
        assert with_prefix == ab_scores(tiny, by_hand, steering, batch_size=4)
    assert ab_eval(tiny, ITEMS, prompted, batch_size=4).scores == tuple(got)


# -- KL on neutral text ---------------------------------------------------------------------------


def reference_kl(model, vec_dir, prompts, hook=HOOK, first=0):
    """One prompt at a time, a hand-written hook, torch.nn.functional.kl_div."""
    values = []
    for prompt in prompts:
        tokens = torch.tensor([tokenize(model, prompt)])

        def steer(act, hook):
            out = act.clone()
            out[:, first:] += vec_dir
            return out

        with torch.no_grad():
            clean = model(tokens).log_softmax(-1)
            steered = model.run_with_hooks(tokens, fwd_hooks=[(hook, steer)]).log_softmax(-1)
        kl = F.kl_div(steered, clean, log_target=True, reduction="none").sum(-1)[0]
        values.extend(kl[first:].tolist())
    return sum(values) / len(values)


def test_kl_on_neutral_matches_hand_computation(tiny):
    vec = vector(HOOK, scale=5.0)
    expected = reference_kl(tiny, 2.0 * vec[HOOK], NEUTRAL)
    got = kl_on_neutral(tiny, vec.steering(2.0), NEUTRAL, batch_size=3)
    assert expected > 1e-3
    assert got == pytest.approx(expected, rel=1e-4)
    assert kl_on_neutral(tiny, vec.steering(0.0), NEUTRAL) == 0.0


def test_kl_on_neutral_from_a_position(tiny_llama):
    vec = vector(HOOK, scale=5.0)
    expected = reference_kl(tiny_llama, vec[HOOK], NEUTRAL, first=5)
    # the old min_token_index=5: steer and measure from position 5
    steering = vec.steering(1.0, positions=Positions.make(5))
    got = kl_on_neutral(tiny_llama, steering, NEUTRAL, measure_from=5, batch_size=2)
    assert got == pytest.approx(expected, rel=1e-4)
    with pytest.raises(
        ValueError, match=r"measure_from=40 leaves no position.*has 27 tokens \(valid: 0\.\.26\)"
    ):
        kl_on_neutral(tiny_llama, vec.steering(1.0, positions=Positions.make(40)), NEUTRAL, measure_from=40)


# -- residual norms and sweeps --------------------------------------------------------------------


def test_residual_norms_match_plain_loop(tiny):
    hooks = [HOOK, HOOK2]
    got = residual_norms(tiny, NEUTRAL, hooks, batch_size=3)
    for hook in hooks:
        norms = []
        for prompt in NEUTRAL:
            _, cache = tiny.run_with_cache(torch.tensor([tokenize(tiny, prompt)]), names_filter=[hook])
            norms.append(cache[hook][0, 1:].norm(dim=-1))
        assert got[hook] == pytest.approx(float(torch.cat(norms).mean()), rel=1e-5)
    if not tiny.cfg.tokenizer_prepends_bos:  # with <bos> first, no prompt is a single token
        with pytest.raises(ValueError, match="every prompt has a single token"):
            residual_norms(tiny, ["a", "b"], hooks)
    with pytest.raises(KeyError, match="'blocks.9.hook_resid_post' not in model"):
        residual_norms(tiny, NEUTRAL, ["blocks.9.hook_resid_post"])


def test_sweep_matches_loop_over_ab_eval(tiny_llama):
    vec = vector(HOOK, HOOK2, scale=6.0)
    mults = [-2.0, 0, 1.5]
    df = sweep(tiny_llama, ITEMS, vec, [1, 2], mults, batch_size=4)
    assert list(df.columns) == list(SUMMARY_COLUMNS)
    assert len(df) == 6
    for row in df.itertuples():
        ref = ab_eval(
            tiny_llama, ITEMS, caa(tiny_llama, vec.select([row.layer]), row.multiplier), batch_size=4
        )
        assert row.multiplier_abs == row.multiplier
        assert row.hook == f"blocks.{row.layer}.hook_resid_post"
        assert row.p_matching == pytest.approx(ref.p_matching, abs=1e-4)  # the cached engine
        assert row.n_matching == ref.n_matching
        assert row.letter_mass == pytest.approx(ref.letter_mass, abs=1e-4)
        assert row.logit_diff == pytest.approx(ref.logit_diff, abs=1e-4)
    assert df["logit_diff"].max() - df["logit_diff"].min() > 0.1  # steering moved something


def test_sweep_items_rows_and_summary(tiny_llama):
    vec = vector(HOOK, scale=6.0)
    per_item = sweep_items(tiny_llama, ITEMS, vec, 1, [-1, 2], batch_size=4, engine="full")
    assert list(per_item.columns) == list(ITEM_COLUMNS)
    assert len(per_item) == 2 * len(ITEMS)
    for m in (-1, 2):
        rows = per_item[per_item["multiplier"] == m].sort_values("item")
        ref = ab_scores(tiny_llama, ITEMS, caa(tiny_llama, vec, m), batch_size=4)
        assert rows["p_matching"].tolist() == [s.p_matching for s in ref]
        assert rows["logit_diff"].tolist() == [s.logit_diff for s in ref]
        summary = summarize_sweep(per_item)
        row = summary[summary["multiplier"] == m].iloc[0]
        result = ABResult(tuple(ref))
        assert row["p_matching"] == pytest.approx(result.p_matching, abs=1e-12)
        assert row["n_matching"] == result.n_matching
        assert row["logit_diff"] == pytest.approx(result.logit_diff, abs=1e-12)
    with pytest.raises(KeyError, match=r"lacks columns \['item'\]"):
        summarize_sweep(per_item.drop(columns="item"))


def test_relative_multipliers_are_in_residual_norm_units(tiny_llama):
    vec = vector(HOOK, HOOK2, scale=3.0)
    norms = residual_norms(tiny_llama, NEUTRAL, vec.hooks)
    df = sweep(tiny_llama, ITEMS[:3], vec, [1, 2], [0.25, -0.5], relative=True, norms=norms, batch_size=4)
    for row in df.itertuples():
        expected = row.multiplier * norms[row.hook] / float(vec[row.hook].norm())
        assert row.multiplier_abs == pytest.approx(expected, rel=1e-12)
        ref = ab_eval(tiny_llama, ITEMS[:3], caa(tiny_llama, vec.select([row.layer]), expected), batch_size=4)
        assert row.p_matching == pytest.approx(ref.p_matching, abs=1e-4)
    with pytest.raises(
        ValueError, match=r"relative=True needs the residual norms: pass norms=residual_norms"
    ):
        sweep(tiny_llama, ITEMS, vec, [1], [1.0], relative=True)
    with pytest.raises(KeyError, match="'blocks.2.hook_resid_post' not in norms"):
        sweep(tiny_llama, ITEMS, vec, [2], [1.0], relative=True, norms={HOOK: 1.0})


def test_sweep_errors_name_the_bad_value(tiny_llama):
    vec = vector(HOOK)
    with pytest.raises(KeyError, match=r"layer 3 matches 0 hooks.*vector layers: \[1\]"):
        sweep(tiny_llama, ITEMS, vec, [3], [1.0])
    with pytest.raises(ValueError, match=r"multipliers must be finite numbers, got nan"):
        sweep(tiny_llama, ITEMS, vec, [1], [1.0, float("nan")])
    with pytest.raises(ValueError, match="layer 7 is out of range"):
        sweep(tiny_llama, ITEMS, vec, [7], [1.0])


def test_to_json_round_trip(tmp_path):
    df = pd.DataFrame(
        {"layer": [1, 2], "multiplier": [0.5, -1.0], "n_matching": [3, 4], "logit_diff": [0.1, float("nan")]}
    )
    path = tmp_path / "sweep.json"
    text = to_json(df, path)
    rows = json.loads(path.read_text())
    assert rows == json.loads(text)
    assert rows == [
        {"layer": 1, "multiplier": 0.5, "n_matching": 3, "logit_diff": 0.1},
        {"layer": 2, "multiplier": -1.0, "n_matching": 4, "logit_diff": None},
    ]
    assert isinstance(rows[0]["layer"], int)


# -- steerability ---------------------------------------------------------------------------------


def test_steerability_planted_slopes():
    rng = np.random.default_rng(0)
    planted = {(4, 0): 2.0, (4, 1): -1.0, (4, 2): 0.5, (4, 3): 3.0, (6, 0): -2.0, (6, 1): 1.0}
    mults = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    rows = []
    for (layer, item), slope in planted.items():
        y = slope * mults + rng.normal(0, 0.1, size=mults.size) + item
        rows += [
            {"layer": layer, "item": item, "multiplier": m, "logit_diff": v}
            for m, v in zip(mults, y, strict=True)
        ]
    frame = pd.DataFrame(rows)
    st = steerability(frame)
    for row in st.slopes.itertuples():
        sub = frame[(frame["layer"] == row.layer) & (frame["item"] == row.item)]
        assert row.slope == pytest.approx(np.polyfit(sub["multiplier"], sub["logit_diff"], 1)[0], abs=1e-12)
    s4 = st.slopes[st.slopes["layer"] == 4]["slope"].to_numpy()
    layer4 = st.summary[st.summary["layer"] == 4].iloc[0]
    assert layer4["n_items"] == 4
    assert layer4["anti_steerable"] == 0.25
    assert layer4["mean_slope"] == pytest.approx(s4.mean(), abs=1e-12)
    assert layer4["std_slope"] == pytest.approx(s4.std(ddof=1), abs=1e-12)
    assert st.summary[st.summary["layer"] == 6].iloc[0]["anti_steerable"] == 0.5
    with pytest.raises(KeyError, match=r"missing \['item'\] \(use sweep_items, not sweep\)"):
        steerability(frame.drop(columns="item"))
    with pytest.raises(ValueError, match="unknown x 'scale'; valid: 'multiplier', 'multiplier_abs'"):
        steerability(frame, x="scale")
    with pytest.raises(ValueError, match=r"item \(4, 0\) has 1 distinct multiplier value"):
        steerability(frame[frame["multiplier"] == 0.0])


def test_steerability_from_sweep_and_from_results_agree(tiny_llama):
    vec = vector(HOOK, scale=6.0)
    mults = [-1.0, 0.0, 1.0, 2.0]
    st = steerability(sweep_items(tiny_llama, ITEMS, vec, [1], mults, batch_size=4))
    results = {m: ab_eval(tiny_llama, ITEMS, caa(tiny_llama, vec, m), batch_size=4) for m in mults}
    from_results = steerability(results)
    for i in range(len(ITEMS)):
        ys = [results[m].scores[i].logit_diff for m in mults]
        expected = np.polyfit(mults, ys, 1)[0]
        assert st.slopes[st.slopes["item"] == i]["slope"].item() == pytest.approx(expected, abs=1e-4)
        assert from_results.slopes["slope"][i] == pytest.approx(expected, abs=1e-4)
    assert list(from_results.summary.columns) == ["n_items", "mean_slope", "std_slope", "anti_steerable"]
    assert 0 < st.summary["anti_steerable"].item() < 1  # this vector pushes some items each way


# -- competing vectors and calibration ------------------------------------------------------------


def test_compete_equals_one_summed_vector(tiny_llama):
    vec_a, vec_b = vector(HOOK, seed=0, scale=4.0), vector(HOOK, seed=5, scale=4.0)
    df = compete(tiny_llama, ITEMS, vec_a, vec_b, [0, 1.5], [-1.0, 2.0], batch_size=4)
    assert list(df.columns) == [
        "multiplier_a",
        "multiplier_b",
        "p_matching",
        "n_matching",
        "letter_mass",
        "logit_diff",
    ]
    assert len(df) == 4
    for row in df.itertuples():
        summed = SteeringVector({HOOK: row.multiplier_a * vec_a[HOOK] + row.multiplier_b * vec_b[HOOK]})
        ref = ab_eval(tiny_llama, ITEMS, caa(tiny_llama, summed, 1.0), batch_size=4)
        assert row.p_matching == pytest.approx(ref.p_matching, abs=1e-5)
        assert row.n_matching == ref.n_matching
    assert df["p_matching"].max() - df["p_matching"].min() > 1e-3


def test_calibrate_multiplier_picks_largest_within_budget(tiny_llama):
    vec = vector(HOOK, HOOK2, scale=1.0)
    candidates = [1, 2, 4, 8]
    kls = {
        layer: {
            m: kl_on_neutral(tiny_llama, vec.select([layer]).steering(m), NEUTRAL[:2]) for m in candidates
        }
        for layer in (1, 2)
    }
    target = kls[1][4] * 1.01
    got = calibrate_multiplier(tiny_llama, vec, [1, 2], NEUTRAL[:2], target, candidates)
    for layer in (1, 2):
        ok = [m for m in candidates if kls[layer][m] <= target]
        assert got[layer] == (max(ok) if ok else None)
    assert got[1] == 4
    smallest = min(min(k.values()) for k in kls.values())
    assert calibrate_multiplier(tiny_llama, vec, 1, NEUTRAL[:2], smallest / 2, candidates) == {1: None}
    with pytest.raises(ValueError, match=r"candidates must be positive, got \[-1, 2\]; .* calibrate -vector"):
        calibrate_multiplier(tiny_llama, vec, 1, NEUTRAL, 0.1, [-1, 2])
    with pytest.raises(ValueError, match="target_kl must be a finite number >= 0, got -0.1"):
        calibrate_multiplier(tiny_llama, vec, 1, NEUTRAL, -0.1, [1])


# -- diagnostics ----------------------------------------------------------------------------------


def planted_activations(n=40, noise=0.3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    u = direction(11)
    base = torch.randn(n, 32, generator=gen) * 3
    base = base - (base @ u)[:, None] * u  # the pairs vary a lot, but not along u
    pos = base + 1.5 * u + noise * torch.randn(n, 32, generator=gen)
    neg = base - 1.5 * u + noise * torch.randn(n, 32, generator=gen)
    return ContrastActivations({HOOK: pos}, {HOOK: neg}, paired=True), u


def test_pair_cosines_reference_and_planted():
    acts, _ = planted_activations(noise=0.01)
    diffs = acts.positive[HOOK] - acts.negative[HOOK]
    mean = diffs.mean(0)
    expected = np.mean([float(F.cosine_similarity(d, mean, dim=0)) for d in diffs])
    got = pair_cosines(acts)[HOOK]
    assert got == pytest.approx(expected, abs=1e-6)
    assert got > 0.99
    noisy, _ = planted_activations(noise=3.0)
    assert pair_cosines(noisy)[HOOK] < 0.6
    with pytest.raises(ValueError, match="needs paired activations"):
        pair_cosines(ContrastActivations(acts.positive, acts.negative, paired=False))


def test_projection_accuracy_hand_example():
    u = torch.zeros(32)
    u[0] = 1.0
    pos_train, neg_train = torch.zeros(2, 32), torch.zeros(2, 32)
    pos_train[:, 0] = torch.tensor([3.0, 5.0])  # mean 4
    neg_train[:, 0] = torch.tensor([-1.0, 1.0])  # mean 0 -> threshold 2
    pos_test, neg_test = torch.zeros(3, 32), torch.zeros(1, 32)
    pos_test[:, 0] = torch.tensor([2.5, 1.5, 9.0])  # two above 2
    neg_test[:, 0] = torch.tensor([2.0])  # at the threshold counts as negative
    train = ContrastActivations({HOOK: pos_train}, {HOOK: neg_train}, paired=False)
    test = ContrastActivations({HOOK: pos_test}, {HOOK: neg_test}, paired=False)
    assert projection_accuracy(train, test, SteeringVector({HOOK: u}))[HOOK] == 0.75
    assert projection_accuracy(train, test)[HOOK] == 0.75  # the class-mean difference points along u too
    # a vector pointing the wrong way is read by the side of the positive training class
    assert projection_accuracy(train, test, SteeringVector({HOOK: -u}))[HOOK] == 0.75


def test_split_and_heldout_accuracy_on_planted_direction():
    acts, u = planted_activations(noise=0.3)
    train, test = split_activations(acts, range(30))
    assert torch.equal(train.positive[HOOK], acts.positive[HOOK][:30])
    assert torch.equal(test.negative[HOOK], acts.negative[HOOK][30:])
    assert projection_accuracy(train, test)[HOOK] == 1.0
    random_dir = SteeringVector({HOOK: direction(99)})
    assert projection_accuracy(train, test, random_dir)[HOOK] < 0.9
    with pytest.raises(ValueError, match=r"row indices in 0\.\.39, got \[0, 40\]"):
        split_activations(acts, [0, 40])


def test_layer_diagnostics_collects_per_layer_values():
    acts, u = planted_activations()
    train, test = split_activations(acts, range(25))
    vec = SteeringVector({HOOK: 3.0 * u})
    frame = layer_diagnostics(vec, norms={HOOK: 12.0}, train=train, test=test)
    assert list(frame.columns) == [
        "layer",
        "hook",
        "norm",
        "relative_norm",
        "pair_cosine",
        "heldout_accuracy",
    ]
    row = frame.iloc[0]
    assert (row["layer"], row["hook"]) == (1, HOOK)
    assert row["norm"] == pytest.approx(3.0, abs=1e-6)
    assert row["relative_norm"] == pytest.approx(0.25, abs=1e-6)
    assert row["pair_cosine"] == pair_cosines(train)[HOOK]
    assert row["heldout_accuracy"] == projection_accuracy(train, test, vec)[HOOK]
    assert list(layer_diagnostics(vec).columns) == ["layer", "hook", "norm"]
    assert relative_norms(vec, {HOOK: 6.0}) == {HOOK: pytest.approx(0.5, abs=1e-6)}
    with pytest.raises(KeyError, match=r"hooks \['blocks.1.hook_resid_post'\] not in norms"):
        relative_norms(vec, {HOOK2: 1.0})


def test_cosine_matrix_by_hand():
    a, b, c = direction(1, 2.0), direction(2, 0.5), direction(3)
    vectors = {n: SteeringVector({HOOK: d}) for n, d in (("a", a), ("b", b), ("c", -a + 0.1 * c))}
    matrix = cosine_matrix(vectors, 1)
    assert list(matrix.index) == list(matrix.columns) == ["a", "b", "c"]
    assert matrix.loc["a", "b"] == pytest.approx(float(F.cosine_similarity(a, b, dim=0)), abs=1e-6)
    assert matrix.loc["a", "c"] < -0.99
    np.testing.assert_allclose(np.diag(matrix.to_numpy()), 1.0, atol=1e-12)
    np.testing.assert_allclose(matrix.to_numpy(), matrix.to_numpy().T, atol=1e-15)
    assert cosine_matrix(vectors, HOOK).equals(matrix)


def test_normalize_to_mean_norm_exact_algebra():
    vectors = {
        "x": SteeringVector({HOOK: direction(1, 2.0), HOOK2: direction(2, 10.0)}),
        "y": SteeringVector({HOOK: direction(3, 4.0), HOOK2: direction(4, 1.0)}),
        "z": SteeringVector({HOOK: direction(5, 9.0), HOOK2: direction(6, 1.0)}),
    }
    out = normalize_to_mean_norm(vectors)
    assert list(out) == ["x", "y", "z"]
    for hook, mean in ((HOOK, 5.0), (HOOK2, 4.0)):
        for name in vectors:
            assert float(out[name][hook].norm()) == pytest.approx(mean, rel=1e-6)
            assert float(F.cosine_similarity(out[name][hook], vectors[name][hook], dim=0)) == pytest.approx(
                1.0
            )
    assert out["x"].metadata.note == "normalize_to_mean_norm(x)"
    with pytest.raises(KeyError, match="all vectors need the same hooks"):
        normalize_to_mean_norm({"x": vectors["x"], "w": SteeringVector({HOOK: direction(7)})})
    with pytest.raises(ValueError, match="direction of 'q' at 'blocks.1.hook_resid_post' is zero"):
        normalize_to_mean_norm({"q": SteeringVector({HOOK: torch.zeros(32)})})


def test_prompts_longer_than_the_context_are_refused_before_any_forward(tiny_llama):
    """Defect 5: ab_eval and sweep check prompt length against n_ctx with a clear error."""
    long = [ITEMS[0], ABItem("x" * 200 + "\n (A) yes\n (B) no", "(A)", "(B)")]
    vec = vector("blocks.1.hook_resid_post")
    message = r"prompt 1 has \d+ tokens, more than the model's context \(model.cfg.n_ctx=128\)"
    with pytest.raises(ValueError, match=message):
        ab_eval(tiny_llama, long)
    with pytest.raises(ValueError, match=message):
        sweep(tiny_llama, long, vec, [1], [-1.0, 1.0])
    with pytest.raises(ValueError, match=message):
        sweep(tiny_llama, long, vec, [1], [-1.0, 1.0], engine="full")


def test_answers_outside_a_and_b_are_refused_or_counted(tiny_llama):
    """Defect 9: (C)/(D) and lowercase answers are not scored 0 without a word."""
    lower = [ABItem("Q\n (a) x\n (b) y", "(a)", "(b)")]
    with pytest.raises(ValueError, match=r"A/B item 0: answer '\(a\)' is not a capital letter answer"):
        ab_eval(tiny_llama, lower)
    cd = [ITEMS[0], ABItem("Q\n (A) a\n (B) b\n (C) c\n (D) d", "(C)", "(D)")]
    with pytest.raises(
        ValueError, match=r"A/B items \[1\] have answers outside \(A\)/\(B\).*outside_ab='zero'"
    ):
        ab_eval(tiny_llama, cd)
    result = ab_eval(tiny_llama, cd, outside_ab="zero")
    assert result.n_outside_ab == 1 and result.scores[1].p_matching == 0.0 and result.scores[1].outside_ab
    assert result.p_matching == pytest.approx(result.scores[0].p_matching / 2)
    same = [ABItem("Q\n (A) a\n (B) b", "(A)", "(A)")]
    with pytest.raises(ValueError, match=r"matching and not-matching answers are both '\(A\)'"):
        ab_eval(tiny_llama, same)


def test_kl_and_sweeps_refuse_non_finite_input(tiny_llama):
    """Defect 2: NaN directions never reach kl_on_neutral; NaN multipliers never reach a sweep."""
    bad = torch.ones(32)
    bad[1] = float("nan")
    with pytest.raises(ValueError, match="direction at 'blocks.1.hook_resid_post' has 1 non-finite entries"):
        kl_on_neutral(tiny_llama, Steering.from_vector({"blocks.1.hook_resid_post": bad}, 1.0), NEUTRAL)
    vec = vector("blocks.1.hook_resid_post")
    with pytest.raises(ValueError, match="multipliers must be finite numbers, got nan"):
        sweep(tiny_llama, ITEMS, vec, [1], [0.0, float("nan")])


def test_check_model_false_steers_with_a_vector_made_for_another_model(tiny_llama):
    """Every function that steers refuses a vector made for another model unless check_model=False,
    and with it gives what the same numbers give with no model name."""
    other = SteeringVector({HOOK: direction(0, 4.0)}, VectorMetadata(model_name="other-model"))
    anonymous = SteeringVector(dict(other.directions))  # the same numbers, made for no model in particular
    where = question_end(tiny_llama)
    runs = {
        "ab_scores": lambda v, **kw: ab_scores(tiny_llama, ITEMS, v.steering(2.0, positions=where), **kw),
        "ab_eval": lambda v, **kw: ab_eval(tiny_llama, ITEMS, v.steering(2.0, positions=where), **kw),
        "ab_accuracy": lambda v, **kw: ab_accuracy(tiny_llama, ITEMS, v.steering(2.0, positions=where), **kw),
        "kl_stats": lambda v, **kw: kl_stats(tiny_llama, v.steering(2.0), prompts=NEUTRAL, **kw),
        "kl_on_neutral": lambda v, **kw: kl_on_neutral(tiny_llama, v.steering(2.0), NEUTRAL, **kw),
        "cached_ab_scores": lambda v, **kw: cached_ab_scores(
            tiny_llama, ITEMS, [Steering(), v.steering(2.0, positions=where)], **kw
        ),
        "sweep_items": lambda v, **kw: sweep_items(tiny_llama, ITEMS, v, 1, [2.0], **kw),
        "token_view": lambda v, **kw: token_view(tiny_llama, v, "Hello there", 2.0, max_new_tokens=3, **kw),
    }
    refused = r"made for model 'other-model' but this model is 'tiny-llama'; pass check_model=False"
    for name, run in runs.items():
        with pytest.raises(ValueError, match=refused):
            run(other)
        forced, reference = run(other, check_model=False), run(anonymous)
        if isinstance(forced, pd.DataFrame):
            pd.testing.assert_frame_equal(forced, reference)
        else:
            assert forced == reference, name
    assert runs["kl_on_neutral"](other, check_model=False) > 1e-3  # it really steered
