"""The cached sweep engine equals a full forward per setting."""

from __future__ import annotations

import pytest
import torch

import tlsteer
from tlsteer import Positions, Steering
from tlsteer.data import ABItem
from tlsteer.eval.ab import ab_scores, question_end
from tlsteer.eval.cached import cached_ab_scores
from tlsteer.eval.shared_attention import shared_attention_unsupported
from tlsteer.eval.sweeps import sweep_items

ITEMS = [
    ABItem("Is it good?\n\nChoices:\n (A) yes\n (B) no", "(A)", "(B)"),
    ABItem("Q\n\nChoices:\n (A) x\n (B) y", "(B)", "(A)"),
    ABItem("A much longer question about cats and dogs?\n\nChoices:\n (A) cats\n (B) dogs", "(A)", "(B)"),
    ABItem("Odd one\n\nChoices:\n (A) a\n (B) b", "(B)", "(A)"),
    ABItem("Survival item with a third answer\n\nChoices:\n (A) a\n (B) b\n (C) c", "(C)", "(A)"),
]


def direction(model, seed):
    gen = torch.Generator().manual_seed(seed)
    d = torch.randn(model.cfg.d_model, generator=gen)
    return 3.0 * d / d.norm()


def setting(model, hook, direction=None, multiplier=1.0, edit=None):
    """What the old ``Setting(hook, direction, multiplier)`` / ``Setting(hook, edit=edit)`` is now: one
    edit at one hook, acting from the end of the question."""
    if edit is not None:
        return Steering.from_edits([(hook, edit)], positions=question_end(model))
    return Steering.from_vector({hook: direction}, multiplier, positions=question_end(model))


def refuses_shared(model, attention) -> bool:
    """Whether ``attention`` is "shared" and ``model`` cannot run it (the tiny Gemma 3 model: its
    sliding-window layers), after checking that it is refused, naming why, and that "auto" falls
    back to "repeat"; the test then has nothing more to compare."""
    from tlsteer.eval.shared_attention import resolve_attention

    why = shared_attention_unsupported(model)
    if attention != "shared" or why is None:
        return False
    assert model.cfg.original_architecture == "Gemma3ForCausalLM"  # the one tiny model it refuses
    assert why == "local (windowed) attention layers"
    assert resolve_attention(model, "auto") == "repeat"
    steering = setting(model, "blocks.1.hook_resid_post", direction(model, 0), 1.0)
    with pytest.raises(ValueError, match=r"attention='shared' cannot run this model \(local"):
        cached_ab_scores(model, ITEMS, [steering], attention="shared", outside_ab="zero")
    return True


def full_scores(model, items, hook, direction, multiplier, **kwargs):
    """ab_scores with the same steering (the unsteered run at multiplier 0, as before)."""
    steering = setting(model, hook, direction, multiplier) if multiplier else None
    return ab_scores(model, items, steering, outside_ab="zero", **kwargs)


@pytest.mark.parametrize(("attention", "share_head"), [("shared", True), ("shared", False), ("repeat", True)])
@pytest.mark.parametrize(("batch_size", "max_rows"), [(2, 3), (5, 64), (1, 1), (4, 7)])
def test_cached_equals_full_forward(tiny, batch_size, max_rows, attention, share_head):
    if refuses_shared(tiny, attention):
        return
    hooks = [
        "blocks.1.hook_resid_post",
        "blocks.2.hook_resid_pre",
        "blocks.3.hook_mlp_out",
        "blocks.0.hook_attn_out",
        "blocks.2.hook_resid_mid",
    ]
    dirs = {h: direction(tiny, i) for i, h in enumerate(hooks)}
    specs = [(h, dirs[h], m) for h in hooks for m in (-2.0, 0.0, 1.5)]
    # two directions at one hook, and settings out of layer order
    specs += [(hooks[0], direction(tiny, 9), 2.5), (hooks[3], dirs[hooks[3]], -1.0)]
    cached = cached_ab_scores(
        tiny,
        ITEMS,
        [setting(tiny, *spec) for spec in specs],
        outside_ab="zero",
        batch_size=batch_size,
        max_rows=max_rows,
        attention=attention,
        share_head=share_head,
    )
    moved = 0.0
    baseline = ab_scores(tiny, ITEMS, outside_ab="zero")
    for spec, got in zip(specs, cached, strict=True):
        full = full_scores(tiny, ITEMS, *spec, batch_size=2)
        for a, b, base in zip(got, full, baseline, strict=True):
            assert abs(a.p_matching - b.p_matching) <= 1e-4
            assert abs(a.letter_mass - b.letter_mass) <= 1e-4
            assert a.logit_diff == pytest.approx(b.logit_diff, abs=1e-4, nan_ok=True)
            moved = max(moved, abs(a.p_matching - base.p_matching))
    assert moved > 1e-3  # the settings really steer
    assert all(s.p_matching == 0.0 for s in (row[4] for row in cached))  # (C) counts as 0


