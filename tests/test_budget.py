"""Side-effect budgets: per-token KL statistics, calibration to a KL budget, bootstrap intervals."""

from __future__ import annotations

import math
import string

import numpy as np
import pytest
import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from tests.conftest import SPECIALS, count_hooks, make_model
from tlsteer.data import chat_prompt
from tlsteer.eval.budget import (
    Calibration,
    KLStats,
    bootstrap_ci,
    calibrate_to_kl,
    kl_stats,
    paired_difference_ci,
    reply_kl_stats,
)
from tlsteer.models import attach_tokenizer
from tlsteer.positions import Positions
from tlsteer.steering import Steering
from tlsteer.tokens import tokenize

HOOK = "blocks.1.hook_resid_post"
NEUTRAL = ["Water boils at 100 degrees.", "The Nile flows north.", "Mix oil and vinegar.", "Hi"]
PREFIX = "Be brief."


def direction(seed: int = 0, scale: float = 5.0) -> torch.Tensor:
    d = torch.randn(32, generator=torch.Generator().manual_seed(seed))
    return scale * d / d.norm()


def adding(delta: torch.Tensor, first: int):
    """A TransformerLens hook adding ``delta`` from column ``first`` on."""

    def hook(act, hook):
        act = act.clone()
        act[:, first:] += delta
        return act

    return hook


def reference(model, prompts, first=1, delta=None, prefix="", lead=0):
    """One prompt at a time, no padding: per-token KL at positions >= first, as (mean, p95, n).

    The steered run reads ``f"{prefix}\\n\\n{prompt}"`` (as generation and A/B scoring do; its tokens
    after the ``lead`` tokens the tokenizer adds are shifted by the prefix's length) with ``delta``
    added from the prompt's ``first`` on.
    """
    kls = []
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenize(model, prompt)
            full = tokenize(model, f"{prefix}\n\n{prompt}" if prefix else prompt)
            shift = len(full) - len(ids)
            clean = model(torch.tensor([ids]))[0].log_softmax(-1)
            hooks = [] if delta is None else [(HOOK, adding(delta, first + shift))]
            steered = model.run_with_hooks(torch.tensor([full]), fwd_hooks=hooks)[0].log_softmax(-1)
            for p in range(first, len(ids)):
                c, s = clean[p], steered[p if p < lead else p + shift]
                kls.append(float((c.exp() * (c - s)).sum()))
    return float(np.mean(kls)), float(np.percentile(kls, 95)), len(kls)


def check(stats: KLStats, expected) -> None:
    mean, p95, n = expected
    assert mean > 1e-3
    assert stats.mean == pytest.approx(mean, rel=1e-4, abs=1e-5)
    assert stats.p95 == pytest.approx(p95, rel=1e-4, abs=1e-5)
    assert stats.n_tokens == n


def no_forward(model, monkeypatch):
    def forward(*args, **kwargs):
        raise AssertionError("a forward pass ran before the input was checked")

    monkeypatch.setattr(model, "forward", forward)


# -- kl_stats -------------------------------------------------------------------------------------
# The old kl_stats(min_token_index=k) steered AND measured from k (default 1): in the new API that is
# a steering at Positions.make(k) with measure_from=k.
FROM_1 = Positions.start_at(1)


def vector_steering(d, multiplier, positions=FROM_1):
    return Steering.from_vector({HOOK: d}, multiplier, positions=positions)


@pytest.mark.parametrize("first", [1, 4])
def test_kl_stats_matches_a_plain_loop(tiny, first):
    d = direction()
    steering = vector_steering(d, 3.0, Positions.make(first))
    stats = kl_stats(tiny, steering, prompts=NEUTRAL, measure_from=first, batch_size=3)
    check(stats, reference(tiny, NEUTRAL, first, 3.0 * d))
    assert stats.n_tokens == sum(max(len(tokenize(tiny, p)) - first, 0) for p in NEUTRAL)
    assert stats.p95 > stats.mean
    assert stats.to_dict() == {"mean": stats.mean, "p95": stats.p95, "n_tokens": stats.n_tokens}


