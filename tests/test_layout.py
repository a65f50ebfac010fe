"""The package's shape: its layers, no import cycles, no private names across modules.

Layers, each importing only those below it (``../shared/STYLE.md``, "A layout that shows the
architecture"):

- ``core``: the top-level modules ``tlsteer/*.py``; they import only the core;
- ``eval`` (``tlsteer.eval``), ``sae`` (``tlsteer.sae``) and ``codebook`` (``tlsteer.codebook``),
  side by side: each imports the core and itself, never another and never experiments;
- ``experiments`` (``tlsteer.experiments``): may import all of the above;
- the entry points (``tlsteer.cli``, ``tlsteer.demo``, ``tlsteer.__main__``): the console command
  runs the whole package, so it may import any layer.

No module imports a package's ``__init__`` (``tlsteer``, ``tlsteer.eval``, ``tlsteer.sae``,
``tlsteer.experiments``): those only re-export for users. The same checks run from the command
line: ``python tests/test_layout.py`` prints the import graph, its cycles and any layer violation.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tlsteer"

ENTRY_POINTS = ("tlsteer.demo", "tlsteer.cli", "tlsteer.__main__")
"""The console command and its demo run the whole package, evaluation included."""

MAY_IMPORT = {
    "core": {"core"},
    "eval": {"core", "eval"},
    "sae": {"core", "sae"},
    "codebook": {"core", "codebook"},
    "experiments": {"core", "eval", "sae", "codebook", "experiments"},
    "entry": {"core", "eval", "sae", "codebook", "experiments", "entry"},
}
"""Each layer and the layers its modules may import."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_inits() -> set[str]:
    """Every package of tlsteer (a folder with ``__init__.py``), by module name."""
    return {module_name(p) for p in PACKAGE.rglob("__init__.py")}


def imports_of(path: Path) -> list[tuple[str, list[str]]]:
    """Every ``tlsteer`` import in a module (at any depth, relative ones resolved): ``(module, names)``."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(base + ([module] if module else []))
            if module.split(".")[0] == "tlsteer":
                out.append((module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.split(".")[0] == "tlsteer"]
    return out


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for target, names in imports_of(path):
            # "from tlsteer.eval import x" where x is a submodule counts as importing the submodule
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
            edges[name].update(subs or [target])
    return edges


def layer(module: str) -> str:
    """The layer of a tlsteer module; a subpackage with no layer yet is an error to fix here."""
    if module in ENTRY_POINTS:
        return "entry"
    parts = module.split(".")
    if len(parts) <= 2 and module not in package_inits() - {"tlsteer"}:
        return "core"
    if parts[1] in ("eval", "sae", "codebook", "experiments"):
        return parts[1]
    raise AssertionError(f"{module} is in no layer: add its subpackage to MAY_IMPORT in tests/test_layout.py")


def layer_violations(edges: dict[str, set[str]]) -> list[str]:
    """``"a (layer) imports b (layer)"`` for every edge that goes up or sideways between layers."""
    out = []
    for module, targets in sorted(edges.items()):
        mine = layer(module)
        for target in sorted(targets):
            theirs = layer(target)
            if theirs not in MAY_IMPORT[mine]:
                out.append(f"{module} ({mine}) imports {target} ({theirs})")
    return out


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found


def without_package_inits(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph between implementation modules: a package's ``__init__`` only re-exports."""
    inits = package_inits()
    return {m: {t for t in ts if t not in inits} for m, ts in edges.items() if m not in inits}


def test_every_package_is_a_known_layer():
    assert package_inits() == {
        "tlsteer",
        "tlsteer.eval",
        "tlsteer.sae",
        "tlsteer.codebook",
        "tlsteer.experiments",
    }
    assert {layer(m) for m in graph()} == set(MAY_IMPORT)


def test_no_import_cycles():
    edges = without_package_inits(graph())
    assert cycles(edges) == []


def test_no_module_imports_a_package_init():
    inits = package_inits()
    offenders = {m: sorted(ts & inits) for m, ts in graph().items() if m not in inits}
    offenders.pop("tlsteer.__main__", None)
    assert {m: ts for m, ts in offenders.items() if ts} == {}


def test_the_core_imports_only_the_core():
    """Core modules (``tlsteer/*.py``) import neither eval, sae nor experiments."""
    edges = {m: ts for m, ts in graph().items() if layer(m) == "core"}
    assert layer_violations(edges) == []


def test_eval_never_imports_sae_or_experiments():
    edges = {m: ts for m, ts in graph().items() if layer(m) == "eval"}
    assert layer_violations(edges) == []


def test_sae_never_imports_eval_or_experiments():
    edges = {m: ts for m, ts in graph().items() if layer(m) == "sae"}
    assert layer_violations(edges) == []


def test_every_import_follows_the_layers():
    assert layer_violations(graph()) == []


def test_the_layer_rules_catch_what_they_forbid():
    edges = {
        "tlsteer.vector": {"tlsteer.eval.ab", "tlsteer.hooks"},
        "tlsteer.eval.token_view": {"tlsteer.sae.adapter", "tlsteer.dictionary"},
        "tlsteer.sae.methods": {"tlsteer.eval.budget", "tlsteer.experiments.cells"},
        "tlsteer.experiments.cells": {"tlsteer.eval.budget", "tlsteer.sae.adapter", "tlsteer.hooks"},
        "tlsteer.cli": {"tlsteer.experiments.cells"},
    }
    assert layer_violations(edges) == [
        "tlsteer.eval.token_view (eval) imports tlsteer.sae.adapter (sae)",
        "tlsteer.sae.methods (sae) imports tlsteer.eval.budget (eval)",
        "tlsteer.sae.methods (sae) imports tlsteer.experiments.cells (experiments)",
        "tlsteer.vector (core) imports tlsteer.eval.ab (eval)",
    ]
    assert layer("tlsteer") == "core" and layer("tlsteer.experiments") == "experiments"


def test_no_private_name_crosses_a_module_boundary():
    crossing = []
    for path in PACKAGE.rglob("*.py"):
        for target, names in imports_of(path):
            private = [
                n for n in names if n.startswith("_") and not (n.startswith("__") and n.endswith("__"))
            ]
            crossing += [f"{module_name(path)} imports {target}.{n}" for n in private]
    assert crossing == [], crossing


def test_importing_tlsteer_does_not_load_evaluation_libraries():
    heavy = "('matplotlib', 'sklearn', 'sae_lens', 'tlsteer.eval', 'tlsteer.sae', 'tlsteer.experiments')"
    code = f"import sys, tlsteer; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


if __name__ == "__main__":
    full = graph()
    edges = without_package_inits(full)
    for module in sorted(edges):
        print(f"{module} [{layer(module)}] -> {', '.join(sorted(edges[module])) or '-'}")
    print("cycles:", cycles(edges) or "none")
    print("layer violations:", layer_violations(full) or "none")
