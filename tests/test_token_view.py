"""The token view: projections and KL against hand-computed references, SAE features, HTML, plots."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import subprocess

import pytest
import torch
from matplotlib.figure import Figure

import tlsteer
from tests.test_sae import random_sae
from tlsteer import Positions, Steering, SteeringVector
from tlsteer.eval.token_view import TokenView, byte_level_bytes, feature_token_view, token_text, token_view
from tlsteer.eval.token_view_render import split_characters, token_bytes, token_label, token_segments
from tlsteer.sae import feature_edit
from tlsteer.sae.adapter import as_feature_dictionary, sae_fingerprint
from tlsteer.vector import VectorMetadata

HOOK = "blocks.1.hook_resid_post"
PROMPT = "The cat sat on the mat"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def make_vector(model, layers=(1,), seed=0) -> SteeringVector:
    gen = torch.Generator().manual_seed(seed)
    directions = {
        f"blocks.{layer}.hook_resid_post": torch.randn(model.cfg.d_model, generator=gen) for layer in layers
    }
    return SteeringVector(directions, VectorMetadata(model_name=model.cfg.model_name, note="random"))


def steered_reference(model, vector, multiplier, ids, hook, min_token_index=0):
    """Logits and the residual at ``hook`` with and without steering, by plain run_with_cache."""
    tokens = torch.tensor([ids])
    base_logits, base = model.run_with_cache(tokens, names_filter=hook)
    with vector.apply(model, multiplier, min_token_index=min_token_index):
        logits, steered = model.run_with_cache(tokens, names_filter=hook)
    return base_logits[0], base[hook][0], logits[0], steered[hook][0]


@pytest.fixture(scope="module")
def sae():
    return random_sae("standard")


@pytest.fixture(scope="module")
def fd(sae):
    """The SAE as the feature dictionary the token view reads."""
    return as_feature_dictionary(sae)


# -- the numbers ------------------------------------------------------------------------------------
@pytest.mark.parametrize("layer", [None, 2])
def test_projection_equals_hand_computed_run_with_cache_projection(tiny, layer):
    vec = make_vector(tiny, layers=(1, 2))
    view = token_view(tiny, vec, PROMPT, 3.0, max_new_tokens=5, layer=layer, positions=Positions.start_at(4))
    hook = f"blocks.{layer or 1}.hook_resid_post"
    assert view.hook_name == hook
    _, base, _, steered = steered_reference(tiny, vec, 3.0, list(view.token_ids), hook, 4)
    unit = vec[hook] / vec[hook].norm()
    torch.testing.assert_close(torch.tensor(view.projection), base @ unit, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.tensor(view.steered_projection), steered @ unit, rtol=1e-5, atol=1e-5)
    assert view.direction_norm == pytest.approx(float(vec[hook].norm()))


def test_kl_is_zero_before_steering_starts_and_equals_the_reference_after(tiny):
    vec = make_vector(tiny)
    start = 7
    view = token_view(tiny, vec, PROMPT, 4.0, max_new_tokens=6, positions=Positions.start_at(start))
    base_logits, _, logits, _ = steered_reference(tiny, vec, 4.0, list(view.token_ids), HOOK, start)
    reference = torch.nn.functional.kl_div(  # kl_div(log q, log p) = KL(p || q): KL(unsteered || steered)
        logits.double().log_softmax(-1),
        base_logits.double().log_softmax(-1),
        log_target=True,
        reduction="none",
    ).sum(-1)
    kl = torch.tensor(view.kl, dtype=torch.float64)
    torch.testing.assert_close(kl, reference.clamp_min(0), rtol=1e-6, atol=1e-9)
    assert kl[:start].abs().max() < 1e-9
    assert kl[start:].min() > 1e-4
    assert view.min_token_index == start


def test_multiplier_zero_gives_zero_kl_and_the_unsteered_projection(tiny_llama):
    view = token_view(tiny_llama, make_vector(tiny_llama), PROMPT, 0.0, max_new_tokens=4)
    assert max(view.kl) == 0.0
    assert view.steered_projection == view.projection


@pytest.mark.parametrize("chat", [False, True])
def test_generated_tokens_are_the_greedy_steered_continuation(tiny, chat):
    vec = make_vector(tiny)
    start = 3
    view = token_view(
        tiny, vec, PROMPT, 5.0, max_new_tokens=8, chat=chat, positions=Positions.start_at(start)
    )
    steering = vec.steering(5.0, positions=Positions.start_at(start))
    out = tlsteer.generate_tokens(tiny, [PROMPT], steering, max_new_tokens=8, chat=chat)
    n = len(out.prompt_tokens[0])
    assert view.token_ids == out.prompt_tokens[0] + out.new_tokens[0]
    assert view.n_prompt == n and view.generated == (False,) * n + (True,) * (len(view.tokens) - n)
    text = tlsteer.generate(tiny, [PROMPT], steering, max_new_tokens=8, chat=chat)
    assert tiny.tokenizer.decode(list(view.token_ids[n:]), skip_special_tokens=True) == text[0]
    assert view.tokens == tuple(tiny.tokenizer.decode([i]) for i in view.token_ids)
    # teacher-forced, the steered forward picks the same tokens as KV-cached generation did
    _, _, logits, _ = steered_reference(tiny, vec, 5.0, list(view.token_ids), HOOK, start)
    assert logits[n - 1 : -1].argmax(-1).tolist() == list(view.token_ids[n:])


def test_max_new_tokens_zero_views_the_prompt_alone(tiny_llama):
    view = token_view(tiny_llama, make_vector(tiny_llama), PROMPT, 2.0, max_new_tokens=0)
    assert view.token_ids == tuple(tlsteer.tokenize(tiny_llama, PROMPT)) and not any(view.generated)


def test_feature_activations_equal_sae_encode_of_the_cached_residual(tiny_llama, sae, fd):
    ids = tlsteer.tokenize(tiny_llama, PROMPT)
    view = feature_token_view(tiny_llama, fd, [3, 17, 40], PROMPT)
    _, cache = tiny_llama.run_with_cache(torch.tensor([ids]), names_filter=HOOK)
    expected = sae.encode(cache[HOOK][0])[:, [3, 17, 40]].T
    torch.testing.assert_close(torch.tensor(view.activations), expected, rtol=1e-5, atol=1e-5)
    assert view.kl is None and view.unsteered_activations is None and view.steering == ""
    same = feature_token_view(tiny_llama, fd, torch.tensor([3, 17, 40]), torch.tensor(ids))
    assert same.activations == view.activations


def test_feature_view_under_steering_reads_the_steered_residual(tiny_llama, sae, fd):
    vec = make_vector(tiny_llama)
    base_view = token_view(tiny_llama, vec, PROMPT, 4.0, max_new_tokens=5, positions=Positions.start_at(5))
    steering = vec.steering(4.0, positions=Positions.start_at(5))
    view = feature_token_view(tiny_llama, fd, 9, base_view, steering)
    assert view.token_ids == base_view.token_ids and view.generated == base_view.generated
    _, base, _, steered = steered_reference(tiny_llama, vec, 4.0, list(view.token_ids), HOOK, 5)
    torch.testing.assert_close(
        torch.tensor(view.activations[0]), sae.encode(steered)[:, 9], atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(
        torch.tensor(view.unsteered_activations[0]), sae.encode(base)[:, 9], atol=1e-5, rtol=1e-5
    )
    assert view.kl == pytest.approx(base_view.kl, abs=1e-9)
    # the view names the steering as the Steering value does (a Steering keeps no vector note)
    assert view.steering == repr(steering) and HOOK in view.steering and "from 5" in view.steering
    assert view.min_token_index == 5


def test_feature_view_generates_under_a_feature_edit(tiny_llama, sae, fd):
    edit = feature_edit(sae, [5], "clamp", values=6.0)
    steering = Steering.from_edits([(HOOK, edit)])
    view = feature_token_view(tiny_llama, fd, [5], PROMPT, steering, max_new_tokens=6)
    out = tlsteer.generate_tokens(tiny_llama, [PROMPT], steering, max_new_tokens=6)
    assert view.token_ids == out.prompt_tokens[0] + out.new_tokens[0]
    assert sum(view.generated) == len(out.new_tokens[0]) and min(view.kl) > 0
    assert view.steering == repr(steering) == f"Steering(1 edit(s) at {HOOK}; every position)"


# -- rendering --------------------------------------------------------------------------------------
def hand_view(tokens) -> TokenView:
    n = len(tokens)
    return TokenView(
        tokens=tuple(tokens),
        token_ids=tuple(range(n)),
        generated=tuple(i >= n // 2 for i in range(n)),
        projection=tuple(float(i - n // 2) for i in range(n)),
        steered_projection=tuple(float(i) for i in range(n)),
        kl=tuple(0.0 if i < 2 else 0.1 * i for i in range(n)),
        hook_name=HOOK,
        multiplier=2.0,
        min_token_index=2,
        direction_norm=1.0,
    )


def test_html_escapes_tokens_shows_whitespace_and_has_one_span_per_token():
    tokens = ["<script>alert(1)</script>", " a&b", "\n", "\t\x0b", "", "x", '"q"', "end"]
    page = hand_view(tokens).to_html()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "a&amp;b" in page and "&quot;q&quot;" in page
    assert len(re.findall(r'<span class="tok[ "]', page)) == len(tokens)
    assert len(re.findall(r'<span class="tok gen"', page)) == len(tokens) // 2
    assert page.count('class="sep"') == 1 and page.count('class="mark"') == 1  # generation, steering start
    assert "↵" in page and "<br>" in page and "·" in page and "\\x0b" in page and "∅" in page
    # the colormap is centred at 0: projections -4..3 go from its blue end to near-white at 0
    backgrounds = re.findall(r'class="t" style="background:#([0-9a-f]{6})', page)
    rgb = [tuple(int(c[i : i + 2], 16) for i in (0, 2, 4)) for c in backgrounds]
    assert len(rgb) == len(tokens) and backgrounds[0] == "053061"
    assert min(rgb[4]) >= 0xF0 and max(rgb[4]) - min(rgb[4]) <= 2
    assert rgb[7][0] > rgb[7][2] and rgb[3][2] > rgb[3][0]  # above 0 red, below 0 blue
    heights = [float(h) for h in re.findall(r'class="k" style="height:([0-9.]+)px"', page)]
    assert heights == pytest.approx([8.0 * k / 0.7 for k in hand_view(tokens).kl], abs=0.01)  # KL 0..0.7
    assert page == hand_view(tokens)._repr_html_()
    full = hand_view(tokens).to_html(standalone=True)
    assert full.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in full


def test_token_segments_and_labels_make_whitespace_visible():
    assert token_segments(" hi\n") == [("·", True), ("hi", False), ("↵", True)]
    assert token_segments("") == [("∅", True)]
    assert token_label("$x$ \x00") == r"\$x\$·\x00"


def test_plot_draws_one_bar_per_token_in_two_aligned_panels(tiny_llama, tmp_path):
    view = token_view(
        tiny_llama, make_vector(tiny_llama), PROMPT, 3.0, max_new_tokens=5, positions=Positions.start_at(4)
    )
    fig = view.plot(tmp_path / "view.png")
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    for ax, values in zip(fig.axes, (view.projection, view.kl), strict=True):
        bars = ax.containers[0]
        assert len(bars) == len(view.tokens)
        assert [b.get_height() for b in bars] == pytest.approx(list(values))
    assert fig.axes[0].get_shared_x_axes().joined(fig.axes[0], fig.axes[1])
    assert [t.get_text() for t in fig.axes[1].get_xticklabels()] == [token_label(t) for t in view.tokens]
    assert (tmp_path / "view.png").read_bytes().startswith(PNG_MAGIC)


def test_an_attention_sink_at_token_0_does_not_set_the_scale():
    view = dataclasses.replace(hand_view(list("abcdef")), projection=(1000.0, 1.0, -2.0, 0.5, 2.0, 0.0))
    ax = view.plot().axes[0]
    assert ax.get_ylim()[1] < 10 and "token 0: 1000 (off scale)" in [t.get_text() for t in ax.texts]
    page = view.to_html()
    assert "+2</span>" in page and "token 0, at 1000, is off the scale" in page


def test_feature_view_renders_a_strip_and_a_panel_per_feature(tiny_llama, sae, fd, tmp_path):
    vec = make_vector(tiny_llama)
    view = feature_token_view(
        tiny_llama, fd, [1, 2], PROMPT, vec.steering(2.0, positions=Positions.start_at(3))
    )
    page = view.to_html()
    assert page.count('class="strip"') == 2
    assert len(re.findall(r'<span class="tok[ "]', page)) == 2 * len(view.tokens)
    assert len(view.plot(tmp_path / "f.png").axes) == 3  # two features and the KL
    assert len(feature_token_view(tiny_llama, fd, [1, 2], PROMPT).plot().axes) == 2


def test_to_dict_is_json_ready(tiny_llama, sae, fd):
    view = token_view(tiny_llama, make_vector(tiny_llama), PROMPT, 1.0, max_new_tokens=3)
    data = json.loads(json.dumps(view.to_dict()))
    assert data["projection"] == list(view.projection) and data["n_prompt"] == view.n_prompt
    assert data["hook_name"] == HOOK and data["multiplier"] == 1.0
    feats = json.loads(json.dumps(feature_token_view(tiny_llama, fd, 4, PROMPT).to_dict()))
    assert feats["features"] == [4] and len(feats["activations"][0]) == len(
        tlsteer.tokenize(tiny_llama, PROMPT)
    )
    assert feats["dictionary_fingerprint"] == sae_fingerprint(sae)  # ties the view to its SAE


# -- bad inputs -------------------------------------------------------------------------------------
def test_bad_inputs_name_the_value_and_what_is_valid(tiny_llama, sae):
    vec = make_vector(tiny_llama)
    cases = [
        (dict(prompt=""), ValueError, "prompt is empty"),
        (dict(prompt=["a"]), TypeError, "prompt must be a string, got list"),
        (dict(multiplier=float("nan")), ValueError, "multiplier must be finite, got nan"),
        (dict(multiplier=math.inf), ValueError, "multiplier must be finite, got inf"),
        (dict(multiplier="2"), TypeError, "multiplier must be a real number"),
        (dict(layer=3), ValueError, r"layer=3 is not a layer of this vector; its layers: \[1\]"),
        (dict(layer="blocks.0.hook_resid_post"), ValueError, "not in this vector; its hooks"),
        (dict(layer=1.0), TypeError, "layer must be an int|parameter 'layer'"),  # or the runtime type check
        (
            dict(vector={HOOK: torch.ones(32)}),
            TypeError,
            r"SteeringVector, got dict; wrap .* SteeringVector\(",
        ),
        (dict(max_new_tokens=-1), ValueError, "max_new_tokens must be an int >= 0"),
        (dict(chat="yes"), TypeError, "chat must be True or False, got 'yes'|parameter 'chat'"),
        (dict(positions=Positions.last()), ValueError, r"steers every position or from an index on"),
        (dict(positions=Positions.at([2, 4])), ValueError, r"from an index on .*got at \[2, 4\]"),
    ]
    for kwargs, kind, message in cases:
        args = {"vector": vec, "prompt": PROMPT, "multiplier": 1.0, "max_new_tokens": 2, **kwargs}
        with pytest.raises(kind, match=message):
            token_view(tiny_llama, **args)
    with pytest.raises(ValueError, match="min_token_index=-2 is negative"):
        token_view(tiny_llama, vec, PROMPT, 1.0, positions=Positions.start_at(-2))
    zero = SteeringVector({HOOK: torch.zeros(32)})
    with pytest.raises(ValueError, match="direction at 'blocks.1.hook_resid_post' is zero"):
        token_view(tiny_llama, zero, PROMPT, 1.0)
    view = hand_view(["a", "b"])
    with pytest.raises(ValueError, match="vmax must be a number > 0 .*, got -1"):
        view.to_html(vmax=-1)


def test_bad_feature_view_inputs(tiny_llama, sae, fd):
    with pytest.raises(
        IndexError, match=r"feature 64 is out of range: the dictionary has width=64 features \(valid: 0..63\)"
    ):
        feature_token_view(tiny_llama, fd, [1, 64], PROMPT)
    with pytest.raises(TypeError, match="feature ids must be ints, got 1.5"):
        feature_token_view(tiny_llama, fd, [1.5], PROMPT)
    with pytest.raises(ValueError, match=r"token ids must be ints in 0..105 .*got \[999\]"):
        feature_token_view(tiny_llama, fd, 1, [5, 999])
    with pytest.raises(ValueError, match="tokens is empty"):
        feature_token_view(tiny_llama, fd, 1, [])
    with pytest.raises(TypeError, match="prompt must be a string, token ids or a TokenView, got float"):
        feature_token_view(tiny_llama, fd, 1, 3.5)
    with pytest.raises(ValueError, match="max_new_tokens > 0 needs a text prompt"):
        feature_token_view(tiny_llama, fd, 1, [5, 6], max_new_tokens=3)
    with pytest.raises(TypeError, match="expected a feature dictionary .* got object lacking hook_name"):
        feature_token_view(tiny_llama, object(), 1, PROMPT)
    # a bare sae-lens SAE is not a dictionary: the error says how to adapt it
    with pytest.raises(TypeError, match=r"StandardSAE lacking hook_name, .*as_feature_dictionary\(sae\)"):
        feature_token_view(tiny_llama, sae, 1, PROMPT)


def test_views_refuse_a_vector_made_for_another_model_unless_check_model_is_false(tiny_llama, fd):
    other = SteeringVector({HOOK: make_vector(tiny_llama)[HOOK]}, VectorMetadata(model_name="other-model"))
    anonymous = SteeringVector({HOOK: other[HOOK]})
    refused = "made for model 'other-model' but this model is 'tiny-llama'; pass check_model=False"
    with pytest.raises(ValueError, match=refused):
        token_view(tiny_llama, other, PROMPT, 2.0, max_new_tokens=3)
    assert token_view(tiny_llama, other, PROMPT, 2.0, max_new_tokens=3, check_model=False) == token_view(
        tiny_llama, anonymous, PROMPT, 2.0, max_new_tokens=3
    )
    with pytest.raises(ValueError, match=refused):
        feature_token_view(tiny_llama, fd, [1, 2], PROMPT, other.steering(2.0))
    forced = feature_token_view(tiny_llama, fd, [1, 2], PROMPT, other.steering(2.0), check_model=False)
    plain = feature_token_view(tiny_llama, fd, [1, 2], PROMPT, anonymous.steering(2.0))
    assert forced.activations == plain.activations and forced.kl == plain.kl and max(forced.kl) > 0


# -- a real browser ---------------------------------------------------------------------------------
def test_html_renders_in_a_headless_browser(tiny_llama, tmp_path):
    browser = next((b for b in map(shutil.which, BROWSERS) if b), None)
    if browser is None:
        pytest.skip(
            f"no headless browser on PATH (looked for {', '.join(BROWSERS)}); apt-get install chromium"
        )
    vec = make_vector(tiny_llama)
    view = token_view(
        tiny_llama,
        vec,
        "a <script>alert(1)</script>\nb",
        3.0,
        max_new_tokens=6,
        positions=Positions.start_at(4),
    )
    page = tmp_path / "view.html"
    page.write_text(view.to_html(standalone=True), encoding="utf-8")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=900,260"]
    url = page.as_uri()
    dom = subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert len(re.findall(r'<span class="tok[ "]', dom.stdout)) == len(view.tokens)
    assert "<script" not in dom.stdout  # the browser parsed no script element out of the tokens
    shot = tmp_path / "view.png"
    run = subprocess.run([browser, *flags, f"--screenshot={shot}", url], capture_output=True, timeout=120)
    assert run.returncode == 0 and shot.read_bytes().startswith(PNG_MAGIC)
    from matplotlib.image import imread

    pixels = imread(str(shot))[..., :3]
    coloured = (abs(pixels[..., 0] - pixels[..., 2]) > 0.2).sum()  # red or blue token backgrounds
    assert int(coloured) > 500, "the screenshot shows no coloured tokens"


# -- the embedded model -----------------------------------------------------------------------------
@pytest.mark.embedded
def test_token_view_on_the_embedded_model(embedded):
    model = embedded
    pairs = tlsteer.load_builtin_dataset("sentiment", model, limit=8)
    vec = tlsteer.train_steering_vector(model, pairs, layers=[9], batch_size=8)
    prompt = tlsteer.chat_prompt(model, "Describe your day.")
    n = len(tlsteer.tokenize(model, prompt))
    view = token_view(model, vec, prompt, 8.0, max_new_tokens=6, positions=Positions.start_at(n))
    hook = vec.hooks[0]
    base_logits, base, _, _ = steered_reference(model, vec, 8.0, list(view.token_ids), hook, n)
    unit = vec[hook].float() / vec[hook].float().norm()
    torch.testing.assert_close(torch.tensor(view.projection), base.float() @ unit, rtol=1e-4, atol=1e-3)
    assert max(view.kl[:n]) < 1e-9 and min(view.kl[n:]) > 0
    out = tlsteer.generate_tokens(
        model, [prompt], vec.steering(8.0, positions=Positions.start_at(n)), max_new_tokens=6
    )
    assert view.token_ids == out.prompt_tokens[0] + out.new_tokens[0]
    assert len(re.findall(r'<span class="tok[ "]', view.to_html())) == len(view.tokens)
    assert "<|im_start|>" in "".join(view.tokens) and "&lt;|im_start|&gt;" in view.to_html()


@pytest.mark.embedded
def test_view_command_writes_the_same_view_as_token_view(embedded, tmp_path, capsys):
    from tlsteer.cli import main

    pairs = tlsteer.load_builtin_dataset("sentiment", embedded, limit=8)
    vec = tlsteer.train_steering_vector(embedded, pairs, layers=[9], batch_size=8)
    vec.to_gguf(tmp_path / "v.gguf")
    html, png, out = tmp_path / "view.html", tmp_path / "view.png", tmp_path / "view.json"
    args = ["view", "--vector", str(tmp_path / "v.gguf"), "--prompt", "Describe your day.", "--chat"]
    args += ["--multiplier", "8", "--max-new-tokens", "5", "--min-token-index", "20"]
    assert main([*args, "--html", str(html), "--png", str(png), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    direct = token_view(
        embedded,
        vec,
        "Describe your day.",
        8.0,
        max_new_tokens=5,
        chat=True,
        positions=Positions.start_at(20),
    )
    assert tuple(data["token_ids"]) == direct.token_ids and sum(data["generated"]) == 5
    assert data["projection"] == pytest.approx(direct.projection, rel=1e-4, abs=1e-3)
    assert data["kl"] == pytest.approx(direct.kl, rel=1e-3, abs=1e-6)
    page = html.read_text(encoding="utf-8")
    assert page.lower().startswith("<!doctype html") and len(
        re.findall(r'<span class="tok[ "]', page)
    ) == len(direct.tokens)
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert "5 generated" in capsys.readouterr().out


# -- byte-level BPE: characters split over tokens ------------------------------------------------------
def byte_level_tokenizer():
    """A GPT-2 style byte-level BPE tokenizer, built offline: the 256 byte characters, and merges that
    make ``'ðŁĺ'`` (the first 3 bytes of 😀) and ``'ï¿½'`` (a whole U+FFFD) single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(["<eos>", *sorted(pre_tokenizers.ByteLevel.alphabet())])}
    merges = [("ð", "Ł"), ("ðŁ", "ĺ"), ("ï", "¿"), ("ï¿", "½")]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    inner = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    inner.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=inner, eos_token="<eos>")