def test_edits_vectors_and_both_together_agree(tiny_llama):
    d = direction()
    by_vector = kl_stats(tiny_llama, vector_steering(d, 3.0), prompts=NEUTRAL)
    by_edit = kl_stats(
        tiny_llama,
        Steering.from_edits([(HOOK, lambda act: (3.0 * d).expand_as(act))], positions=FROM_1),
        prompts=NEUTRAL,
    )
    together = kl_stats(
        tiny_llama,
        vector_steering(d, 1.0)
        + Steering.from_edits([(HOOK, lambda act: (2.0 * d).expand_as(act))], positions=FROM_1),
        prompts=NEUTRAL,
    )
    for other in (by_edit, together):
        assert other.mean == pytest.approx(by_vector.mean, rel=1e-5)
        assert other.p95 == pytest.approx(by_vector.p95, rel=1e-5)
        assert other.n_tokens == by_vector.n_tokens
    half = kl_stats(tiny_llama, vector_steering(d, 1.0), prompts=NEUTRAL)
    assert half.mean < by_vector.mean  # the edit was really applied on top of the vector


def test_zero_multiplier_gives_zero(tiny):
    stats = kl_stats(
        tiny, vector_steering(direction(), 0.0, Positions.all()), prompts=NEUTRAL, measure_from=0
    )
    assert stats.mean < 1e-7 and stats.p95 < 1e-7
    assert stats.n_tokens == sum(len(tokenize(tiny, p)) for p in NEUTRAL)


def test_batches_of_uneven_prompts_match_one_at_a_time(tiny):
    steering = vector_steering(direction(), 2.0)
    one = kl_stats(tiny, steering, prompts=NEUTRAL, batch_size=1)
    two = kl_stats(tiny, steering, prompts=NEUTRAL, batch_size=2)
    assert two.mean == pytest.approx(one.mean, rel=1e-5)
    assert two.p95 == pytest.approx(one.p95, rel=1e-5)
    assert two.n_tokens == one.n_tokens


def test_steering_later_than_the_measurement_does_not_depend_on_batching(tiny_llama):
    """A steering that starts after some short prompts end steers nothing there: KL 0, in any batch."""
    d = direction()
    prompts = ["Water boils at 100 degrees.", "Hi there"]  # 27 and 8 tokens
    steering = vector_steering(d, 3.0, Positions.start_at(10))
    one = kl_stats(tiny_llama, steering, prompts=prompts, measure_from=1, batch_size=1)
    two = kl_stats(tiny_llama, steering, prompts=prompts, measure_from=1, batch_size=2)
    assert two.mean == pytest.approx(one.mean, rel=1e-5) and two.n_tokens == one.n_tokens
    check(one, _later(tiny_llama, prompts, d))
    with pytest.raises(ValueError, match="beyond"):  # beyond every prompt: nothing would be steered
        kl_stats(tiny_llama, vector_steering(d, 3.0, Positions.start_at(40)), prompts=prompts)


def _later(model, prompts, d):
    """Per-token KL from position 1 with ``3 d`` added from position 10 on, one prompt at a time."""
    kls = []
    with torch.no_grad():
        for prompt in prompts:
            tokens = torch.tensor([tokenize(model, prompt)])
            clean = model(tokens)[0].log_softmax(-1)
            steered = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, adding(3.0 * d, 10))])[0].log_softmax(-1)
            kls += [float((c.exp() * (c - s)).sum()) for c, s in zip(clean[1:], steered[1:], strict=True)]
    return float(np.mean(kls)), float(np.percentile(kls, 95)), len(kls)


def test_kl_stats_refuses_positions_other_than_all_or_start_at(tiny_llama, monkeypatch):
    no_forward(tiny_llama, monkeypatch)
    for positions in (Positions.last(), Positions.from_end(3), Positions.at([2, 5])):
        with pytest.raises(ValueError, match=r"kl_stats steers every position or from an index on"):
            kl_stats(tiny_llama, vector_steering(direction(), 1.0, positions), prompts=NEUTRAL)


# -- prefix ---------------------------------------------------------------------------------------


def test_prefix_matches_a_hand_computation(tiny):
    """The steered run reads the prompt as generation and A/B scoring do: ``steering.instruct(prompt)``,
    the prefix, a blank line, the prompt (the old kl_stats(prefix=...) put the prefix exactly as given)."""
    stats = kl_stats(tiny, Steering.from_prompt(PREFIX), prompts=NEUTRAL, batch_size=3)
    assert Steering.from_prompt(PREFIX).instruct("Hi") == f"{PREFIX}\n\nHi"
    check(stats, reference(tiny, NEUTRAL, prefix=PREFIX))
    one = kl_stats(tiny, Steering.from_prompt(PREFIX), prompts=NEUTRAL, batch_size=1)
    assert one.mean == pytest.approx(stats.mean, rel=1e-5) and one.n_tokens == stats.n_tokens


