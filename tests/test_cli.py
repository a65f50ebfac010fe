"""The console command: bad input is one line and exit status 2, files are checked before any model
loads, and the commands run end to end on a tiny model (the model loader is replaced in every test)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import tlsteer.cli as cli
import tlsteer.demo
from tlsteer import SteeringVector
from tlsteer.cli import CommandError, main


def _never_load(name):
    raise AssertionError(f"the command loaded the model {name!r} before checking its input")


@pytest.fixture
def no_model(monkeypatch):
    """Any model load (or the demo, which loads its own) fails the test."""
    monkeypatch.setattr(cli, "_load_model", _never_load)
    monkeypatch.setattr(tlsteer.demo, "run_demo", lambda cfg: _never_load(cfg))


@pytest.fixture
def tiny_cli(monkeypatch, tiny_llama):
    """The commands see the tiny Llama whatever --model says."""
    monkeypatch.setattr(cli, "_load_model", lambda name: tiny_llama)
    return tiny_llama


def fails(capsys, argv) -> str:
    """Run ``main(argv)``; it must exit with status 2 and one stderr line; returns that line."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert isinstance(info.value, CommandError)
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.endswith("\n") and err.count("\n") == 1, err
    assert str(info.value) == err.split(": error: ", 1)[1].rstrip("\n")
    return err.rstrip("\n")


def save_vector(path, layer=1, d_model=32):
    vec = SteeringVector({f"blocks.{layer}.hook_resid_post": torch.ones(d_model)})
    vec.save(path)
    return path


# -- one line, exit status 2 ------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["check", "view"])
def test_a_missing_vector_file_is_one_line_before_the_model_loads(command, tmp_path, capsys, no_model):
    missing = tmp_path / "nope.safetensors"
    extra = ["--prompt", "hi", "--multiplier", "1", "--html", str(tmp_path / "v.html")] * (command == "view")
    line = fails(capsys, [command, "--vector", str(missing), *extra])
    assert line == f"tlsteer {command}: error: --vector {str(missing)!r} does not exist"


def test_a_npy_vector_without_layer_is_one_line_before_the_model_loads(tmp_path, capsys, no_model):
    path = tmp_path / "v.npy"
    np.save(path, np.ones(32, dtype=np.float32))
    line = fails(capsys, ["check", "--vector", str(path)])
    assert line == (
        "tlsteer check: error: a .npy vector needs --layer (the block whose resid_post it steers); "
        f"got --vector {str(path)!r} and no --layer"
    )
    with pytest.raises(SystemExit, match="needs --layer"):  # str() of the exit is the message
        main(["check", "--vector", str(path)])


def test_a_corrupt_vector_file_is_one_line(tmp_path, capsys, no_model):
    path = tmp_path / "v.safetensors"
    path.write_bytes(b"not a safetensors file")
    line = fails(capsys, ["check", "--vector", str(path)])
    expected = f"tlsteer check: error: {str(path)!r} is not a readable safetensors steering vector"
    assert line.startswith(expected)


@pytest.mark.parametrize("layer", ["4", "-1"])
def test_a_bad_layer_for_the_random_direction_names_the_valid_layers(layer, capsys, tiny_cli):
    line = fails(capsys, ["check", "--model", "tiny", "--layer", layer])
    assert line == f"tlsteer check: error: --layer {layer} is not a layer of tiny (valid: 0..3)"


def test_a_layer_the_vector_lacks_is_the_library_message_on_one_line(tmp_path, capsys, tiny_cli):
    path = save_vector(tmp_path / "v.safetensors", layer=1)
    argv = ["view", "--vector", str(path), "--prompt", "hi", "--multiplier", "2", "--layer", "3"]
    line = fails(capsys, [*argv, "--html", str(tmp_path / "v.html")])
    assert line == "tlsteer view: error: layer=3 is not a layer of this vector; its layers: [1]"
    assert not (tmp_path / "v.html").exists()


def test_an_argparse_error_also_exits_with_status_2(capsys, no_model):
    with pytest.raises(SystemExit) as info:
        main(["check", "--layer", "twelve"])
    assert info.value.code == 2
    assert "tlsteer check: error: argument --layer: invalid int value: 'twelve'" in capsys.readouterr().err


