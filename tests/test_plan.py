"""The pre-registered analysis plan: read, checked, hashed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tlsteer.experiments.plan import load_plan

PLANS = Path(__file__).parents[1] / "benchmarks" / "plans"
COMMITTED = PLANS / "verdict-1.toml"


@pytest.mark.parametrize("name", ["verdict-1", "verdict-2", "codebooks-1"])
def test_the_committed_plans_load_and_their_hash_is_the_files(name: str) -> None:
    path = PLANS / f"{name}.toml"
    plan = load_plan(path)
    assert plan.name == name
    assert plan.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert plan.record() == {"path": plan.path, "sha256": plan.sha256}
    assert plan.analysis["correction"] == "holm" and plan.analysis["reference"] == "caa"
    config = plan.config()
    assert config.budgets == (plan.design["budget"],) and config.seeds == (plan.design["seed"],)
    assert config.n_prompts == plan.design["n_test_prompts"] >= 120
    assert config.n_random == plan.design["n_random_directions"] >= 8
    assert "speaking_styles" in plan.design["class_sets"]


def test_a_plan_names_its_model_or_is_the_first_models() -> None:
    assert load_plan(COMMITTED).model == "smollm2-135m-instruct"  # the plans before the second model
    gemma = load_plan(PLANS / "gemma-ranking-1.toml")
    assert gemma.model == "gemma-3-270m" and gemma.design["layer"] == 3
    assert "model" not in gemma.design and gemma.design["class_sets"] == ["speaking_styles"]


def test_an_unknown_model_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(COMMITTED.read_text().replace("[design]", '[design]\nmodel = "gpt-5"', 1))
    with pytest.raises(ValueError, match=r"\[design\] model must be one of .*'gemma-3-270m'.*got 'gpt-5'"):
        load_plan(bad)


def test_one_changed_byte_changes_the_hash(tmp_path: Path) -> None:
    text = COMMITTED.read_text()
    copy = tmp_path / "p.toml"
    copy.write_text(text.replace("margin = 0.05", "margin = 0.06"))
    assert load_plan(copy).sha256 != load_plan(COMMITTED).sha256
    assert load_plan(copy).analysis["margin"] == 0.06


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        ("margin = 0.05", "", "\\[analysis\\] has no 'margin'"),
        ("margin = 0.05", "margin = 0.05\nmargins = 1", "an unknown key 'margins'"),
        ('correction = "holm"', 'correction = "bonferroni"', "correction must be 'holm'"),
        ("margin = 0.05", 'margin = "small"', "margin must be a float"),
        ('reference = "caa"', 'reference = "steer"', "reference 'steer' is not among the methods"),
        ("budget = 0.5", "budget = -1", "budgets must be finite numbers > 0"),
        ('name = "verdict-1"', "", "the plan needs a name"),
    ],
)
def test_a_bad_plan_is_refused_naming_the_key(tmp_path: Path, old: str, new: str, match: str) -> None:
    text = COMMITTED.read_text()
    assert old in text
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace(old, new, 1))
    with pytest.raises(ValueError, match=match):
        load_plan(bad)


def test_a_missing_or_broken_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no plan file"):
        load_plan(tmp_path / "none.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("name = [")
    with pytest.raises(ValueError, match="not a TOML plan"):
        load_plan(broken)