def test_prefix_with_a_vector_steers_the_prompt_tokens(tiny_llama):
    d = direction()
    prompted = Steering.from_prompt(PREFIX)
    steering = vector_steering(d, 2.0, Positions.start_at(3)) + prompted
    stats = kl_stats(tiny_llama, steering, prompts=NEUTRAL, measure_from=3)
    check(stats, reference(tiny_llama, NEUTRAL, 3, 2.0 * d, prefix=PREFIX))
    alone = kl_stats(tiny_llama, prompted, prompts=NEUTRAL, measure_from=3)
    assert abs(alone.mean - stats.mean) > 1e-3


def test_empty_prefix_and_nothing_to_measure_are_refused(tiny_llama, monkeypatch):
    no_forward(tiny_llama, monkeypatch)
    with pytest.raises(ValueError, match="a prompt prefix must be a non-empty string, got ''"):
        kl_stats(tiny_llama, Steering.from_prompt(""), prompts=NEUTRAL)
    with pytest.raises(ValueError, match="nothing to measure: the steering has no edits and no prefix"):
        kl_stats(tiny_llama, Steering(), prompts=NEUTRAL)
    with pytest.raises(TypeError, match="prefix"):  # the library's check, or the runtime type check
        kl_stats(tiny_llama, Steering(prefix=3), prompts=NEUTRAL)
    with pytest.raises(TypeError, match="Steering"):  # the old (vector, multiplier) pairs
        kl_stats(tiny_llama, [({HOOK: direction()}, 1.0)], prompts=NEUTRAL)


def tokenizer(pattern: str = ".", add_bos: bool = False, merged: str = "ab") -> PreTrainedTokenizerFast:
    """conftest's character tokenizer, optionally adding BOS and with ``merged`` as one token."""
    chars = [c if c != "\x0c" else merged for c in string.printable]  # same vocabulary size
    vocab = {tok: i for i, tok in enumerate(SPECIALS + chars)}
    inner = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    inner.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    if add_bos:
        inner.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=inner, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
    )


def test_prefix_is_aligned_after_the_bos_the_tokenizer_adds():
    model = make_model("llama", seed=3)
    attach_tokenizer(model, tokenizer(add_bos=True))
    assert tokenize(model, "Hi") == [1, *tokenize(model, "Hi")[1:]] and len(tokenize(model, "Hi")) == 3
    prompted = Steering.from_prompt(PREFIX)
    for first in (0, 1):
        stats = kl_stats(model, prompted, prompts=NEUTRAL, measure_from=first, batch_size=3)
        check(stats, reference(model, NEUTRAL, first, prefix=PREFIX, lead=1))
    # position 0 is BOS in both runs: the same distribution, so measure_from=0 only adds zeros
    at_bos = kl_stats(model, prompted, prompts=NEUTRAL, measure_from=0)
    after = kl_stats(model, prompted, prompts=NEUTRAL, measure_from=1)
    assert at_bos.mean * at_bos.n_tokens == pytest.approx(after.mean * after.n_tokens, rel=1e-5)


def test_a_prefix_merging_into_the_prompt_is_refused_before_any_forward(monkeypatch):
    model = make_model("llama", seed=3)
    attach_tokenizer(model, tokenizer(pattern="\nb|.", merged="\nb"))  # the blank line's end + "b"
    assert len(tokenize(model, "x\n\nb")) == 3
    no_forward(model, monkeypatch)
    with pytest.raises(ValueError, match=r"prompt 1 \('bcd'\).*merges across the boundary"):
        kl_stats(model, Steering.from_prompt("xa"), prompts=["cd", "bcd"])


