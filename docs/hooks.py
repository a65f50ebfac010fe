"""mkdocs hooks: results, notebooks and the API reference, each from where it lives in the repo.

- ``benchmarks/results/`` (figures, JSON, tables) and ``notebooks/`` stay where the benchmarks and
  CI write and run them; they are added to the site under the same paths, so a page links to
  ``../benchmarks/results/extraction.png`` and the nav names ``notebooks/01_caa_quickstart.ipynb``.
  This runs before mkdocs-jupyter's ``on_files``, so the notebooks are rendered (never executed).
- The API reference has one page per package of ``tlsteer`` (``api/tlsteer.eval.md``, ...): the
  package's docstring and its public names, then every public module, documented by mkdocstrings
  from the docstrings (griffe reads the source; nothing is imported). The pages and their nav
  entries follow the source tree, so a module that moves does not break the build.
"""

from __future__ import annotations

import ast
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tlsteer"
SHARED = [("benchmarks/results", "*"), ("notebooks", "*.ipynb")]


def _packages() -> list[Path]:
    return sorted(p.parent for p in PACKAGE.rglob("__init__.py") if not _private(p.parent.relative_to(ROOT)))


def _private(rel: Path) -> bool:
    return any(part.startswith("_") for part in rel.parts)


def _dotted(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _all(init: Path) -> list[str]:
    for node in ast.parse(init.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return [e.value for e in node.value.elts if isinstance(e, ast.Constant)]  # type: ignore[attr-defined]
    return []


def _api_page(package: Path) -> str:
    name = _dotted(package)
    lines = [
        f"# `{name}`",
        "",
        f"::: {name}",
        "    options:",
        "      members: false",
        "      show_root_heading: false",
        "",
    ]
    public = _all(package / "__init__.py")
    if public:
        # optional: a name whose object is not rendered (no docstring, a private module) stays plain code
        links = ", ".join(
            f'<autoref identifier="{name}.{n}" optional><code>{n}</code></autoref>' for n in public
        )
        lines += [f"Public names (`__all__`): {links}.", ""]
    for module in sorted(package.glob("*.py")):
        if not module.name.startswith("_"):
            lines += [f"::: {_dotted(module)}", ""]
    return "\n".join(lines)


def on_config(config):
    """Add one API page per package to the nav, after the API overview."""

    def visit(items):
        for item in items:
            if isinstance(item, dict):
                for key, value in item.items():
                    if key == "API" and isinstance(value, list):
                        value.extend({_dotted(p): f"api/{_dotted(p)}.md"} for p in _packages())
                        return True
                    if isinstance(value, list) and visit(value):
                        return True
        return False

    visit(config["nav"] or [])
    return config


@event_priority(100)
def on_files(files: Files, config) -> Files:
    for folder, pattern in SHARED:
        for path in sorted((ROOT / folder).rglob(pattern)):
            if path.is_file() and ".ipynb_checkpoints" not in path.parts:
                src_uri = path.relative_to(ROOT).as_posix()
                files.append(File(src_uri, str(ROOT), config["site_dir"], config["use_directory_urls"]))
    for package in _packages():
        files.append(File.generated(config, f"api/{_dotted(package)}.md", content=_api_page(package)))
    return files
