"""Tests on the embedded SmolLM2-135M-Instruct model (marked ``embedded``; they run in CI)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import tlsteer
from tlsteer.data import chat_prompt
from tlsteer.tokens import left_pad, tokenize

pytestmark = pytest.mark.embedded

ROOT = Path(__file__).resolve().parents[1]
CAA = ROOT.parent / "shared" / "caa"


def test_logits_match_transformers(embedded):
    from tlsteer.models import load_hf_model

    hf_model, _ = load_hf_model()
    prompt = chat_prompt(embedded, "What is the capital of France?")
    tokens = torch.tensor([tokenize(embedded, prompt)])
    with torch.no_grad():
        ours = embedded(tokens)
        theirs = hf_model(tokens).logits
    diff = (ours - theirs).abs().max().item()
    print(f"max |logit difference| vs transformers: {diff:.2e}")
    assert diff <= 1e-3


def test_tokenizer_and_chat_template(embedded):
    tok = embedded.tokenizer
    messages = [{"role": "user", "content": "Hello!"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenize(embedded, text)
    templated = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    if not isinstance(templated, list):
        templated = templated["input_ids"]
    assert ids == list(templated)
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3  # system, user, assistant
    assert tokenize(embedded, "Hello")[0] != tok.bos_token_id  # no BOS added to plain text
    assert tok.pad_token_id not in ids


def test_batched_equals_single_on_real_model(embedded):
    pairs = [
        ("I really loved the film (A)", "I really hated the film (B)"),
        ("Short (A)", "Short (B)"),
        (chat_prompt(embedded, "Is the sky blue?", "(A)"), chat_prompt(embedded, "Is it?", "(B)")),
    ]
    layers = [0, 10, 20, 29]
    batched = tlsteer.extract_activations(
        embedded, pairs, layers=layers, read=tlsteer.Read.at(-2), batch_size=6
    )
    single = tlsteer.extract_activations(
        embedded, pairs, layers=layers, read=tlsteer.Read.at(-2), batch_size=1
    )
    for hook in batched.hooks:
        for side in ("positive", "negative"):
            a, b = getattr(batched, side)[hook], getattr(single, side)[hook]
            diff = (a - b).abs().max().item()
            print(f"{hook} {side}: max |batched - single| = {diff:.2e} (norm {a.norm(dim=-1).max():.1f})")
            assert diff <= 1e-4 * max(1.0, float(a.norm(dim=-1).max()))


MODES = ["all", "min_token_index", "token_positions", "last_token_only"]


@pytest.mark.parametrize("mode", MODES)
def test_kv_cache_on_equals_off_per_step(embedded, mode):
    model = embedded
    pairs = tlsteer.load_builtin_dataset("sentiment", model, limit=12)
    vec = tlsteer.train_steering_vector(model, pairs, layers=[12], batch_size=12)
    prompts = [chat_prompt(model, "Tell me about your day."), chat_prompt(model, "Hi")]
    tokens, _ = left_pad(model, [tokenize(model, p) for p in prompts])
    width = tokens.shape[1]
    kwargs = {
        "all": {},
        "min_token_index": {"min_token_index": width},
        "token_positions": {"token_positions": [width - 1, width + 2]},
        "last_token_only": {"last_token_only": True},
    }[mode]
    runs = {}
    with vec.apply(model, multiplier=16.0, **kwargs):
        for use_cache in (True, False):
            out = model.generate(
                tokens,
                max_new_tokens=6,
                do_sample=False,
                use_past_kv_cache=use_cache,
                output_logits=True,
                verbose=False,
                stop_at_eos=False,
            )
            runs[use_cache] = torch.stack(out.logits, dim=1)
    plain = model.generate(
        tokens, max_new_tokens=6, do_sample=False, output_logits=True, verbose=False, stop_at_eos=False
    )
    if mode == "last_token_only":  # TransformerLens's generate never fires hook_embed: the anchor
        # must still be the prompt's last column, not every position
        with vec.apply(model, multiplier=16.0, min_token_index=width - 1):
            out = model.generate(
                tokens,
                max_new_tokens=6,
                do_sample=False,
                output_logits=True,
                verbose=False,
                stop_at_eos=False,
            )
        assert (torch.stack(out.logits, dim=1) - runs[True]).abs().max() <= 1e-4
    per_step = (runs[True] - runs[False]).abs().amax(dim=(0, 2))
    effect = (runs[True] - torch.stack(plain.logits, dim=1)).abs().amax(dim=(0, 2))
    print(
        f"{mode}: per-step max |cache on - off| = {[f'{x:.1e}' for x in per_step.tolist()]}; "
        f"steering effect per step = {[f'{x:.2f}' for x in effect.tolist()]}"
    )
    assert per_step.max() <= 1e-4
    assert effect.max() > 0.1


def test_steering_from_prompt_end_changes_continuation(embedded):
    model = embedded
    pairs = tlsteer.load_builtin_dataset("sentiment", model, limit=40)
    vec = tlsteer.train_steering_vector(model, pairs, layers=[12], batch_size=20)
    tokens = torch.tensor([tokenize(model, chat_prompt(model, "Tell me about your weekend."))])
    n = tokens.shape[1]
    plain = model.generate(tokens, max_new_tokens=12, do_sample=False, verbose=False)
    with vec.apply(model, multiplier=16.0, min_token_index=n):
        steered = model.generate(tokens, max_new_tokens=12, do_sample=False, verbose=False)
    assert steered[0, n] == plain[0, n]  # the first new token is predicted from the unsteered prompt
    assert not torch.equal(steered, plain)


@pytest.mark.skipif(not CAA.is_dir(), reason="../shared/caa is not beside the repository")
def test_caa_dataset_reads_answer_letter(embedded):
    path = CAA / "generate" / "corrigible-neutral-HHH" / "generate_dataset.json"
    pairs = tlsteer.load_caa_dataset(path, embedded, limit=8)
    for pair in pairs:
        ids = tokenize(embedded, pair.positive)
        assert pair.read_index == -2
        assert embedded.tokenizer.decode([ids[pair.read_index]]) in {"A", "B"}
        assert pair.positive.startswith("<|im_start|>system")
        assert re.search(r"<\|im_start\|>assistant\n\([AB]\)$", pair.positive)


def test_readme_quickstart_runs(embedded, tmp_path, monkeypatch):  # noqa: ARG001 - warms the cache
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"<!-- quickstart -->\n```python\n(.*?)```", readme, re.S)
    assert code, "README has no quickstart block"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code.group(1), "README quickstart", "exec"), namespace)  # noqa: S102
    assert (tmp_path / "sentiment.safetensors").is_file()
    loaded = tlsteer.SteeringVector.load(tmp_path / "sentiment.safetensors")
    assert loaded.layers == [12]


def test_sweep_engines_equal_full_forward_on_real_model(embedded):
    from tlsteer.data import builtin_dataset_path, load_ab_items
    from tlsteer.eval.ab import ab_scores, question_end
    from tlsteer.eval.cached import cached_ab_scores

    items = load_ab_items(builtin_dataset_path("sentiment"))[60:66]
    gen = torch.Generator().manual_seed(0)
    where = question_end(embedded)  # CAA's positions, the ones the cached engine runs
    settings = []
    for layer in (3, 12, 25):
        d = torch.randn(embedded.cfg.d_model, generator=gen)
        vec = tlsteer.SteeringVector({f"blocks.{layer}.hook_resid_post": 20 * d / d.norm()})
        settings += [(vec, m) for m in (-1.0, 0.0, 1.0)]
    steerings = [vec.steering(m, positions=where) for vec, m in settings]
    shared = cached_ab_scores(embedded, items, steerings, batch_size=4, attention="shared")
    repeat = cached_ab_scores(embedded, items, steerings, batch_size=4, attention="repeat")
    worst = {"shared": 0.0, "repeat": 0.0}
    moved = 0.0
    base = ab_scores(embedded, items)
    for k, (vec, m) in enumerate(settings):
        full = ab_scores(embedded, items, vec.steering(m, positions=where) if m else None)
        for name, got in (("shared", shared[k]), ("repeat", repeat[k])):
            for a, b in zip(got, full, strict=True):
                worst[name] = max(
                    worst[name], abs(a.p_matching - b.p_matching), abs(a.logit_diff - b.logit_diff)
                )
        moved = max(moved, max(abs(f.logit_diff - b0.logit_diff) for f, b0 in zip(full, base, strict=True)))
    print(f"max |diff| vs full forward: {worst}; largest steering effect on logit diff {moved:.3f}")
    assert worst["shared"] <= 1e-4 and worst["repeat"] <= 1e-4
    assert moved > 0.05


def sentiment_vector(model, layer=16, norm=8.0):
    pairs = tlsteer.load_builtin_dataset("sentiment", model)[:24]
    vec = tlsteer.train_steering_vector(model, pairs, layers=[layer], batch_size=12)
    return vec * (norm / vec.norms()[vec.hooks[0]])


GEN_PROMPTS = ["Tell me about your weekend.", "Hi", "Describe the view from a very tall mountain at dawn."]


@pytest.mark.parametrize(
    "mode",
    [{}, {"min_token_index": 20}, {"token_positions": [5, 31, 33]}, {"last_token_only": True}],
    ids=["all", "from", "explicit", "last"],
)
def test_batched_generation_rows_equal_rows_alone(embedded, mode):
    vec = sentiment_vector(embedded)
    kwargs = dict(max_new_tokens=4, chat=True, stop_at_eos=False, keep_logits=True)
    steering = vec.steering(1.0, positions=tlsteer.Positions.make(**mode))
    batched = tlsteer.generate_tokens(embedded, GEN_PROMPTS, steering, **kwargs)
    worst = 0.0
    for i, prompt in enumerate(GEN_PROMPTS):
        alone = tlsteer.generate_tokens(embedded, [prompt], steering, **kwargs)
        worst = max(worst, float((batched.step_logits[i] - alone.step_logits[0]).abs().max()))
        assert batched.new_tokens[i] == alone.new_tokens[0]
    print(f"{mode}: max |logit diff| batched vs alone {worst:.2e}")
    assert worst <= 1e-4


def test_last_token_only_second_forward_is_steered_at_its_last_column(embedded):
    """Defect 1 on the real model: the logits of a second, longer forward equal a fresh block's."""
    vec = sentiment_vector(embedded)
    prompt = chat_prompt(embedded, "Is the sky blue?")
    longer = prompt + "(A) yes, it is"
    a = torch.tensor([tokenize(embedded, prompt)])
    b = torch.tensor([tokenize(embedded, longer)])
    with torch.no_grad():
        with vec.apply(embedded, 2.0, last_token_only=True):
            embedded(a)
            carried = embedded(b)
        with vec.apply(embedded, 2.0, last_token_only=True):
            fresh = embedded(b)
        plain = embedded(b)
    assert (carried - fresh).abs().max() <= 1e-4
    assert (fresh[0, -1] - plain[0, -1]).abs().max() > 0.1 and (
        fresh[0, :-1] - plain[0, :-1]
    ).abs().max() == 0