def test_everything_is_checked_before_any_forward(tiny_llama, monkeypatch):
    no_forward(tiny_llama, monkeypatch)
    nan = torch.ones(32)
    nan[2] = float("nan")

    def good(positions=FROM_1):
        return vector_steering(direction(), 1.0, positions)

    def run(steering=None, **kwargs):
        kwargs.setdefault("prompts", NEUTRAL)
        return kl_stats(tiny_llama, good() if steering is None else steering, **kwargs)

    cases = [
        (
            lambda: run(
                good() + Steering.from_edits([("blocks.9.hook_resid_post", lambda a: a)], positions=FROM_1)
            ),
            KeyError,
            "out of range",
        ),
        (lambda: run(good() + Steering.from_edits([(HOOK, "not callable")])), TypeError, "(?i)callable"),
        (lambda: run(vector_steering(nan, 1.0)), ValueError, "1 non-finite entries"),
        (lambda: run(vector_steering(direction(), float("inf"))), ValueError, "multiplier must be finite"),
        (lambda: run(good(Positions.make(-1))), ValueError, "min_token_index=-1 is negative"),
        (lambda: run(good(Positions.make(1.5))), TypeError, "min_token_index"),
        (lambda: run(measure_from=-1), ValueError, r"measure_from must be an int >= 0 .*got -1"),
        (lambda: run(measure_from=1.5), (TypeError, ValueError), "measure_from"),  # or the type check
        (lambda: run(measure_from=40), ValueError, r"measure_from=40 leaves no position"),
        (lambda: run(good(Positions.start_at(40))), ValueError, r"min_token_index=40 is beyond"),
        (lambda: run(batch_size=0), ValueError, "batch_size must be an int >= 1"),
        (lambda: run(prompts="one string"), ValueError, "non-empty list of strings"),
        (lambda: run(prompts=[]), ValueError, "non-empty list of strings"),
        (lambda: run(prompts=["ok", ""]), ValueError, "prompt 1 must be a non-empty string"),
        (lambda: run(good() + Steering.from_prompt("x" * 120)), ValueError, r"more than the model's context"),
    ]
    for case, error, match in cases:
        with pytest.raises(error, match=match):
            case()


@pytest.mark.parametrize("prefix", [None, PREFIX])
def test_hooks_are_removed_when_the_steered_forward_raises(tiny, prefix):
    def boom(act):
        raise RuntimeError("edit failed")

    steering = vector_steering(direction(), 1.0) + Steering.from_edits([(HOOK, boom)], positions=FROM_1)
    if prefix is not None:
        steering = steering + Steering.from_prompt(prefix)
    with pytest.raises(RuntimeError, match="edit failed"):
        kl_stats(tiny, steering, prompts=NEUTRAL)
    assert count_hooks(tiny) == 0
    assert all(not point.fwd_hooks for point in tiny.hook_dict.values())


# -- calibrate_to_kl ------------------------------------------------------------------------------


def quadratic(s: float) -> float:
    return 0.3 * s**2


def test_calibration_finds_the_budget():
    cal = calibrate_to_kl(quadratic, budget=0.5)
    assert cal.reached and abs(cal.kl / 0.5 - 1) <= 0.1
    assert cal.kl == quadratic(cal.strength)
    assert cal.evaluations[:2] == [(4.0, quadratic(4.0)), (1e-3, quadratic(1e-3))]
    assert all(kl == quadratic(s) for s, kl in cal.evaluations)
    assert cal.evaluations[-1] == (cal.strength, cal.kl)
    assert cal.to_dict()["evaluations"] == [[s, k] for s, k in cal.evaluations]
    assert isinstance(cal, Calibration) and cal.budget == 0.5
    tight = calibrate_to_kl(quadratic, budget=0.5, steps=60, tolerance=1e-9)
    assert tight.reached and tight.strength == pytest.approx(math.sqrt(0.5 / 0.3), rel=1e-8)


def test_calibration_flags_budgets_out_of_reach():
    above = calibrate_to_kl(quadratic, budget=10.0)
    assert (above.strength, above.kl, above.reached) == (4.0, quadratic(4.0), False)
    assert above.evaluations == [(4.0, quadratic(4.0))]
    below = calibrate_to_kl(quadratic, budget=1e-9)
    assert (below.strength, below.reached) == (1e-3, False)
    assert [s for s, _ in below.evaluations] == [4.0, 1e-3]
    short = calibrate_to_kl(quadratic, budget=0.5, steps=1, tolerance=0.0)
    assert not short.reached and len(short.evaluations) == 3
    assert short.strength == min(short.evaluations, key=lambda e: abs(e[1] - 0.5))[0]