def test_byte_level_bytes_inverts_the_byte_level_alphabet():
    from tokenizers import pre_tokenizers

    assert byte_level_bytes("ðŁĺ") == "😀".encode()[:3] and byte_level_bytes("Ģ") == b"\x80"
    assert byte_level_bytes("Ġcat") == b" cat" and byte_level_bytes("<0xE7>") == b"\xe7"
    assert byte_level_bytes("▁cat") is None and byte_level_bytes("") is None
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # the tokenizers library's own alphabet
    assert sorted(byte_level_bytes(ch)[0] for ch in alphabet) == list(range(256))


def test_split_characters_show_as_byte_escapes_not_replacement_characters():
    tok = byte_level_tokenizer()
    text = "hi 😀 猫 \ufffd"
    ids = tok.encode(text)
    assert tok.convert_ids_to_tokens(ids)[3:5] == ["ðŁĺ", "Ģ"]
    assert tok.decode(ids[3:4]) == "\ufffd"  # what the view showed before
    shown = [token_text(tok, i) for i in ids]
    assert shown == ["h", "i", " ", r"\xf0\x9f\x98", r"\x80", " ", r"\xe7", r"\x8c", r"\xab", " ", "\ufffd"]
    assert b"".join(token_bytes(t) for t in shown) == text.encode()  # lossless
    notes = split_characters(shown)
    assert notes[3] == notes[4] == "'😀' (U+1F600) across tokens 3-4"
    assert notes[6] == notes[7] == notes[8] == "'猫' (U+732B) across tokens 6-8"
    assert notes[:3] == ["", "", ""] and notes[10] == ""  # a real U+FFFD in one token stays itself
    assert token_segments(r"a\xf0\x9f") == [("a", False), (r"\xf0\x9f", True)]
    assert token_segments(r"\x41") == [(r"\x41", False)]  # only bytes >= 0x80 are escapes
    assert token_label(r"\xe7") == r"\xe7"


def test_token_view_of_a_byte_level_model_shows_emoji_bytes(tmp_path):
    from transformer_lens import HookedTransformer
    from transformer_lens.config.hooked_transformer_config import HookedTransformerConfig

    from tlsteer.models import attach_tokenizer

    tok = byte_level_tokenizer()
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=16, d_head=4, n_heads=4, d_mlp=32, n_ctx=64, d_vocab=len(tok), act_fn="gelu",
        normalization_type="LN", seed=0, device="cpu", dtype=torch.float32, default_prepend_bos=False,
    )  # fmt: skip
    model = HookedTransformer(cfg)
    attach_tokenizer(model, tok)
    vec = SteeringVector({HOOK: torch.ones(16)})
    view = token_view(model, vec, "I 😀 猫", 2.0, max_new_tokens=2, stop_at_eos=False)
    assert "\ufffd" not in "".join(view.tokens)
    assert view.tokens[:7] == ("I", " ", r"\xf0\x9f\x98", r"\x80", " ", r"\xe7", r"\x8c")
    page = view.to_html()
    assert r'<i class="ws">\xf0\x9f\x98</i>' in page
    assert "part of &#x27;😀&#x27; (U+1F600) across tokens 2-3" in page
    view.plot(tmp_path / "v.png")