def test_transformer_lens_generate_on_a_left_padded_batch(embedded):
    """Defect 3 on the real model: leading pads are masked by TransformerLens's generate."""
    texts = [chat_prompt(embedded, "Hi"), chat_prompt(embedded, "Tell me a long story about a dragon.")]
    tokens, _ = left_pad(embedded, [tokenize(embedded, t) for t in texts])

    def steps(toks):
        out = embedded.generate(
            toks, max_new_tokens=3, do_sample=False, output_logits=True, verbose=False, stop_at_eos=False
        )
        return torch.stack(out.logits, dim=1)

    batched = steps(tokens)
    for row, text in enumerate(texts):
        alone = steps(torch.tensor([tokenize(embedded, text)]))
        assert (batched[row] - alone[0]).abs().max() <= 1e-4


def test_demo_runs_the_main_job_batched(embedded, capsys):  # noqa: ARG001 - warms the cache
    """The README's main job (``tlsteer demo``) at small settings: batched generations and the table."""
    from tlsteer.demo import DemoConfig, run_demo

    out = run_demo(DemoConfig(n_train=16, max_new_tokens=6))
    printed = capsys.readouterr().out
    assert [g["prompt"] for g in out["generations"]] == [
        "Tell me about your weekend.",
        "How was the new restaurant?",
        "Describe your commute.",
    ]
    assert all(len(g["texts"]) == 3 and all(g["texts"]) for g in out["generations"])
    assert any(g["texts"][0] != g["texts"][1] or g["texts"][2] != g["texts"][1] for g in out["generations"])
    assert [row["multiplier"] for row in out["ab"]] == [-16.0, -8.0, 0.0, 8.0, 16.0]
    assert "USER: Describe your commute." in printed and "p(matching)" in printed
    plain = tlsteer.generate(embedded, ["Describe your commute."], max_new_tokens=6, chat=True)
    assert out["generations"][2]["texts"][1] == plain[0]  # the unsteered column is the plain model