def test_sweep_items_engines_agree(tiny_llama):
    vec = tlsteer.SteeringVector({f"blocks.{i}.hook_resid_post": direction(tiny_llama, i) for i in range(4)})
    kwargs = dict(layers=[0, 2, 3], multipliers=[-1, 0, 2], batch_size=2)
    cached = sweep_items(tiny_llama, ITEMS, vec, engine="cached", **kwargs, outside_ab="zero")
    full = sweep_items(tiny_llama, ITEMS, vec, engine="full", **kwargs, outside_ab="zero")
    assert list(cached.columns) == list(full.columns) and len(cached) == len(full) == 3 * 3 * len(ITEMS)
    assert (cached["p_matching"] - full["p_matching"]).abs().max() <= 1e-4
    assert (cached["layer"] == full["layer"]).all() and (cached["item"] == full["item"]).all()


def test_engine_errors(tiny_llama):
    vec = tlsteer.SteeringVector({"blocks.1.hook_resid_post": direction(tiny_llama, 0)})
    with pytest.raises(
        ValueError, match=r"the cached engine steers from the end of the question; .*needs engine='full'"
    ):
        sweep_items(tiny_llama, ITEMS, vec, [1], [1.0], positions=Positions.all(), outside_ab="zero")
    with pytest.raises(ValueError, match="engine must be 'cached' or 'full', got 'fast'"):
        sweep_items(tiny_llama, ITEMS, vec, [1], [1.0], engine="fast", outside_ab="zero")
    with pytest.raises(
        ValueError, match=r"vector has d_model=3 at 'blocks.1.hook_resid_post' but model.cfg.d_model=32"
    ):
        cached_ab_scores(
            tiny_llama,
            ITEMS,
            [setting(tiny_llama, "blocks.1.hook_resid_post", torch.ones(3))],
            outside_ab="zero",
        )
    with pytest.raises(ValueError, match="multiplier must be finite"):
        cached_ab_scores(
            tiny_llama, ITEMS, [setting(tiny_llama, "blocks.1.hook_resid_post", torch.ones(32), float("nan"))]
        )


def test_auto_attention_falls_back_when_attention_is_hooked(tiny_llama):
    settings = [
        setting(tiny_llama, "blocks.1.hook_resid_post", direction(tiny_llama, 0), m) for m in (-1.0, 2.0)
    ]
    seen = []

    def record(act, hook):
        seen.append(hook.name)

    with tiny_llama.hooks(fwd_hooks=[("blocks.2.attn.hook_pattern", record)]):
        with pytest.raises(
            ValueError, match=r"attention='shared' skips the hooks attached at \['blocks.2.attn"
        ):
            cached_ab_scores(tiny_llama, ITEMS, settings, attention="shared", outside_ab="zero")
        auto = cached_ab_scores(tiny_llama, ITEMS, settings, batch_size=5, outside_ab="zero")
    assert seen  # "auto" ran TransformerLens's attention, so the user's hook fired
    shared = cached_ab_scores(
        tiny_llama, ITEMS, settings, batch_size=5, attention="shared", outside_ab="zero"
    )
    for a_row, s_row in zip(auto, shared, strict=True):
        for a, b in zip(a_row, s_row, strict=True):
            assert abs(a.p_matching - b.p_matching) <= 1e-4


