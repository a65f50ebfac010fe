"""The comparison's typed config and result: validation, the committed JSON, frames.

Every committed ``benchmarks/results/**/feature_vs_caa_<dataset>.json`` loads as a
:class:`ComparisonResult` and is written back byte for byte; its frame holds what its JSON holds,
cell by cell. No model is needed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from tlsteer.experiments import Cell, ComparisonConfig, ComparisonResult
from tlsteer.experiments.cells import UNSTEERED, Interval
from tlsteer.experiments.methods import METHODS

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
COMMITTED = sorted(
    p
    for p in RESULTS.rglob("feature_vs_caa_*.json")
    if p.stem not in ("feature_vs_caa_summary",) and "verdict" not in p.parent.name
)
"""The results written before the verdict's design (unpaired, calibrated on neutral text)."""
VERDICT_SMALL = RESULTS / "verdict_small"
KINDS = {
    "feature_vs_caa_speaking_styles": "class_set",
    "feature_vs_caa_aggression": "class_set",
    "feature_vs_caa_coordinate-other-ais": "ab",
    "feature_vs_caa_sycophancy": "ab",
    "feature_vs_caa_refusal": "ab",
    "feature_vs_caa_analogy_number_successor": "analogy",
    "feature_vs_caa_analogy_country_capital": "analogy",
}


def test_the_committed_results_are_all_here():
    names = [p.relative_to(RESULTS).as_posix() for p in COMMITTED]
    assert len(names) == 8 and "small/feature_vs_caa_speaking_styles.json" in names
    assert {p.stem for p in COMMITTED} == set(KINDS)


@pytest.mark.parametrize("path", COMMITTED, ids=[p.relative_to(RESULTS).as_posix() for p in COMMITTED])
def test_a_committed_result_loads_and_saves_back_unchanged(path, tmp_path):
    result = ComparisonResult.load(path)
    assert result.kind == KINDS[path.stem]
    assert result.to_dict() == json.loads(path.read_text())
    again = result.save(tmp_path / path.name)
    assert again.read_bytes() == path.read_bytes()
    assert ComparisonResult.load(again) == result
    # they predate these settings: loaded with the defaults, and left out when written
    assert result.unrecorded == {
        "methods",
        "split_seed",
        "n_prompts",
        "targets",
        "ks",
        "calibration",
        "n_calibration_prompts",
        "n_random",
    }
    assert result.config.methods is None
    assert not result.units and all(c.outcomes is None for c in result.cells.values())


def test_the_small_verdict_run_records_everything_and_its_verdict_follows_from_its_outcomes(tmp_path):
    from tlsteer.experiments.verdict import verdict

    info = json.loads((VERDICT_SMALL / "verdict.json").read_text())
    path = VERDICT_SMALL / "feature_vs_caa_speaking_styles.json"
    result = ComparisonResult.load(path)
    assert result.save(tmp_path / path.name).read_bytes() == path.read_bytes()
    assert result.unrecorded == frozenset() and result.config.calibration == "reply"
    assert result.plan is not None and result.plan["sha256"] == info["plan"]["sha256"]
    assert len(result.units) == len(result.targets) * result.config.n_prompts
    a = info["analysis"]
    again = verdict(
        result,
        margin=a["margin"],
        alpha=a["alpha"],
        equivalence_level=a["equivalence_level"],
        n_resamples=a["n_resamples"],
    )
    assert again.to_dict() == info["datasets"]["speaking_styles"]["verdict"]["pooled"]


@pytest.mark.parametrize("path", COMMITTED, ids=[p.relative_to(RESULTS).as_posix() for p in COMMITTED])
def test_to_frame_has_one_row_per_cell_with_the_jsons_values(path):
    raw = json.loads(path.read_text())
    result = ComparisonResult.load(path)
    frame = result.to_frame()
    assert len(frame) == len(raw["cells"]) == len(result.cells)
    success = "p_matching" if result.kind == "ab" else "success"
    for (_, row), (label, cell) in zip(frame.iterrows(), raw["cells"].items(), strict=True):
        method, _, budget = label.partition("@")
        assert row["dataset"] == raw["dataset"] and row["method"] == method
        assert row["budget"] == float(budget) if budget else math.isnan(row["budget"])
        assert (row["success"], row["low"], row["high"]) == tuple(cell[success].values())
        assert row["kl_mean"] == cell.get("kl_mean", 0.0) and row["kl_p95"] == cell.get("kl_p95", 0.0)
        strength = cell.get("strength")
        if strength is None:  # unsteered and prompting: missing, as pandas writes it
            assert pd.isna(row["strength"])
        else:
            assert row["strength"] == (tuple(strength) if isinstance(strength, list) else strength)
        assert row["reached"] == cell["reached"] if "reached" in cell else pd.isna(row["reached"])
        for name in ("mmlu", "selectivity", "perplexity", "top1"):
            if name in cell:
                assert (row[name], row[f"{name}_low"], row[f"{name}_high"]) == tuple(cell[name].values())
        for name in ("mmlu_change", "n_generations", "n_test_pairs"):
            if name in cell:
                assert row[name] == cell[name]
    expected = {"ab": "mmlu", "class_set": "selectivity", "analogy": "top1"}[result.kind]
    assert expected in frame.columns