def test_calibration_from_a_start_guess_needs_few_measurements():
    # KL = 0.3 s^2: the first secant step (exponent 2) lands exactly on the budget
    cal = calibrate_to_kl(quadratic, budget=0.5, start=0.25)
    assert cal.reached and cal.strength == pytest.approx(math.sqrt(0.5 / 0.3), rel=1e-9)
    assert [s for s, _ in cal.evaluations] == [0.25, cal.strength]

    # KL that is not a power law (quadratic, then steeper): the measured slope takes over
    def curved(s: float) -> float:
        return 0.1 * (math.exp(2 * s) - 1) ** 2

    for budget in (0.1, 0.5):
        guessed = calibrate_to_kl(curved, budget=budget, start=0.25)
        plain = calibrate_to_kl(curved, budget=budget)
        assert guessed.reached and abs(guessed.kl / budget - 1) <= 0.1
        assert len(guessed.evaluations) <= 4 < len(plain.evaluations)
    # a start outside the bracket is clipped to it; a budget out of reach is still flagged
    far = calibrate_to_kl(quadratic, budget=10.0, start=100.0)
    assert far.evaluations[0] == (4.0, quadratic(4.0)) and not far.reached and far.strength == 4.0


def test_calibration_from_a_start_falls_back_to_bisection_in_the_bracket_it_found():
    # a step function defeats the secant; bisection must start from the strengths already measured
    def step(s: float) -> float:
        return 0.01 if s < 1.0 else 1.0 + s

    cal = calibrate_to_kl(step, budget=0.5, start=0.5, steps=20, tolerance=0.1)
    assert not cal.reached  # no strength gives 0.5
    tried = [s for s, _ in cal.evaluations]
    assert 4.0 not in tried and 1e-3 not in tried  # the bracket came from the secant's measurements
    assert cal.strength == min(cal.evaluations, key=lambda e: abs(e[1] - 0.5))[0]
    with pytest.raises(ValueError, match="start must be a finite number > 0"):
        calibrate_to_kl(quadratic, budget=0.5, start=float("nan"))
    with pytest.raises(ValueError, match="exponent must be > 0"):
        calibrate_to_kl(quadratic, budget=0.5, start=1.0, exponent=0)


def test_calibration_of_a_non_monotone_measure_returns_a_strength_it_tried():
    cal = calibrate_to_kl(lambda s: 1.0 + math.sin(5 * s), budget=1.5, steps=5, tolerance=0.01)
    assert (cal.strength, cal.kl) in cal.evaluations


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(budget=0.0), ValueError, "budget must be > 0, got 0.0"),
        (dict(budget=-1.0), ValueError, "budget must be > 0"),
        (dict(budget=float("nan")), ValueError, "budget must be a finite number > 0, got nan"),
        (dict(budget=float("inf")), ValueError, "budget must be a finite number > 0, got inf"),
        (dict(budget="1"), ValueError, "budget must be a finite number"),
        (dict(budget=True), ValueError, "budget must be a finite number"),
        (dict(budget=1.0, low=2.0, high=1.0), ValueError, "low must be below high, got low=2.0"),
        (dict(budget=1.0, low=0.0), ValueError, "low must be > 0"),
        (dict(budget=1.0, steps=-1), ValueError, "steps must be an int >= 0"),
        (dict(budget=1.0, tolerance=float("nan")), ValueError, "tolerance must be a finite number >= 0"),
        (dict(budget=1.0, measure=lambda s: float("nan")), ValueError, r"measure\(4.0\) returned nan"),
        (dict(budget=1.0, measure="kl"), TypeError, "measure must be a callable"),
    ],
)
def test_calibration_refuses_bad_input(kwargs, error, match):
    kwargs.setdefault("measure", quadratic)
    with pytest.raises(error, match=match):
        calibrate_to_kl(**kwargs)


# -- bootstrap ------------------------------------------------------------------------------------


def test_bootstrap_is_deterministic_and_contains_the_estimate():
    values = np.random.default_rng(1).normal(size=200)
    first = bootstrap_ci(values, seed=7)
    assert first == bootstrap_ci(values, seed=7)
    assert first != bootstrap_ci(values, seed=8)
    estimate, low, high = first
    assert estimate == pytest.approx(values.mean(), abs=1e-15)
    assert low < estimate < high
    assert all(isinstance(x, float) for x in first)
    assert bootstrap_ci(list(values), seed=7) == first


