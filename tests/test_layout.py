"""The package's shape: no import cycles, no private names across modules, the core apart from eval.

The same check runs from the command line: ``python tests/test_layout.py`` prints the import graph.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tlsteer"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[str, list[str]]]:
    """Every ``tlsteer`` import in a module (at any depth): ``(module, names)``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tlsteer":
            out.append((node.module, [a.name for a in node.names]))
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
    inits = {"tlsteer", "tlsteer.eval"}
    return {m: {t for t in ts if t not in inits} for m, ts in edges.items() if m not in inits}


def test_no_import_cycles():
    edges = without_package_inits(graph())
    assert cycles(edges) == []


def test_no_module_imports_the_package_init():
    offenders = {m: sorted(ts & {"tlsteer", "tlsteer.eval"}) for m, ts in graph().items()}
    offenders = {m: ts for m, ts in offenders.items() if ts and m not in ("tlsteer", "tlsteer.eval")}
    offenders.pop("tlsteer.__main__", None)
    assert offenders == {}


def test_no_private_name_crosses_a_module_boundary():
    crossing = []
    for path in PACKAGE.rglob("*.py"):
        for target, names in imports_of(path):
            private = [
                n for n in names if n.startswith("_") and not (n.startswith("__") and n.endswith("__"))
            ]
            crossing += [f"{module_name(path)} imports {target}.{n}" for n in private]
    assert crossing == [], crossing


ENTRY_POINTS = ("tlsteer.demo", "tlsteer.cli", "tlsteer.__main__")
"""The console command and its demo run the whole package, evaluation included."""


def test_the_core_never_imports_eval_or_sae():
    core = {
        m: ts
        for m, ts in graph().items()
        if not m.startswith(("tlsteer.eval", "tlsteer.sae")) and m not in ENTRY_POINTS
    }
    leaks = {
        m: sorted(t for t in ts if t.startswith(("tlsteer.eval", "tlsteer.sae"))) for m, ts in core.items()
    }
    assert {m: ts for m, ts in leaks.items() if ts} == {}


def test_importing_tlsteer_does_not_load_evaluation_libraries():
    heavy = "('matplotlib', 'sklearn', 'sae_lens', 'tlsteer.eval')"
    code = f"import sys, tlsteer; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_modules_stay_small():
    sizes = {module_name(p): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {m: n for m, n in sizes.items() if n > 450} == {}


if __name__ == "__main__":
    edges = without_package_inits(graph())
    for module in sorted(edges):
        print(f"{module} -> {', '.join(sorted(edges[module])) or '-'}")
    print("cycles:", cycles(edges) or "none")
