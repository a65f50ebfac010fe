"""Print every result table of README.md and the docs pages, rendered from benchmarks/results/*.json.

The renderers live in ``benchmarks/report.py``, which also writes the tables into the pages
(``python benchmarks/report.py``) and checks them (``--check``); this prints them, one after another.

    python benchmarks/tables.py
"""

from __future__ import annotations

from report import RESULTS, ROOT, TABLES, ReportError, render


def main() -> None:
    for name, t in TABLES.items():
        print(f"### {name} ({', '.join(t.sources)})\n")
        try:
            print("\n".join(render(name, ROOT / RESULTS)) + "\n")
        except ReportError as e:
            print(f"(not rendered: {e})\n")


if __name__ == "__main__":
    main()