def test_shared_attention_refuses_unsupported_models(tiny_gpt2):
    assert shared_attention_unsupported(tiny_gpt2) is None
    settings = [setting(tiny_gpt2, "blocks.1.hook_resid_post", direction(tiny_gpt2, 0), 1.0)]
    tiny_gpt2.set_use_attn_result(True)
    try:
        assert shared_attention_unsupported(tiny_gpt2) == "use_attn_result=True"
        with pytest.raises(ValueError, match=r"cannot run this model \(use_attn_result=True\)"):
            cached_ab_scores(tiny_gpt2, ITEMS, settings, attention="shared", outside_ab="zero")
        auto = cached_ab_scores(tiny_gpt2, ITEMS, settings, outside_ab="zero")  # falls back to "repeat"
    finally:
        tiny_gpt2.set_use_attn_result(False)
    assert [s.p_matching for s in auto[0]] == pytest.approx(
        [s.p_matching for s in cached_ab_scores(tiny_gpt2, ITEMS, settings, outside_ab="zero")[0]], abs=1e-4
    )
    with pytest.raises(
        ValueError, match=r"attention must be one of \('auto', 'shared', 'repeat'\), got 'fast'"
    ):
        cached_ab_scores(tiny_gpt2, ITEMS, settings, attention="fast", outside_ab="zero")


def test_shared_attention_restores_attention_after_an_error(tiny_llama):
    settings = [setting(tiny_llama, "blocks.1.hook_resid_post", direction(tiny_llama, 0), 1.0)]

    def boom(act, hook):
        raise RuntimeError("boom")

    with (
        tiny_llama.hooks(fwd_hooks=[("blocks.3.hook_resid_post", boom)]),
        pytest.raises(RuntimeError, match="boom"),
    ):
        cached_ab_scores(tiny_llama, ITEMS, settings, attention="shared", outside_ab="zero")
    assert all("forward" not in block.attn.__dict__ for block in tiny_llama.blocks)
    assert all(p.is_contiguous() for p in tiny_llama.parameters())  # MLP weights row-major again


def test_shared_head_runs_once_and_changes_nothing(tiny, monkeypatch):
    import tlsteer.eval.cached as engine

    if refuses_shared(tiny, "shared"):
        return

    items = [ABItem("A long shared preamble. " + it.question, it.matching, it.not_matching) for it in ITEMS]
    calls = []
    real = engine.head_cache
    monkeypatch.setattr(engine, "head_cache", lambda *a: calls.append(len(a[1])) or real(*a))
    specs = [("blocks.2.hook_resid_post", direction(tiny, 1), m) for m in (-2.0, 0.0, 2.0)]
    settings = [setting(tiny, *spec) for spec in specs]
    with_head = cached_ab_scores(tiny, items, settings, batch_size=2, attention="shared", outside_ab="zero")
    assert len(calls) == 1 and calls[0] >= 24  # the template's header and the preamble, once for 3 batches
    without = cached_ab_scores(
        tiny, items, settings, batch_size=2, attention="shared", share_head=False, outside_ab="zero"
    )
    assert len(calls) == 1
    assert all(p.is_contiguous() for p in tiny.parameters())
    for spec, a_row, b_row in zip(specs, with_head, without, strict=True):
        full = full_scores(tiny, items, *spec)
        for a, b, f in zip(a_row, b_row, full, strict=True):
            assert abs(a.p_matching - f.p_matching) <= 1e-4 and abs(b.p_matching - f.p_matching) <= 1e-4
            assert a.logit_diff == pytest.approx(f.logit_diff, abs=1e-4, nan_ok=True)


def clamp_edit(direction):
    """A non-additive edit: set the component along ``direction`` to 2 (delta depends on act)."""
    unit = direction / direction.norm()

    def edit(act):
        return (2.0 - act @ unit)[..., None] * unit

    return edit


@pytest.mark.parametrize("attention", ["shared", "repeat"])
def test_engine_sweeps_non_additive_edits_like_a_full_forward(tiny, attention):
    if refuses_shared(tiny, attention):
        return
    from tlsteer.eval.ab import ab_prompt_ids, score_logits, tokens_after_question
    from tlsteer.hooks import direction_edit
    from tlsteer.tokens import left_pad

    items = ITEMS[:4]
    specs = [  # (hook, direction, multiplier, edit)
        ("blocks.1.hook_resid_post", None, None, clamp_edit(direction(tiny, 1))),
        ("blocks.2.hook_resid_post", direction(tiny, 2), 1.5, None),
        ("blocks.2.hook_resid_mid", None, None, lambda act: -0.5 * act),
        ("blocks.1.hook_resid_post", direction(tiny, 3), 0.0, None),
    ]
    settings = [setting(tiny, hook, d, m, edit=e) for hook, d, m, e in specs]
    got = cached_ab_scores(tiny, items, settings, batch_size=3, attention=attention)
    ids = ab_prompt_ids(tiny, items)
    n_after = tokens_after_question(tiny)
    baseline = None
    for (hook, d, m, e), scores in zip(specs, got, strict=True):
        edit = e or direction_edit(d, m)
        ref = []
        for item, item_ids in zip(items, ids, strict=True):  # one item at a time, full forward
            tokens, mask = left_pad(tiny, [item_ids])
            first = tokens.shape[1] - n_after - 1
            by_hand = Steering.from_edits([(hook, edit)], positions=Positions.start_at(first))
            with torch.no_grad(), by_hand.apply(tiny):
                logits = tiny(tokens)[:, -1]
            ref += score_logits(tiny, logits, [item])
        for a, b in zip(scores, ref, strict=True):
            assert abs(a.p_matching - b.p_matching) <= 1e-4 and abs(a.logit_diff - b.logit_diff) <= 1e-3
        if e is None and m == 0:
            baseline = scores
    assert baseline is not None
    assert max(abs(a.logit_diff - b.logit_diff) for a, b in zip(got[0], baseline, strict=True)) > 1e-2


