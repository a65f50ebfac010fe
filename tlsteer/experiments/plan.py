"""A pre-registered analysis plan: the file a comparison run answers, and its hash.

A plan is a TOML file committed before the run that uses it. It fixes what the run does (the
datasets, methods, KL budget, prompts, seeds) and how its result is read (the primary metric, the
reference method, the equivalence margin, the correction, the resamples). :func:`load_plan` reads
and checks it and hashes its bytes (SHA-256); a run records ``{"path", "sha256"}`` in every result
it writes (:attr:`ComparisonResult.plan <tlsteer.experiments.comparison_result.ComparisonResult.plan>`),
so a table can be traced to the plan it answers and a plan edited after the run shows up as a
different hash. The committed plans live in ``benchmarks/plans/``.

The file's sections::

    name = "verdict-1"
    [design]      # class_sets, analogy_domains, methods, budget, n_test_prompts,
                  # n_calibration_prompts, seed, max_new_tokens, temperature,
                  # n_random_directions, ks, layer; optional: model (an embedded
                  # model's name, default "smollm2-135m-instruct")
    [analysis]    # primary_metric, reference, margin, alpha, equivalence_level,
                  # correction ("holm"), n_resamples, judge_min_accuracy
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from tlsteer.experiments.comparison_config import ComparisonConfig

__all__ = ["DEFAULT_MODEL", "AnalysisPlan", "load_plan"]

DEFAULT_MODEL = "smollm2-135m-instruct"
"""The model of a plan whose [design] names none (every plan before the second model)."""

_DESIGN = {
    "class_sets": list,
    "analogy_domains": list,
    "methods": list,
    "budget": float,
    "n_test_prompts": int,
    "n_calibration_prompts": int,
    "seed": int,
    "max_new_tokens": int,
    "temperature": float,
    "n_random_directions": int,
    "ks": list,
    "layer": int,
}
_ANALYSIS = {
    "primary_metric": str,
    "reference": str,
    "margin": float,
    "alpha": float,
    "equivalence_level": float,
    "correction": str,
    "n_resamples": int,
    "judge_min_accuracy": float,
}


@dataclass(frozen=True)
class AnalysisPlan:
    """A checked plan (see the module docstring); ``sha256`` is the hash of the file's bytes."""

    name: str
    path: str
    sha256: str
    design: dict[str, Any]
    analysis: dict[str, Any]
    notes: str = ""
    model: str = DEFAULT_MODEL

    def record(self) -> dict[str, str]:
        """``{"path", "sha256"}``: what a result records of the plan it answers."""
        return {"path": self.path, "sha256": self.sha256}

    def config(self, **overrides: Any) -> ComparisonConfig:
        """The :class:`~tlsteer.experiments.comparison_config.ComparisonConfig` of the plan's design."""
        d = self.design
        values = {
            "methods": tuple(d["methods"]),
            "budgets": (d["budget"],),
            "n_prompts": d["n_test_prompts"],
            "seeds": (d["seed"],),
            "max_new_tokens": d["max_new_tokens"],
            "n_resamples": self.analysis["n_resamples"],
            "ks": tuple(d["ks"]),
        }
        return ComparisonConfig(**(values | overrides))


def _section(data: dict[str, Any], name: str, spec: dict[str, type], where: str) -> dict[str, Any]:
    section = data.get(name)
    if not isinstance(section, dict):
        raise ValueError(f"{where}: the plan needs a [{name}] table with {sorted(spec)}")
    missing = [k for k in spec if k not in section]
    unknown = [k for k in section if k not in spec]
    if missing or unknown:
        what = f"no {missing[0]!r}" if missing else f"an unknown key {unknown[0]!r}"
        raise ValueError(f"{where}: [{name}] has {what}; its keys: {sorted(spec)}")
    out = {}
    for key, kind in spec.items():
        value = section[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise ValueError(f"{where}: [{name}] {key} must be a {kind.__name__}, got {value!r}")
        if kind is float and not math.isfinite(value):
            raise ValueError(f"{where}: [{name}] {key} must be finite, got {value!r}")
        out[key] = value
    return out


def _shown(path: Path) -> str:
    """The path as a run records it: relative to the working directory when it lies below it."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def load_plan(path: str | Path) -> AnalysisPlan:
    """Read, check and hash a plan file (module docstring); every error names the file and the key.

    Example:
        >>> plan = load_plan("benchmarks/plans/verdict-1.toml")  # doctest: +SKIP
        >>> plan.analysis["margin"], plan.sha256[:12]  # doctest: +SKIP
        (0.05, '3f1c...')
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no plan file at {path}")
    raw = path.read_bytes()
    where = str(path)
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ValueError(f"{where}: not a TOML plan: {err}") from None
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f'{where}: the plan needs a name = "..."')
    unknown = [k for k in data if k not in ("name", "notes", "design", "analysis")]
    if unknown:
        raise ValueError(
            f"{where}: unknown top-level key {unknown[0]!r}; keys: name, notes, design, analysis"
        )
    raw_design = data.get("design")
    model = DEFAULT_MODEL
    if isinstance(raw_design, dict) and "model" in raw_design:
        raw_design = dict(raw_design)
        model = raw_design.pop("model")
        from tlsteer.models import EMBEDDED_MODELS

        if model not in EMBEDDED_MODELS:
            raise ValueError(
                f"{where}: [design] model must be one of {sorted(EMBEDDED_MODELS)}, got {model!r}"
            )
        data = {**data, "design": raw_design}
    design = _section(data, "design", _DESIGN, where)
    analysis = _section(data, "analysis", _ANALYSIS, where)
    if analysis["correction"] != "holm":
        raise ValueError(f"{where}: [analysis] correction must be 'holm', got {analysis['correction']!r}")
    if analysis["primary_metric"] != "success":
        raise ValueError(
            f"{where}: [analysis] primary_metric must be 'success', got {analysis['primary_metric']!r}"
        )
    if not 0 < analysis["margin"] < 1:
        raise ValueError(f"{where}: [analysis] margin must be in (0, 1), got {analysis['margin']}")
    if analysis["reference"] not in design["methods"]:
        raise ValueError(
            f"{where}: [analysis] reference {analysis['reference']!r} is not among the methods "
            f"{design['methods']}"
        )
    plan = AnalysisPlan(
        name=name,
        path=_shown(path),
        sha256=hashlib.sha256(raw).hexdigest(),
        design=design,
        analysis=analysis,
        notes=str(data.get("notes", "")),
        model=model,
    )
    plan.config()  # the design's values pass ComparisonConfig's checks now, not at the run
    return plan