def test_cells_are_keyed_by_method_and_budget():
    result = ComparisonResult.load(RESULTS / "feature_vs_caa_speaking_styles.json")
    raw = json.loads((RESULTS / "feature_vs_caa_speaking_styles.json").read_text())
    caa = result.cells["caa", 0.5]
    assert isinstance(caa, Cell) and caa.label == "caa@0.5" and caa.key == ("caa", 0.5)
    assert caa.success == Interval(**raw["cells"]["caa@0.5"]["success"])
    assert caa.strength == tuple(raw["cells"]["caa@0.5"]["strength"])  # one per target
    assert caa.transfer == raw["cells"]["caa@0.5"]["transfer"]
    assert result.cell("prompting", 0.5) is result.cells["prompting", None]  # measured once
    assert result.examples["caa", 0.1]["pirate"] == tuple(raw["examples"]["caa@0.1"]["pirate"])
    assert result.features["formal"]["clamp"] == tuple(raw["features"]["formal"]["clamp"])
    assert list(result.cells)[0] == UNSTEERED and result.methods[0] == "unsteered"
    assert result.budgets == (0.1, 0.5) and result.hook == "blocks.6.hook_resid_post"
    with pytest.raises(
        KeyError, match=r"no cell 'caa@0.3' in 'speaking_styles'; cells: 'unsteered', 'caa@0.1'"
    ):
        result.cell("caa", 0.3)


def test_config_defaults_and_normalization():
    config = ComparisonConfig(methods=["caa", "prompting"], budgets=[1, 0.5], seeds=range(2), ks=[4])
    assert config.methods == ("caa", "prompting") and config.budgets == (1.0, 0.5)
    assert config.seeds == (0, 1) and config.ks == (4,) and config.targets is None
    assert ComparisonConfig() == ComparisonConfig(
        budgets=(0.1, 0.5), seeds=[0], n_resamples=1000, calibration="reply", n_random=8
    )
    with pytest.raises(AttributeError):
        config.budgets = (0.2,)  # pyright: ignore[reportAttributeAccessIssue]  (frozen)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"methods": ["feature_ful"]},
            ValueError,
            r"unknown method 'feature_ful' \(closest: 'feature_full'\); valid: 'caa'",
        ),
        (
            {"methods": "caa"},
            TypeError,
            r"methods must be a list of method names, got 'caa'; valid: 'caa', 'mean_centred'",
        ),
        ({"methods": []}, ValueError, "methods is empty; leave it None for every method that applies"),
        ({"methods": ["caa", "caa"]}, ValueError, r"methods repeats 'caa': \['caa', 'caa'\]"),
        (
            {"budgets": [0.1, float("nan")]},
            ValueError,
            r"budgets must be finite numbers > 0 \(mean KL in nats\), got \[0.1, nan\]",
        ),
        ({"budgets": [0]}, ValueError, r"budgets must be finite numbers > 0 .*, got \[0\]"),
        ({"budgets": ["0.1"]}, ValueError, r"budgets must be finite numbers > 0 .*, got \['0.1'\]"),
        ({"budgets": 0.1}, TypeError, "budgets must be a list of KL budgets .*, got 0.1"),
        ({"budgets": []}, ValueError, "budgets is empty"),
        ({"budgets": [0.5, 0.5]}, ValueError, r"budgets repeats 0.5"),
        ({"n_prompts": 0}, ValueError, "n_prompts must be an int >= 1, got 0"),
        ({"n_prompts": 2.0}, ValueError, "n_prompts must be an int >= 1, got 2.0"),
        ({"targets": "formal"}, TypeError, "targets must be a list of class names, got 'formal'"),
        ({"targets": ["formal", ""]}, ValueError, r"targets must be class names, got '' in \['formal', ''\]"),
        ({"targets": ["a", "a"]}, ValueError, "targets repeats 'a'"),
        (
            {"calibration": "everywhere"},
            ValueError,
            "calibration must be 'reply' or 'neutral', got 'everywhere'",
        ),
        ({"n_random": 0}, ValueError, "n_random must be an int >= 1, got 0"),
        ({"n_calibration_prompts": 0}, ValueError, "n_calibration_prompts must be an int >= 1, got 0"),
        ({"seeds": [0, -1]}, ValueError, r"seeds must be ints >= 0, got -1 in \[0, -1\]"),
        ({"seeds": [0, 0]}, ValueError, "seeds repeats 0"),
        ({"split_seed": "1"}, TypeError, "split_seed must be an int, got '1'"),
        ({"max_new_tokens": 0}, ValueError, "max_new_tokens must be an int >= 1, got 0"),
        ({"n_resamples": 99}, ValueError, "n_resamples must be an int >= 100, got 99"),
        ({"ks": ()}, ValueError, "ks is empty"),
        (
            {"ks": [8, 0]},
            ValueError,
            r"ks must be ints >= 1 \(the k of each feature_top<k>\), got 0 in \[8, 0\]",
        ),
    ],
)
def test_config_errors_name_the_bad_value(kwargs, error, message):
    with pytest.raises(error, match=message):
        ComparisonConfig(**kwargs)