def test_bootstrap_width_matches_the_normal_approximation():
    n = 20000
    values = (np.random.default_rng(2).random(n) < 0.3).astype(float)
    _, low, high = bootstrap_ci(values, seed=0)
    p = values.mean()
    expected = 2 * 1.96 * math.sqrt(p * (1 - p) / n)
    assert high - low == pytest.approx(expected, rel=0.2)
    _, low90, high90 = bootstrap_ci(values, level=0.9, seed=0)
    assert high90 - low90 < high - low


def test_constant_input_gives_a_zero_width_interval():
    assert bootstrap_ci([0.3] * 50) == pytest.approx((0.3, 0.3, 0.3), abs=1e-15)
    estimate, low, high = bootstrap_ci([0.3] * 50)
    assert low == high == estimate


def test_bootstrap_over_rows_and_paired_differences():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, size=300)
    one_hot = np.eye(3)[labels]
    by_rows = bootstrap_ci(one_hot, statistic=lambda x: x.mean(0)[1], seed=4)
    by_column = bootstrap_ci((labels == 1).astype(float), seed=4)
    assert by_rows == pytest.approx(by_column, abs=1e-12)
    a, b = rng.normal(size=100), rng.normal(size=100)
    paired = paired_difference_ci(a, b, seed=5)
    assert paired == pytest.approx(bootstrap_ci(a - b, seed=5), abs=1e-12)
    shared = rng.normal(scale=10, size=100)  # a per-prompt effect both methods share cancels out
    assert paired_difference_ci(a + shared, b + shared, seed=5) == pytest.approx(paired, abs=1e-9)
    with pytest.raises(ValueError, match=r"same length.*shapes \(100,\) and \(99,\)"):
        paired_difference_ci(a, b[:99])


@pytest.mark.parametrize(
    ("values", "kwargs", "error", "match"),
    [
        ([], {}, ValueError, "values is empty"),
        (np.zeros((0, 3)), {}, ValueError, "values is empty"),
        (1.0, {}, ValueError, "got a scalar"),
        ([1.0, float("nan"), 2.0], {}, ValueError, r"1 non-finite entries \(first at index \(1,\): nan\)"),
        ([1.0, float("inf")], {}, ValueError, "non-finite"),
        (["a", "b"], {}, TypeError, "values must be an array of numbers"),
        ([1.0, 2.0], {"n_resamples": 99}, ValueError, "n_resamples must be an int >= 100, got 99"),
        ([1.0, 2.0], {"level": 1.0}, ValueError, r"level must be a number in \(0, 1\)"),
        ([1.0, 2.0], {"level": 0}, ValueError, "level must be a number in"),
        ([1.0, 2.0], {"level": float("nan")}, ValueError, "level must be a number in"),
        ([1.0, 2.0], {"seed": -1}, ValueError, "seed must be an int >= 0"),
        ([1.0, 2.0], {"statistic": lambda x: x}, TypeError, "statistic must return one number"),
    ],
)
def test_bootstrap_refuses_bad_input(values, kwargs, error, match):
    with pytest.raises(error, match=match):
        bootstrap_ci(values, **kwargs)


def test_kl_stats_cache_reuses_the_unsteered_run_and_changes_nothing(tiny_llama):
    import tlsteer

    vec = tlsteer.SteeringVector({"blocks.1.hook_resid_post": torch.ones(tiny_llama.cfg.d_model)})
    steering = vec.steering(0.5, positions=FROM_1)  # the old default: steer and measure from 1
    prompts = ["Water boils at 100 degrees.", "The Nile flows north.", "Hi"]
    cache = {}
    first = kl_stats(tiny_llama, steering, prompts=prompts, batch_size=2, cache=cache)
    assert len(cache) == 2  # one entry per batch
    calls = []
    handle = tiny_llama.register_forward_hook(lambda *a: calls.append(1))
    try:
        again = kl_stats(tiny_llama, steering, prompts=prompts, batch_size=2, cache=cache)
    finally:
        handle.remove()
    assert len(calls) == 2  # only the steered forwards ran
    assert again == first == kl_stats(tiny_llama, steering, prompts=prompts, batch_size=2)
    with pytest.raises(TypeError, match="cache must be a dict|parameter 'cache'"):
        kl_stats(tiny_llama, steering, prompts=prompts, cache=[])


