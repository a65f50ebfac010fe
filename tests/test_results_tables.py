"""The result tables of README.md and docs/**/*.md are what benchmarks/results/*.json gives.

``python benchmarks/report.py`` writes every table between its ``<!-- table:NAME -->`` and
``<!-- /table -->`` markers; ``--check`` fails where a page and its JSON disagree. The check reads
JSON and markdown only, so it is fast and needs no model.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_report():
    spec = importlib.util.spec_from_file_location("benchmarks_report", ROOT / "benchmarks" / "report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


report = _load_report()


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """README.md, docs/**/*.md and benchmarks/results/**/*.json, copied under tmp_path."""
    for path in report.markdown_files(ROOT):
        target = tmp_path / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    for path in (ROOT / report.RESULTS).rglob("*.json"):
        target = tmp_path / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return tmp_path


def test_every_table_in_the_pages_matches_its_json():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "report.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_table_is_placed_in_a_page():
    placed = report.where(ROOT)
    unplaced = sorted(name for name, t in report.TABLES.items() if not t.pending and not placed[name])
    assert not unplaced, f"tables in no page (markers missing, and not pending): {unplaced}"
    unknown = sorted(set(placed) - set(report.TABLES))
    assert not unknown, f"markers name tables that do not exist: {unknown}"


def test_only_a_pending_table_may_be_left_out_of_the_pages(repo_copy: Path, monkeypatch, capsys):
    """A table whose benchmark awaits its real run is registered ``pending=True``: no page has it
    yet and the check passes; without the flag the check names it."""
    tables = dict(report.TABLES)
    monkeypatch.setattr(report, "TABLES", tables)
    tables["not_yet"] = report.Table("not_yet", ("load_model.json",), report.load_model, pending=True)
    assert report.run(repo_copy, check=True) == 0
    tables["not_yet"] = report.Table("not_yet", ("load_model.json",), report.load_model)
    assert report.run(repo_copy, check=True) == 1
    assert (
        "tables not placed in any page (add '<!-- table:NAME -->' markers): not_yet"
        in capsys.readouterr().out
    )


def test_changing_one_json_value_fails_the_check(repo_copy: Path, capsys):
    assert report.run(repo_copy, check=True) == 0
    path = repo_copy / report.RESULTS / "sweep_engine.json"
    data = json.loads(path.read_text())
    data["speedup"]["shared"] = 12.34
    path.write_text(json.dumps(data))

    assert report.run(repo_copy, check=True) == 1
    diff = capsys.readouterr().out
    # the cell in the docs table and the one in the README headline table, and nothing written
    assert "-| **all** | | | 22.3 | 50.5 | 263.9 | 11.8x | 5.2x | |" in diff
    assert "+| **all** | | | 22.3 | 50.5 | 263.9 | 12.3x | 5.2x | |" in diff
    assert "+  | sweep engine, 7 behaviours | 12.3x faster than a full forward per setting;" in diff
    assert "11.8x" in (repo_copy / "docs" / "results" / "speed.md").read_text()

    # writing brings the pages in line with the JSON, and only the tables change
    before = (repo_copy / "docs" / "results" / "speed.md").read_text()
    assert report.run(repo_copy, check=False) == 0
    after = (repo_copy / "docs" / "results" / "speed.md").read_text()
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b]
    assert changed == [
        (
            "| **all** | | | 22.3 | 50.5 | 263.9 | 11.8x | 5.2x | |",
            "| **all** | | | 22.3 | 50.5 | 263.9 | 12.3x | 5.2x | |",
        )
    ]
    assert report.run(repo_copy, check=True) == 0


def test_a_table_edited_by_hand_fails_the_check(repo_copy: Path, capsys):
    page = repo_copy / "docs" / "results" / "load-times.md"
    page.write_text(page.read_text().replace("| 26.6 |", "| 25.0 |"))
    assert report.run(repo_copy, check=True) == 1
    assert "+| cold: GGUF dequantised by transformers" in capsys.readouterr().out


def test_a_missing_json_is_named(repo_copy: Path):
    (repo_copy / report.RESULTS / "analogies.json").unlink()
    with pytest.raises(
        report.ReportError, match=r"equivalence-classes.md:\d+: table 'analogies' reads .*analogies"
    ):
        report.run(repo_copy, check=True)


def test_bad_markers_are_refused():
    results = ROOT / report.RESULTS
    with pytest.raises(report.ReportError, match=r"no table named 'lod_model'; the tables are: .*load_model"):
        report.update("<!-- table:lod_model -->\n<!-- /table -->\n", results)
    with pytest.raises(report.ReportError, match=r"page.md:1: table 'load_model' has no '<!-- /table -->'"):
        report.update("<!-- table:load_model -->\n| a |\n", results, "page.md")
    with pytest.raises(report.ReportError, match=r"page.md:2: '<!-- /table -->' without"):
        report.update("text\n<!-- /table -->\n", results, "page.md")


def test_indentation_is_kept_inside_a_list_item():
    text = "- item:\n\n  <!-- table:load_model -->\n  <!-- /table -->\n"
    new, names = report.update(text, ROOT / report.RESULTS)
    assert names == ["load_model"]
    lines = new.split("\n")
    assert lines[3] == "" and lines[4].startswith("  | load | seconds |")
    assert all(line == "" or line.startswith("  ") for line in lines[2:-1])