def test_every_method_family_is_a_valid_config():
    assert ComparisonConfig(methods=list(METHODS)).methods == METHODS


def test_bad_json_is_refused_naming_what_is_wrong(tmp_path):
    raw = json.loads((RESULTS / "feature_vs_caa_refusal.json").read_text())
    summary = RESULTS / "feature_vs_caa_summary.json"
    with pytest.raises(
        ValueError, match=r"feature_vs_caa_summary.json: this is a summary of several datasets"
    ):
        ComparisonResult.load(summary)
    with pytest.raises(ValueError, match="a ab comparison result has an unknown key 'extra'"):
        ComparisonResult.from_dict(raw | {"extra": 1})
    with pytest.raises(ValueError, match="a ab comparison result has no 'n_test_items'"):
        ComparisonResult.from_dict({k: v for k, v in raw.items() if k != "n_test_items"})
    with pytest.raises(ValueError, match="'settings' has an unknown setting 'budget'"):
        ComparisonResult.from_dict(raw | {"settings": raw["settings"] | {"budget": 0.1}})
    with pytest.raises(ValueError, match="budgets must be finite numbers > 0"):
        ComparisonResult.from_dict(raw | {"settings": raw["settings"] | {"budgets": [-1]}})
    cells = dict(raw["cells"])
    cells["caa@x"] = cells.pop("caa@0.1")
    with pytest.raises(ValueError, match="cell key 'caa@x': the budget 'x' is not a number"):
        ComparisonResult.from_dict(raw | {"cells": cells})
    cells = dict(raw["cells"]) | {
        "caa@0.1": raw["cells"]["caa@0.1"] | {"success": raw["cells"]["caa@0.1"]["p_matching"]}
    }
    with pytest.raises(
        ValueError, match="cell 'caa@0.1' of a ab result has unknown key 'success'; its keys: 'p_matching'"
    ):
        ComparisonResult.from_dict(raw | {"cells": cells})
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ValueError, match="broken.json: Expecting property name"):
        ComparisonResult.load(broken)


def test_cells_refuse_what_a_cell_cannot_be():
    ci = Interval(0.5, 0.4, 0.6)
    with pytest.raises(
        ValueError, match=r"cell 'caa@0.1' is calibrated: it needs \['kl_mean', 'kl_p95', 'reached'\]"
    ):
        Cell("caa", 0.1, ci)
    with pytest.raises(
        ValueError,
        match=r"the unsteered cell has no budget and no calibration, got budget=None and \['kl_mean'\]",
    ):
        Cell("unsteered", None, ci, kl_mean=0.1)
    with pytest.raises(ValueError, match="cell 'caa': budget must be a finite float > 0 or None, got -0.1"):
        Cell("caa", -0.1, ci, kl_mean=0.1, kl_p95=0.2, reached=True)
    raw = json.loads((RESULTS / "feature_vs_caa_refusal.json").read_text())
    result = ComparisonResult.from_dict(raw)
    moved = dict(result.cells)
    moved["caa", 0.5] = moved.pop(("caa", 0.1))
    with pytest.raises(ValueError, match=r"refusal: cell 'caa@0.1' is filed under \('caa', 0.5\)"):
        ComparisonResult(**{**result.__dict__, "cells": moved})
    with pytest.raises(ValueError, match=r"refusal: a ab result needs \['n_train_pairs'\]"):
        ComparisonResult(**{**result.__dict__, "n_train_pairs": None})
