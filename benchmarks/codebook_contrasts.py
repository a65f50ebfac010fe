"""On/off codes against continuous steering: exploratory paired contrasts from the three-arm run.

The plan ``benchmarks/plans/codebooks-1.toml`` compares every method with CAA. The founding notes
ask a second question: where does switching codes on and off (a codebook) do better or worse than
moving features continuously? This script reads the run's saved results
(``benchmarks/results/codebooks_verdict/feature_vs_caa_*.json``, per-unit outcomes kept) and
answers it with the same paired analysis (:func:`tlsteer.experiments.verdict`: bootstrap over
prompts stratified by target, Holm across the contrasts of a dataset, margin 0.05). These
contrasts were **not pre-registered**: they are exploratory, and labelled so in the output.

- ``codes_add`` and ``codes_bottleneck`` against ``feature_top8`` (8 SAE features, continuous);
- ``codes_bottleneck`` against ``codes_add`` (the same codes, on/off against added).

Writes ``codebook_contrasts.{json,md}`` in ``--out``. With ``--tiny`` it first runs
``verdict.py --tiny`` into ``--out`` and reads that.

    python benchmarks/codebook_contrasts.py [--results benchmarks/results/codebooks_verdict]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import _common as common

from tlsteer.experiments import ComparisonResult, verdict

CONTRASTS = {"feature_top": ("codes_add", "codes_bottleneck"), "codes_add": ("codes_bottleneck",)}
"""Reference method (``feature_top`` means the result's sparsest ``feature_topK``) -> compared methods."""
MARGIN = 0.05


def contrasts(result: ComparisonResult, n_resamples: int) -> dict[str, Any]:
    """Each reference's verdict on its compared methods, pooled and per target (class sets)."""
    methods = {c.method for c in result.cells.values()}
    tops = sorted(
        (m for m in methods if m.startswith("feature_top")), key=lambda m: int(m[len("feature_top") :])
    )
    out: dict[str, Any] = {}
    for ref, compared in CONTRASTS.items():
        reference = tops[0] if ref == "feature_top" and tops else ref
        if reference not in methods or not set(compared) <= methods:
            raise ValueError(
                f"{result.dataset}: needs {reference!r} and {compared}; it has {sorted(methods)}"
            )
        exclude = tuple(m for m in methods if m not in (reference, *compared))
        strata = [None, *(result.targets if result.units and result.targets else [])]
        out[reference] = {
            (s or "pooled"): verdict(
                result,
                margin=MARGIN,
                reference=reference,
                exclude=exclude,
                n_resamples=n_resamples,
                stratum=s,
            ).to_dict()
            for s in strata
        }
    return out


def render(tables: dict[str, Any]) -> list[str]:
    lines = ["Exploratory (not pre-registered): paired differences, Holm within each reference.", ""]
    for dataset, by_ref in tables.items():
        lines += [
            f"### {dataset}",
            "",
            "| method − reference | stratum | difference [Holm interval] | word |",
            "|---|---|---|---|",
        ]
        for strata in by_ref.values():
            for stratum, v in strata.items():
                for row in v["rows"]:
                    lines.append(
                        f"| {row['method']} − {v['reference']} | {stratum} | {row['difference']:+.3f} "
                        f"[{row['low']:+.3f}, {row['high']:+.3f}] | {row['word']} |"
                    )
        lines.append("")
    return lines


def body(args) -> Path:
    results = args.results
    if args.tiny:
        import verdict as verdict_script

        verdict_script.main(["--tiny", "--out", str(args.out / "verdict")])
        results = args.out / "verdict"
    paths = sorted(Path(results).glob("feature_vs_caa_*.json"))
    if not paths:
        raise FileNotFoundError(
            f"no feature_vs_caa_*.json in {str(results)!r}; run benchmarks/verdict.py first"
        )
    tables = {}
    for path in paths:
        result = ComparisonResult.load(path)
        tables[result.dataset] = contrasts(result, args.n_resamples)
        common.log.info("%s: %d references", result.dataset, len(tables[result.dataset]))
    out = {
        "exploratory": True,
        "results": common.repo_relative(results),
        "margin": MARGIN,
        "datasets": tables,
    }
    path = common.write_json(args.out / "codebook_contrasts.json", out)
    (args.out / "codebook_contrasts.md").write_text("\n".join(render(tables)) + "\n")
    return path


def main(argv: list[str] | None = None) -> Path:
    p = common.parser(__doc__, out_help="results folder (default: benchmarks/results/codebooks_verdict)")
    p.add_argument("--results", type=Path, default=common.RESULTS / "codebooks_verdict")
    p.add_argument("--n-resamples", type=int, default=2000)
    return common.run(body, p, argv, {"n_resamples": 200}, default_out=common.RESULTS / "codebooks_verdict")


if __name__ == "__main__":
    main()
