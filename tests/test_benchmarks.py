"""Benchmarks that cannot rot: every script in benchmarks/ runs with ``--tiny`` and writes its JSON.

Each script's ``main([..., "--tiny", "--out", folder])`` runs in this process on a tiny random model
with stand-ins (random SAEs, a hashing embedder for the judges, a CAA-format folder written from
the built-in items): seconds each, nothing measured, only that the script still runs on the
library as it is. The table scripts (``tables.py``, ``report.py``) read JSON, never a model: every
table whose JSON files the tiny runs wrote is rendered from them, so a benchmark whose JSON drifts
from what the tables read fails here too.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
RESULTS = BENCHMARKS / "results"
TABLE_SCRIPTS = ("tables", "report")
"""Scripts that only render tables from the JSON in benchmarks/results (checked apart)."""
pytestmark = pytest.mark.filterwarnings(
    # sae-lens's activation store copies a tensor with torch.tensor(...) (train_sae, rebuild_saes)
    "ignore:To copy construct from a tensor:UserWarning"
)
SCRIPTS = sorted(
    p.stem for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_") and p.stem not in TABLE_SCRIPTS
)


@pytest.fixture(scope="module")
def benchmarks_on_path():
    """benchmarks/ importable, as it is for ``python benchmarks/<script>.py`` (they import siblings)."""
    sys.path.insert(0, str(BENCHMARKS))
    yield
    sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory) -> Path:
    """One folder per script; the table check reads what they wrote."""
    return tmp_path_factory.mktemp("tiny_results")


def results_snapshot() -> dict[str, int]:
    return {str(p.relative_to(RESULTS)): p.stat().st_mtime_ns for p in RESULTS.rglob("*") if p.is_file()}


def numbers_in(value) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in numbers_in(v)]
    if isinstance(value, list):
        return [x for v in value for x in numbers_in(v)]
    return []


def test_every_script_is_covered():
    on_disk = {p.stem for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_")}
    assert on_disk == set(SCRIPTS) | set(TABLE_SCRIPTS)
    assert len(SCRIPTS) >= 21


@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_runs_tiny_and_writes_json(name, benchmarks_on_path, tiny_results):
    module = importlib.import_module(name)
    out = tiny_results / name
    before = results_snapshot()
    path = module.main(["--tiny", "--out", str(out)])
    assert results_snapshot() == before, f"{name} --tiny wrote into benchmarks/results"
    assert path.suffix == ".json" and path.is_file(), f"{name} returned {path}"
    assert out in path.parents, f"{name} wrote {path} outside --out {out}"
    data = json.loads(path.read_text())
    assert numbers_in(data), f"{name} wrote no numbers to {path.name}"
    for other in out.glob("*.json"):  # everything it wrote next to it parses too
        json.loads(other.read_text())


def test_tiny_refuses_to_write_into_results(benchmarks_on_path):
    module = importlib.import_module("load_model")
    with pytest.raises(SystemExit):
        module.main(["--tiny", "--out", str(RESULTS)])


def test_llama_cpp_agreement_without_llama_cpp_skips_that_part(benchmarks_on_path, monkeypatch, tmp_path):
    module = importlib.import_module("llama_cpp_agreement")

    why = "llama.cpp is not installed; install it with: pip install xllamacpp"

    def missing(library=None):
        raise ModuleNotFoundError(why)

    monkeypatch.setattr(module, "find_llama_library", missing)
    path = module.main(["--tiny", "--out", str(tmp_path)])
    result = json.loads(path.read_text())
    assert result["skipped"] == f"no llama.cpp: {why}"
    assert result["runs"] == {} and result["vector_norms"]


def test_tables_render_from_the_tiny_results(benchmarks_on_path, tiny_results, tmp_path):
    """Every table whose JSON files the tiny runs wrote renders from them (report.py's renderers)."""
    report = importlib.import_module("report")
    written = sorted(tiny_results.glob("*/*.json"))
    if not written:
        pytest.skip("run together with test_benchmark_runs_tiny_and_writes_json (it writes the JSON)")
    merged = tmp_path / "results"
    merged.mkdir()
    for path in written:  # as in benchmarks/results: every script's JSON in one folder
        (merged / path.name).write_bytes(path.read_bytes())
    rendered, failed = [], {}
    for name, table in report.TABLES.items():
        if all((merged / source).is_file() for source in table.sources):
            try:
                lines = report.render(name, merged)
            except Exception as err:  # noqa: BLE001 - collected and reported below
                failed[name] = f"{type(err).__name__}: {err}"
                continue
            assert lines and all(isinstance(line, str) for line in lines), name
            rendered.append(name)
    assert not failed, failed
    assert len(rendered) >= 5, f"only {rendered} had their JSON from the tiny runs"


def test_tables_script_prints_every_table(benchmarks_on_path, capsys):
    tables = importlib.import_module("tables")
    tables.main()
    printed = capsys.readouterr().out
    report = importlib.import_module("report")
    for name in report.TABLES:
        assert f"### {name} " in printed


def test_class_profiles_reads_codes_with_the_codebook_flag(benchmarks_on_path, tmp_path):
    """``class_profiles.py --codebook``: the same report with the codebook as the dictionary, own files."""
    script = importlib.import_module("class_profiles")
    path = script.main(["--tiny", "--codebook", "--sets", "speaking_styles", "--out", str(tmp_path)])
    assert path == tmp_path / "class_profiles_codebook.json"
    out = json.loads(path.read_text())
    assert out["dictionary"] == "codebook"
    assert (tmp_path / "class_speaking_styles_codebook_features.png").is_file()
    assert not (tmp_path / "class_profiles.json").exists()
    rows = [
        r for c, table in out["sets"]["speaking_styles"]["distinctive"].items() if ":" not in c for r in table
    ]
    assert all(0 <= r["feature"] < 32 and 0 <= r["frequency_in"] <= 1 for r in rows)


def test_verdict_runs_every_planned_method_that_applies(benchmarks_on_path, tmp_path):
    """The plan's codebook methods reach the verdict tables of every dataset (a first codebooks-1 run
    lost them to a method filter that never saw the codebook); what does not apply is recorded."""
    script = importlib.import_module("verdict")
    path = script.main(["--tiny", "--out", str(tmp_path)])
    out = json.loads(path.read_text())
    assert {"codes_add", "codes_bottleneck"} <= set(script.TINY["methods"])
    assert len(out["datasets"]) == 2
    for name, entry in out["datasets"].items():
        rows = {row["method"].split("@")[0] for row in entry["verdict"]["pooled"]["rows"]}
        assert {"codes_add", "codes_bottleneck", "feature_full", "random", "prompting"} <= rows, (name, rows)
    assert out["left_out"] == {}  # every TINY method applies to both datasets


def test_train_codebook_from_shipped_trains_the_next_token_objective_alone(benchmarks_on_path, tmp_path):
    """``--from-shipped``: the codes move under the next-token loss only, the weights folder is untouched."""
    script = importlib.import_module("train_codebook")
    path = script.main(
        ["--tiny", "--from-shipped", "--next-token-lr", "0.05", "--next-token-reconstruction-weight", "0"]
        + ["--out", str(tmp_path)]
    )
    assert path == tmp_path / "next_token_layer_1.json"
    out = json.loads(path.read_text())
    assert out["next_token_training"]["reconstruction_weight"] == 0.0
    assert out["relative_change_of_the_codes"] > 0
    assert set(out["quality"]) == {"shipped", "after_next_token"}
    assert not (tmp_path / "layer_1").exists()