def test_each_steering_is_the_baseline_or_one_edit_at_one_hook(tiny_llama):
    """What replaced Setting's checks: Steering() is the unsteered baseline (Setting refused neither
    direction nor edit); a direction and an edit together (Setting refused both) are two edits,
    refused naming ab_scores; a non-finite direction is refused."""
    hook = "blocks.1.hook_resid_post"
    (baseline,) = cached_ab_scores(tiny_llama, ITEMS[:2], [Steering()])
    for a, b in zip(baseline, ab_scores(tiny_llama, ITEMS[:2]), strict=True):
        assert abs(a.p_matching - b.p_matching) <= 1e-4 and abs(a.logit_diff - b.logit_diff) <= 1e-4
    both = setting(tiny_llama, hook, torch.ones(32)) + setting(tiny_llama, hook, edit=lambda a: a)
    with pytest.raises(
        ValueError, match=r"one edit at one hook per steering; .* has 2: score it with .*ab_scores"
    ):
        cached_ab_scores(tiny_llama, ITEMS[:2], [both])
    bad = torch.ones(32)
    bad[0] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        cached_ab_scores(make_tiny(), ITEMS[:2], [setting(tiny_llama, hook, bad)])


def test_steerings_the_engine_cannot_share_are_refused_naming_ab_scores(tiny_llama, monkeypatch):
    import tlsteer.eval.cached as engine

    def no_forward(*args, **kwargs):
        raise AssertionError("a forward pass ran before the steerings were checked")

    monkeypatch.setattr(engine, "left_pad", no_forward)
    hook = "blocks.1.hook_resid_post"
    d = direction(tiny_llama, 0)
    good = setting(tiny_llama, hook, d, 1.0)
    two_vectors = Steering.from_vectors(
        [({hook: d}, 1.0), ({"blocks.2.hook_resid_post": d}, 1.0)], positions=question_end(tiny_llama)
    )
    cases = [
        (
            good + Steering.from_prompt("Be honest."),
            r"with a prompt prefix; score it with tlsteer.eval.ab_scores",
        ),
        (two_vectors, r"one edit at one hook per steering; .* has 2: score it with tlsteer.eval.ab_scores"),
        (good.at(Positions.all()), r"acts at every position: .*or score it with tlsteer.eval.ab_scores"),
        (good.at(Positions.last()), r"acts at last prompt token onward: .*tlsteer.eval.ab_scores"),
        (good.at(Positions.start_at(3)), r"acts at from 3: .*tlsteer.eval.ab_scores"),
        (good.at(Positions.from_end(2)), r"acts at last 2 prompt tokens onward: .*tlsteer.eval.ab_scores"),
    ]
    for steering, message in cases:
        with pytest.raises(ValueError, match=message):
            cached_ab_scores(tiny_llama, ITEMS, [good, steering], outside_ab="zero")
    with pytest.raises(TypeError, match="Steering"):  # the library's check, or the runtime type check
        cached_ab_scores(tiny_llama, ITEMS, [good, (hook, d, 1.0)], outside_ab="zero")
    with pytest.raises(ValueError, match="no steerings to score"):
        cached_ab_scores(tiny_llama, ITEMS, [], outside_ab="zero")
    with pytest.raises((TypeError, ValueError), match="steerings"):  # one Steering, not a list
        cached_ab_scores(tiny_llama, ITEMS, good, outside_ab="zero")


def make_tiny():
    from tests.conftest import make_model

    return make_model("llama")