def test_debug_shows_the_original_exception(tmp_path, no_model):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(["check", "--vector", str(missing), "--debug"])


def test_an_internal_bug_keeps_its_traceback(monkeypatch, capsys):
    def buggy(name):  # a KeyError raised by Python, not by tlsteer's validation
        return {}[name]

    monkeypatch.setattr(cli, "_load_model", buggy)
    with pytest.raises(KeyError, match="tiny"):
        main(["check", "--model", "tiny"])

    def foreign(name):  # a ValueError raised outside tlsteer (a library, say)
        raise ValueError(f"cannot load {name}")

    monkeypatch.setattr(cli, "_load_model", foreign)
    with pytest.raises(ValueError, match="cannot load tiny"):
        main(["check", "--model", "tiny"])
    assert capsys.readouterr().err == ""


# -- output paths are checked first -------------------------------------------------------------------
OUTPUTS = [
    ("view", "--html"),
    ("view", "--png"),
    ("view", "--json"),
    ("check", "--json"),
    ("train", "--out"),
    ("demo", "--out"),
]


def command_line(command, tmp_path):
    vector = str(save_vector(tmp_path / "v.safetensors"))
    dataset = tmp_path / "pairs.json"
    dataset.write_text("[]")
    return {
        "view": ["view", "--vector", vector, "--prompt", "hi", "--multiplier", "1"],
        "check": ["check"],
        "train": ["train", str(dataset)],
        "demo": ["demo"],
    }[command]


@pytest.mark.parametrize(("command", "option"), OUTPUTS)
def test_an_output_into_a_missing_folder_fails_before_the_model_loads(
    command, option, tmp_path, capsys, no_model
):
    argv = command_line(command, tmp_path)
    good = {"view": ["--html", str(tmp_path / "v.html")], "train": ["--out", str(tmp_path / "t.safetensors")]}
    if command in good and good[command][0] != option:
        argv += good[command]
    target = tmp_path / "no such folder" / "out.file"
    line = fails(capsys, [*argv, option, str(target)])
    assert line == (
        f"tlsteer {command}: error: cannot write {option} {str(target)!r}: folder "
        f"{str(target.parent)!r} does not exist; create it or pick another path"
    )


def test_an_output_that_is_a_folder_or_unwritable_or_repeated_fails_first(
    tmp_path, capsys, monkeypatch, no_model
):
    argv = command_line("view", tmp_path)
    line = fails(capsys, [*argv, "--html", str(tmp_path)])
    folder = str(tmp_path)
    assert line == f"tlsteer view: error: cannot write --html {folder!r}: it is a folder; give a file name"
    page = tmp_path / "v.html"
    line = fails(capsys, [*argv, "--html", str(page), "--json", str(page)])
    same = f"--html and --json are the same file {str(page)!r}; give each its own"
    assert line == f"tlsteer view: error: {same}"
    monkeypatch.setattr(cli.os, "access", lambda path, mode: False)  # tests may run as root
    line = fails(capsys, [*argv, "--html", str(page)])
    assert line == (
        f"tlsteer view: error: cannot write --html {str(page)!r}: no write permission in {str(tmp_path)!r}"
    )


# -- the commands run -----------------------------------------------------------------------------------
def test_view_writes_its_files_with_the_model_from_the_loader(tmp_path, capsys, tiny_cli):
    path = save_vector(tmp_path / "v.safetensors")
    html, out = tmp_path / "v.html", tmp_path / "v.json"
    argv = ["view", "--vector", str(path), "--prompt", "The cat", "--multiplier", "2"]
    assert main([*argv, "--max-new-tokens", "3", "--html", str(html), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["hook_name"] == "blocks.1.hook_resid_post" and sum(data["generated"]) == 3
    assert html.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert "3 generated" in capsys.readouterr().out


def test_check_runs_on_a_random_direction(tmp_path, capsys, tiny_cli):
    out = tmp_path / "report.json"
    argv = ["check", "--layer", "2", "--max-new-tokens", "2", "--prompt", "The cat", "--json", str(out)]
    assert main(argv) == 0
    assert json.loads(out.read_text())["passed"] is True
    assert "all passed" in capsys.readouterr().out
