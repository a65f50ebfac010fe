"""Analogy sets: the data, the prompts, and next-token accuracy against a plain one-prompt loop."""

from __future__ import annotations

import pytest
import torch

import tlsteer
from tlsteer.analogy import (
    AnalogyDomain,
    answer_token,
    few_shot_prompt,
    load_analogies,
    neutral_prompt,
    next_token_accuracy,
    random_like,
    relation_contrast,
)
from tlsteer.tokens import tokenize

HOOK = "blocks.1.hook_resid_post"


def test_builtin_domains_have_30_pairs_each_and_distinct_xs():
    domains = load_analogies()
    assert set(domains) == {"country_capital", "number_successor", "month_next", "comparative"}
    for d in domains.values():
        assert len(d.pairs) >= 30, d.name
        assert len({x for x, _ in d.pairs}) == len(d.pairs)
    assert ("December", "January") in domains["month_next"].pairs


def test_split_is_seeded_disjoint_and_complete():
    d = AnalogyDomain("toy", tuple((f"x{i}", f"y{i}") for i in range(20)))
    train, val, test = d.split(seed=3)
    assert (train, val, test) == d.split(seed=3) and (train, val, test) != d.split(seed=4)
    assert len(val) == len(test) == 5 and sorted(train + val + test) == sorted(d.pairs)


@pytest.mark.parametrize(
    ("pairs", "match"),
    [
        ((("a", "b"), ("a", "c"), ("d", "e"), ("f", "g")), "x 'a' appears in more than one pair"),
        ((("a", "b"), ("c", " "), ("d", "e"), ("f", "g")), "two non-empty strings"),
        ((("a", "b"), ("c", "d")), "at least 4 pairs"),
    ],
)
def test_bad_domains_are_refused(pairs, match):
    with pytest.raises(ValueError, match=match):
        AnalogyDomain("toy", pairs)


def test_relation_contrast_never_shows_the_query_and_is_seeded():
    pairs = [(f"x{i}", f"y{i}") for i in range(8)]
    rows = relation_contrast(pairs, n_shots=3, seed=1)
    assert rows == relation_contrast(pairs, n_shots=3, seed=1)
    for (x, _), (few, neutral) in zip(pairs, rows, strict=True):
        assert neutral == neutral_prompt(x) == f"{x} →"
        lines = few.split("\n")
        assert (
            len(lines) == 4
            and lines[-1] == neutral
            and not any(line.startswith(f"{x} ") for line in lines[:-1])
        )
    assert few_shot_prompt("x", [("a", "b")]) == "a → b\nx →"
    with pytest.raises(ValueError, match="need at least 4 training pairs"):
        relation_contrast(pairs[:3], n_shots=3)


def test_random_like_keeps_the_norm():
    vec = tlsteer.SteeringVector({HOOK: torch.arange(6.0)})
    r = random_like(vec, seed=2)
    assert r[HOOK].norm() == pytest.approx(float(vec[HOOK].norm()))
    assert r == random_like(vec, seed=2) and r != random_like(vec, seed=3)


def reference_ranks(model, prompts, answers, vec=None, mult=0.0):
    """One prompt at a time; the vector added at the last position only."""

    def add_last(act, hook):
        act[:, -1] += mult * vec[HOOK]
        return act

    ranks = []
    for p, y in zip(prompts, answers, strict=True):
        tokens = torch.tensor([tokenize(model, p)])
        hooks = [(HOOK, add_last)] if vec is not None else []
        with torch.no_grad():
            logits = model.run_with_hooks(tokens, fwd_hooks=hooks)[0, -1]
        ranks.append(int((logits > logits[answer_token(model, y)]).sum()))
    return ranks


@pytest.mark.parametrize("steered", [False, True])
def test_next_token_accuracy_equals_a_one_prompt_loop(tiny_llama, steered):
    prompts = ["ab →", "hello there →", "c →", "a longer prompt here →"]
    answers = ["b", "x", "d", "q"]
    vec = tlsteer.SteeringVector(
        {HOOK: torch.randn(tiny_llama.cfg.d_model, generator=torch.Generator().manual_seed(0))}
    )
    steer = vec.steering(3.0, positions=tlsteer.Positions.last()) if steered else None
    score = next_token_accuracy(tiny_llama, prompts, answers, steer, k=3, batch_size=3)
    ranks = reference_ranks(tiny_llama, prompts, answers, vec if steered else None, 3.0)
    assert list(score.ranks) == ranks
    assert score.top1 == sum(r == 0 for r in ranks) / 4 and score.topk == sum(r < 3 for r in ranks) / 4
    if steered:
        assert score.ranks != next_token_accuracy(tiny_llama, prompts, answers, k=3).ranks


def test_next_token_accuracy_bad_input(tiny_llama):
    with pytest.raises(ValueError, match="one answer each"):
        next_token_accuracy(tiny_llama, ["a →"], ["b", "c"])
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        next_token_accuracy(tiny_llama, ["a →"], ["b"], k=0)


def test_folds_test_every_pair_once_and_keep_parts_apart():
    d = AnalogyDomain("toy", tuple((f"x{i}", f"y{i}") for i in range(18)))
    folds = d.folds(4, seed=1)
    assert folds == d.folds(4, seed=1)
    tested = [p for _, _, test in folds for p in test]
    assert sorted(tested) == sorted(d.pairs)
    for train, val, test in folds:
        assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
        assert len(train) + len(val) + len(test) == 18
    with pytest.raises(ValueError, match="k must be an int in"):
        d.folds(2)


def test_pooled_score_from_ranks():
    from tlsteer.analogy import AnalogyScore

    s = AnalogyScore.from_ranks([0, 3, 7, 0], k=5)
    assert (s.top1, s.topk) == (0.5, 0.75) and s.to_dict() == {"top1": 0.5, "top5": 0.75, "n": 4}
    with pytest.raises(ValueError, match="no ranks"):
        AnalogyScore.from_ranks([])