# -- reply_kl_stats: the chat turn, steered from the last prompt token on -------------------------
USERS = ["hi there", "tell me a story about a cat", "why"]
REPLIES = [[5, 9, 12, 7], [30, 31], [8, 8, 8, 8, 8, 2]]


def reply_reference(model, users, replies, delta=None, prefix=""):
    """One sequence at a time: chat prompt + reply, the delta added from the last prompt token on."""
    kls = []
    with torch.no_grad():
        for user, reply in zip(users, replies, strict=True):
            clean_prompt = tokenize(model, chat_prompt(model, user))
            steered_prompt = tokenize(model, chat_prompt(model, f"{prefix}\n\n{user}" if prefix else user))
            clean = model(torch.tensor([clean_prompt + reply]))[0].log_softmax(-1)
            hooks = [] if delta is None else [(HOOK, adding(delta, len(steered_prompt) - 1))]
            steered = model.run_with_hooks(torch.tensor([steered_prompt + reply]), fwd_hooks=hooks)[0]
            steered = steered.log_softmax(-1)
            for j in range(len(reply)):
                c = clean[len(clean_prompt) - 1 + j]
                s = steered[len(steered_prompt) - 1 + j]
                kls.append(float((c.exp() * (c - s)).sum()))
    return float(np.mean(kls)), float(np.percentile(kls, 95)), len(kls)


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_reply_kl_matches_a_plain_loop_and_does_not_depend_on_batching(tiny, batch_size):
    d = direction()
    stats = reply_kl_stats(
        tiny, vector_steering(d, 3.0, Positions.all()), prompts=USERS, replies=REPLIES, batch_size=batch_size
    )
    check(stats, reply_reference(tiny, USERS, REPLIES, 3.0 * d))
    assert stats.n_tokens == sum(len(r) for r in REPLIES)


def test_reply_kl_steers_from_the_last_prompt_token_not_before(tiny_llama):
    d = direction()
    stats = reply_kl_stats(tiny_llama, vector_steering(d, 3.0), prompts=USERS, replies=REPLIES)
    everywhere = reply_reference(tiny_llama, USERS, REPLIES, None)  # a zero check of the reference
    assert everywhere[0] == 0.0
    # steering every prompt position as well moves the reply's distributions more than the test does
    with torch.no_grad():
        ids = tokenize(tiny_llama, chat_prompt(tiny_llama, USERS[1])) + REPLIES[1]
        clean = tiny_llama(torch.tensor([ids]))[0].log_softmax(-1)
        steered = tiny_llama.run_with_hooks(torch.tensor([ids]), fwd_hooks=[(HOOK, adding(3.0 * d, 0))])[0]
        n = len(ids) - len(REPLIES[1]) - 1
        c, s = clean[n], steered[n].log_softmax(-1)
        from_start = float((c.exp() * (c - s)).sum())
    one = reply_kl_stats(tiny_llama, vector_steering(d, 3.0), prompts=USERS[1:2], replies=REPLIES[1:2])
    assert one.mean > 0 and abs(from_start - one.mean) > 1e-4
    assert stats.mean > 0


def test_reply_kl_puts_the_instruction_in_the_user_turn(tiny):
    stats = reply_kl_stats(tiny, Steering.from_prompt(PREFIX), prompts=USERS, replies=REPLIES, batch_size=2)
    check(stats, reply_reference(tiny, USERS, REPLIES, prefix=PREFIX))


def test_reply_kl_refuses_bad_replies(tiny_llama):
    steering = vector_steering(direction(), 1.0)
    with pytest.raises(ValueError, match="one list of token ids per prompt \\(3\\)"):
        reply_kl_stats(tiny_llama, steering, prompts=USERS, replies=REPLIES[:2])
    with pytest.raises(ValueError, match="reply 1 must be a non-empty list of token ids"):
        reply_kl_stats(tiny_llama, steering, prompts=USERS, replies=[[1], [], [2]])
    with pytest.raises(ValueError, match="reply 0 must be a non-empty list of token ids in \\[0, "):
        reply_kl_stats(tiny_llama, steering, prompts=USERS, replies=[[10**9], [1], [2]])
    with pytest.raises(ValueError, match="nothing to measure"):
        reply_kl_stats(tiny_llama, Steering(), prompts=USERS, replies=REPLIES)
