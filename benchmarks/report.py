"""The result tables of README.md and the docs pages, written from benchmarks/results/*.json.

Every table whose numbers a benchmark measured sits between two marker comments, and only this
script writes what is between them:

    <!-- table:sweep_engine -->

    | behaviour | items | settings | shared s | ...

    <!-- /table -->

A table's name is the key of its renderer in ``TABLES``, which also names the JSON files it reads
(under ``benchmarks/results/``); the files scanned are README.md and docs/**/*.md. Every table must be
placed in a page, except a table registered with ``pending=True``: one whose benchmark has not had its
real run yet (its renderer is tested on the ``--tiny`` JSON meanwhile); drop the flag when its
markers go in.

    python benchmarks/report.py            # rewrite every marked table from the JSON
    python benchmarks/report.py --check    # exit 1 with a diff where a table differs from its JSON
    python benchmarks/report.py --list     # each table, its JSON, and where it is placed

Rendering reads the JSON only (no model), so the check runs in a test. The feature-vs-CAA tables
read theirs through ``tlsteer.experiments.ComparisonResult`` (imported when they are rendered:
a few seconds, and the ``sae`` extra); every other table reads plain JSON.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: only the feature-vs-CAA tables read through tlsteer
    from tlsteer.experiments import Cell, ComparisonResult

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path("benchmarks") / "results"
START = re.compile(r"^(?P<indent>[ \t]*)<!-- table:(?P<name>[\w.-]+) -->[ \t]*$")
END = re.compile(r"^[ \t]*<!-- /table -->[ \t]*$")


class ReportError(ValueError):
    """A marker, a table name or a JSON file that the report cannot use."""


@dataclass(frozen=True)
class Table:
    """A rendered table: its name in the markers, the JSON files it reads, and its renderer.

    ``pending``: not placed in any page yet (its benchmark's real run is still to come); the check
    does not ask for it to be placed.
    """

    name: str
    sources: tuple[str, ...]
    render: Callable[..., list[str]]
    pending: bool = False


TABLES: dict[str, Table] = {}


def table(
    name: str, *sources: str, pending: bool = False
) -> Callable[[Callable[..., list[str]]], Callable[..., list[str]]]:
    """Register a renderer; it gets the parsed JSON of ``sources``, in order, and returns lines.

    ``pending``: the table need not be placed in a page yet (see :class:`Table`).
    """

    def register(fn: Callable[..., list[str]]) -> Callable[..., list[str]]:
        TABLES[name] = Table(name, sources, fn, pending)
        return fn

    return register


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _header(*names: str) -> list[str]:
    return [_row(*names), "|" + "---|" * len(names)]


def _ci(ci: dict) -> str:
    return f"{ci['value']:.2f} [{ci['low']:.2f}, {ci['high']:.2f}]"


def _num(x: float | None, fmt: str = ".3f") -> str:
    """``x`` formatted, or "n/a" where the JSON has null (a NaN the benchmark wrote as null)."""
    return "n/a" if x is None else format(x, fmt)


def _interval(d: dict, fmt: str = ".3f") -> str:
    """``value [low, high]`` from a dict with those keys (3 decimals: rates); "n/a" for a null."""
    if d["value"] is None:
        return "n/a"
    return f"{_num(d['value'], fmt)} [{_num(d['low'], fmt)}, {_num(d['high'], fmt)}]"


# ---- speed (docs/results/speed.md, README) ------------------------------------------------------


@table("extraction", "extraction.json")
def extraction(r: dict) -> list[str]:
    out = [f"Batch size {r['batch_size']}, {r['threads']} threads; every layer's resid_post.", ""]
    for name, d in r["datasets"].items():
        out += [f"**{name}**: {d['pairs']} pairs, {d['tokens']} prompt tokens", ""]
        out += _header(
            "method",
            "seconds",
            "tokens/s",
            "tlsteer speed-up",
            "min cosine to tlsteer",
            "max abs diff / norm",
        )
        for label, m in d["methods"].items():
            a = m["agreement_with_tlsteer"]
            out.append(
                _row(
                    label,
                    f"{m['seconds']:.1f}",
                    f"{m['tokens_per_s']:.0f}",
                    f"{m['speedup_of_tlsteer']:.2f}x",
                    f"{a['min_cosine']:.7f}",
                    f"{a['max_abs_diff_over_norm']:.1e}",
                )
            )
        out.append("")
    out += _header("memory mode", "pairs", "RSS growth while training (MB)", "seconds")
    out += [_row(m["mode"], m["pairs"], f"{m['growth_mb']:.0f}", f"{m['seconds']:.0f}") for m in r["memory"]]
    return out


@table("steering_overhead", "steering_overhead.json")
def steering_overhead(r: dict) -> list[str]:
    out = [f"{r['new_tokens']} new tokens, greedy, KV cache on, median of {r['repeats']}.", ""]
    out += _header("batch", "vector", "positions", "unsteered s", "steered s", "overhead")
    for row in r["rows"]:
        out.append(
            _row(
                row["batch"],
                row["vector"],
                row["positions"],
                f"{row['unsteered_s']:.2f}",
                f"{row['steered_s']:.2f}",
                f"{100 * row['overhead']:+.1f}%",
            )
        )
    return out


@table("batched_generation", "batched_generation.json")
def batched_generation(r: dict) -> list[str]:
    out = _header("run", f"seconds ({r['repeats']} runs)", "generated tokens / s")
    out.append(
        _row(
            "one prompt at a time",
            ", ".join(f"{s:.1f}" for s in r["one_at_a_time_s"]),
            f"{r['one_at_a_time_tokens_per_s']:.1f}",
        )
    )
    out.append(
        _row(
            f"batch {r['batch']}",
            ", ".join(f"{s:.1f}" for s in r["batched_s"]),
            f"{r['batched_tokens_per_s']:.1f}",
        )
    )
    return out


@table("generation_speed", "generation_speed.json")
def generation_speed(r: dict) -> list[str]:
    parity = r["parity"]
    out = [
        f"{r['new_tokens_per_prompt']} new tokens per prompt, greedy, chat prompts, {r['threads']} threads, "
        f"median of {r['repeats']} interleaved runs. tlsteer is steered ({r['steering']}); "
        "TransformerLens and transformers generate unsteered.",
        "",
    ]
    out += _header(
        "batch",
        "prompts",
        "tlsteer (fast path) tok/s",
        "tlsteer, TransformerLens forward tok/s",
        "TransformerLens `generate` tok/s",
        "transformers `generate` tok/s",
        "tlsteer time / transformers",
        "fast path speed-up",
    )
    for batch, row in r["table"].items():
        speed = row["tokens_per_s"]
        out.append(
            _row(
                batch,
                row["prompts"],
                f"{speed['tlsteer']:.1f}",
                f"{speed['tlsteer_tl_forward']:.1f}",
                f"{speed['transformer_lens']:.1f}",
                f"{speed['transformers']:.1f}",
                f"{row['tlsteer_time_over_transformers']:.2f}x",
                f"{row['speedup_over_tl_forward_path']:.2f}x",
            )
        )
    out += [
        "",
        f"Per-step logits, fast path vs TransformerLens forward ({parity['prompts']} prompts, "
        f"{parity['new_tokens']} steps): largest difference {parity['max_abs_diff_step_logits']:.1e}; "
        f"{parity['rows_with_identical_tokens']} of {parity['prompts']} rows with identical tokens.",
    ]
    return out


@table("sweep_engine", "sweep_engine.json")
def sweep_engine(r: dict) -> list[str]:
    out = _header(
        "behaviour",
        "items",
        "settings",
        "shared s",
        "repeat s",
        "full s",
        "shared speed-up",
        "repeat speed-up",
        "max abs diff p(matching), shared / repeat",
    )
    for row in r["rows"]:
        s, x, d = row["seconds"], row["speedup"], row["max_abs_diff"]
        out.append(
            _row(
                row["behaviour"],
                row["items"],
                row["settings"],
                f"{s['shared']:.1f}",
                f"{s['repeat']:.1f}",
                f"{s['full']:.1f}",
                f"{x['shared']:.1f}x",
                f"{x['repeat']:.1f}x",
                f"{d['shared']['p_matching']:.1e} / {d['repeat']['p_matching']:.1e}",
            )
        )
    t, x = r["total_s"], r["speedup"]
    out.append(
        f"| **all** | | | {t['shared']:.1f} | {t['repeat']:.1f} | {t['full']:.1f} "
        f"| {x['shared']:.1f}x | {x['repeat']:.1f}x | |"
    )
    return out


@table("load_model", "load_model.json")
def load_model(r: dict) -> list[str]:
    warm = r["warm_load_s"]
    return [
        *_header("load", "seconds"),
        _row(
            "cold: GGUF dequantised by transformers, converted by TransformerLens, cache written",
            f"{r['cold_load_s']:.1f}",
        ),
        _row(f"warm: from the cache, {len(warm)} runs", ", ".join(f"{s:.2f}" for s in warm)),
    ]


@table("load_model_gemma", "load_model_gemma-3-270m.json")
def load_model_gemma(r: dict) -> list[str]:
    """One row: cold and warm loads, and the logits against transformers' (a real run measures them)."""
    warm = r["warm_load_s"]
    agreement = r.get("logit_agreement")
    logits = (
        "not measured"
        if agreement is None
        else f"{_num(agreement['max_abs_logit_diff'], '.1e')} over {agreement['positions']} positions"
    )
    return [
        *_header(
            "model",
            "cold load s",
            f"warm load s (max of {len(warm)})",
            "max \\|logit diff\\| vs transformers",
        ),
        _row(f"`{r['model']}`", f"{r['cold_load_s']:.1f}", f"{r['warm_load_s_max']:.2f}", logits),
    ]


@table(
    "speed_headline",
    "extraction.json",
    "sweep_engine.json",
    "batched_generation.json",
    "steering_overhead.json",
    "sae_overhead.json",
    "load_model.json",
    "generation_speed.json",
)
def speed_headline(
    extraction: dict, sweep: dict, batched: dict, overhead: dict, sae: dict, load: dict, generation: dict
) -> list[str]:
    caa = extraction["datasets"]["caa_7_behaviours"]["methods"]
    package = caa.get("e_steering_vectors_package")
    versus = (
        f", {package['speedup_of_tlsteer']:.2f}x faster than the steering-vectors package"
        if package is not None
        else ""
    )
    largest = max(generation["table"], key=int)
    gen = generation["table"][largest]
    shared_diff = max(row["max_abs_diff"]["shared"]["p_matching"] for row in sweep["rows"])
    # "mostly": the range of every configuration but the slowest one, which is given on its own
    rest = sorted(row["overhead"] for row in overhead["rows"])
    sae_layer = sae["sae"]["hook"].split(".")[1]
    warm = ", ".join(f"{s:.2f}" for s in load["warm_load_s"])
    return [
        *_header("what", "result"),
        _row(
            "extraction, CAA pairs",
            f"{caa['c_batched_run_with_cache']['speedup_of_tlsteer']:.2f}x faster than a batched "
            f"`run_with_cache`, {caa['d_transformers_hidden_states']['speedup_of_tlsteer']:.2f}x faster "
            f"than transformers' hidden states{versus}",
        ),
        _row(
            "steered generation",
            f"batch {largest}: {gen['tokens_per_s']['tlsteer']:.0f} tokens/s steered, "
            f"{gen['tlsteer_time_over_transformers']:.2f}x the time of transformers' own `generate` "
            f"unsteered; {gen['speedup_over_tl_forward_path']:.2f}x faster than on TransformerLens's forward",
        ),
        _row(
            f"sweep engine, {len(sweep['rows'])} behaviours",
            f"{sweep['speedup']['shared']:.1f}x faster than a full forward per setting; "
            f"p(matching) within {shared_diff:.1e}",
        ),
        _row(
            "batched steered generation",
            f"batch {batched['batch']} {batched['speedup']:.1f}x faster than one prompt at a time; "
            f"per-step logits within {batched['max_abs_diff_step_logits']:.1e}",
        ),
        _row(
            "steering overhead in generation",
            f"mostly within the run-to-run noise ({100 * rest[0]:+.0f}% to {100 * rest[-2]:+.0f}%), "
            f"at most {100 * rest[-1]:+.1f}%",
        ),
        _row(
            f"SAE overhead, layer {sae_layer}",
            f"`encode` {100 * sae['encode_overhead']:+.1f}%, generation with 8 features clamped "
            f"{100 * sae['feature_steering_overhead']:+.1f}%",
        ),
        _row(
            "`load_model` ([Load times](docs/results/load-times.md))",
            f"cold {load['cold_load_s']:.1f} s, warm {warm} s",
        ),
    ]


# ---- the embedded model (docs/results/embedded-model.md) ----------------------------------------


@table("caa_reproduction", "caa_reproduction.json")
def caa_reproduction(r: dict) -> list[str]:
    out = _header(
        "behaviour",
        "layer",
        "m",
        "p(-m)",
        "p(-m/2)",
        "p(0)",
        "p(+m/2)",
        "p(+m)",
        "anti-steerable",
        "MMLU -m / 0 / +m",
        "TruthfulQA -m / 0 / +m",
        "KL +m",
        "paper -1 / 0 / +1",
    )
    for name, b in r["behaviours"].items():
        p = [t["p_matching"] for t in sorted(b["test"], key=lambda t: t["multiplier"])]
        mm, tq, paper = b["mmlu_accuracy"], b["truthfulqa_accuracy"], b["paper_llama2_7b_layer13"]
        out.append(
            _row(
                name,
                b["chosen_layer"],
                f"{b['chosen_relative_multiplier']:g}",
                *(f"{x:.3f}" for x in p),
                f"{b['steerability']['anti_steerable_share']:.2f}",
                " / ".join(f"{mm[k]:.2f}" for k in ("-m", "0", "+m")),
                " / ".join(f"{tq[k]:.2f}" if k in tq else "-" for k in ("-m", "0", "+m")),
                f"{b['kl_neutral']['+m']:.3f}",
                " / ".join(f"{paper[k]:.2f}" for k in ("-1", "0", "+1")),
            )
        )
    return out


def _concepts(r: dict) -> list[str]:
    out = _header("concept", "relative m", "judge P(concept)", "VADER", "perplexity", "A/B p(matching)")
    for concept, data in r["concepts"].items():
        for row in data["rows"]:
            vader = f"{row['vader_compound']:.2f}" if "vader_compound" in row else ""
            out.append(
                f"| {concept} | {row['relative_multiplier']:g} | {row['judge_p_concept']:.2f} | {vader} "
                f"| {row['perplexity']:.1f} | {row['ab_p_matching']:.3f} |"
            )
    return out


table("concept_steering", "concept_steering.json")(_concepts)
table("concept_steering_layer6", "concept_steering_layer6.json")(_concepts)


# ---- steering (docs/guide/steering.md) ----------------------------------------------------------


@table("llama_cpp_agreement", "llama_cpp_agreement.json")
def llama_cpp_agreement(r: dict) -> list[str]:
    steps = [str(float(s)) for s in r["strengths"]]  # the JSON's keys: "2.0", ...

    def row(runs: str, vector: str, model: str, key: str, digits: int, greedy: bool) -> str:
        by = r["runs"][model][key]
        r_mean = _row(runs, vector, *(f"{by[k]['r_mean']:.{digits}f}" for k in steps))
        return r_mean + (" " + " / ".join(str(by[k]["greedy_same"]) for k in steps) if greedy else "") + " |"

    x = [f"×{s:g}" for s in r["strengths"]]
    return [
        *_header(
            "llama.cpp runs", "vector", f"r at {x[0]}", *x[1:], f"same greedy text, {' / '.join(x)}"
        ),
        row("a float32 copy of the GGUF (the weights tlsteer runs)", "sentiment, layer 12", "F32",
            "sentiment L12", 4, True),
        row("the same", "sentiment, layers 6, 12, 18", "F32", "sentiment L6+L12+L18", 4, True),
        row("the same", "random, layer 12, same norm", "F32", "random L12 (same norm)", 4, True),
        row("the same, control", "sentiment exported one layer low (as 11)", "F32",
            "control: exported as L11", 2, False),
        row("the same, control", "sentiment exported one layer high (as 13)", "F32",
            "control: exported as L13", 2, False),
        row("the shipped Q4_1 file", "sentiment, layer 12", "Q4_1", "sentiment L12", 2, True),
    ]  # fmt: skip


# ---- feature steering vs CAA (docs/results/feature-vs-caa.md) -----------------------------------


def _comparisons(*data: dict) -> list[ComparisonResult]:
    """Comparison results (``tlsteer.experiments.ComparisonResult``) from their parsed JSON.

    tlsteer is imported here, not at the top: only the feature-vs-CAA tables need it (and its
    ``sae`` extra), so the other tables and ``--list`` stay free of it.
    """
    from tlsteer.experiments import ComparisonResult

    return [ComparisonResult.from_dict(d) for d in data]


def _methods(results: list[ComparisonResult]) -> list[str]:
    """Methods in the order of ``benchmarks/feature_vs_caa.py``'s tables."""
    methods = list(dict.fromkeys(m for res in results for m in res.methods))
    methods.sort(key=lambda m: (m != "unsteered", m == "prompting", m in ("caa_encoded", "random")))
    return methods


def _cell(res: ComparisonResult, method: str, budget: float) -> Cell | None:
    """The method's cell at ``budget``, or its one cell without a budget (unsteered, prompting)."""
    return res.cells.get((method, budget), res.cells.get((method, None)))


def _feature_vs_caa(summary: dict, parts: tuple[dict, ...]) -> list[ComparisonResult]:
    """The results the summary names, in its order."""
    by_name = {r.dataset: r for r in _comparisons(*parts)}
    missing = [name for name in summary["datasets"] if name not in by_name]
    if missing:
        raise ReportError(f"feature_vs_caa_summary.json names datasets without a JSON here: {missing}")
    return [by_name[name] for name in summary["datasets"]]


@table("feature_vs_caa_small", "small/feature_vs_caa_speaking_styles.json")
def feature_vs_caa_small(r: dict) -> list[str]:
    (res,) = _comparisons(r)
    (budget,) = res.budgets
    out = _header("method", "success [95% interval]")
    for m in _methods([res]):
        cell = _cell(res, m, budget)
        if cell is None:
            continue
        label = m if m == "unsteered" else f"`{m}`"
        kl = f" (KL {cell.kl_mean:.2f})" if m == "prompting" else ""
        out.append(_row(label, str(cell.success) + kl))
    return out


FEATURE_VS_CAA = (
    "feature_vs_caa_summary.json",
    "feature_vs_caa_coordinate-other-ais.json",
    "feature_vs_caa_sycophancy.json",
    "feature_vs_caa_refusal.json",
    "feature_vs_caa_speaking_styles.json",
    "feature_vs_caa_aggression.json",
    "feature_vs_caa_analogy_number_successor.json",
    "feature_vs_caa_analogy_country_capital.json",
)


@table("feature_vs_caa_success", *FEATURE_VS_CAA)
def feature_vs_caa_success(summary: dict, *parts: dict) -> list[str]:
    results = _feature_vs_caa(summary, parts)
    budget = max(summary["settings"]["budgets"])
    out = _header("method", *(r.dataset for r in results))
    for m in _methods(results):
        row = []
        for res in results:
            cell = _cell(res, m, budget)
            row.append("" if cell is None else str(cell.success))
        out.append(f"| `{m}` | " + " | ".join(row) + " |")
    return out


@table("feature_vs_caa_speaking_styles", *FEATURE_VS_CAA)
def feature_vs_caa_speaking_styles(summary: dict, *parts: dict) -> list[str]:
    results = _feature_vs_caa(summary, parts)
    res = next(r for r in results if r.dataset == "speaking_styles")
    budget = max(summary["settings"]["budgets"])
    out = _header("method", "selectivity", "perplexity", "MMLU change", "KL mean (p95)")
    for m in _methods(results):
        cell = _cell(res, m, budget)
        if cell is None:
            continue
        if m == "unsteered":  # against itself, and the reference of every KL
            change, kl_mean, kl_p95 = 0.0, 0.0, 0.0
        elif cell.mmlu_change is None or cell.kl_mean is None or cell.kl_p95 is None:
            raise ReportError(f"speaking_styles: cell {cell.label!r} has no MMLU change or no KL")
        else:
            change, kl_mean, kl_p95 = cell.mmlu_change, cell.kl_mean, cell.kl_p95
        out.append(
            _row(
                f"`{m}`",
                str(cell.selectivity),
                str(cell.perplexity),
                f"{change:+.2f}",
                f"{kl_mean:.2f} ({kl_p95:.2f})",
            )
        )
    return out


# ---- SAE features (docs/guide/sae-features.md) --------------------------------------------------


def _sae_quality(r: dict) -> list[str]:
    """Every SAE of one model (``benchmarks/sae_quality.py``'s JSON, either model)."""
    out = _header(
        "SAE",
        "texts (tokens)",
        "explained variance (per-token mean)",
        "L0",
        "never fired",
        "CE loss score",
        "added loss (nats/token)",
    )
    for split, label in (("heldout", "held out"), ("shipped", "shipped")):
        for layer, by_split in r["layers"].items():
            q = by_split[split]
            out.append(
                _row(
                    f"layer {layer}",
                    f"{q['n_texts']} {label} ({q['n_tokens']:,})",
                    f"{q['explained_variance']:.3f} ({q['explained_variance_per_token']:.3f})",
                    f"{q['l0']:.0f}",
                    f"{100 * q['dead_share']:.1f}%",
                    f"{q['ce_loss_score']:.3f}",
                    f"{q['added_loss']:+.3f}",
                )
            )
    return out


table("sae_quality", "sae_quality.json")(_sae_quality)
table("sae_quality_gemma", "sae_quality_gemma-3-270m.json")(_sae_quality)


@table("sae_layer_choice", "sae_layer_choice.json")
def sae_layer_choice(r: dict) -> list[str]:
    shown = [s for s in r["strengths"] if s <= 0.5]  # 1.0 breaks the text; it is in the JSON and figure
    columns = [(c, s) for c in r["concepts"] for s in shown]
    out = _header("layer", *(f"{c} r = {s:g}" for c, s in columns))
    for layer in r["layers"]:
        cells = []
        for concept, s in columns:
            (row,) = (x for x in r["concepts"][concept]["rows"] if x["layer"] == layer)
            (b,) = (x for x in row["by_strength"] if x["relative"] == s)
            cells.append(f"{b['shift']:+.2f} ({max(b['perplexity_minus'], b['perplexity_plus']):.1f})")
        out.append(_row(layer, *cells))
    return out


@table("sae_features_sentiment", "sae_features_sentiment.json")
def sae_features_sentiment(r: dict) -> list[str]:
    layers = r["layers"]
    keep = {len(v["selected"]) for v in layers.values()}
    if len(keep) != 1:
        raise ReportError(
            f"sae_features_sentiment.json selects different numbers of features per layer: {keep}"
        )

    def row(label: str, key: str, fmt: str) -> str:
        return _row(label, *(format(v[key], fmt) for v in layers.values()))

    return [
        "| " + _row(*(f"layer {layer}" for layer in layers)),
        "|" + "---|" * (len(layers) + 1),
        row("max \\|`paired` − `sums`\\| (same pairs)", "paired_vs_sums_max_abs_diff", ".1f"),
        row(
            "cosine `paired` vs `class_means` (unpaired 40 vs 40), feature space",
            "cos_paired_class_means_feature_space",
            ".2f",
        ),
        row("cosine decoded feature vector vs raw mean difference", "cos_decoded_paired_vs_raw", ".2f"),
        row(f"cosine decoded {keep.pop()} selected features vs raw", "cos_decoded_selected_vs_raw", ".2f"),
        row(
            "cosine encoded raw vector (negative control) vs `paired`, feature space",
            "cos_encoded_control_vs_paired_feature_space",
            ".2f",
        ),
    ]


@table("sae_overhead", "sae_overhead.json")
def sae_overhead(r: dict) -> list[str]:
    med = {k: statistics.median(v) for k, v in r["seconds"].items()}
    return [
        *_header("comparison", "plain s", "with the SAE s", "added"),
        _row(
            f"`encode` vs `read_activations`, {r['prompts']} chat prompts, last token",
            f"{med['read']:.3f}",
            f"{med['encode']:.3f}",
            f"{100 * r['encode_overhead']:+.1f}%",
        ),
        _row(
            "generation with 8 features clamped (`last_token_only`) vs unsteered, "
            f"16 prompts × {r['new_tokens']} tokens",
            f"{med['generate']:.2f}",
            f"{med['generate_feature_steered']:.2f}",
            f"{100 * r['feature_steering_overhead']:+.1f}%",
        ),
    ]


# ---- the two models (pages to come: the markers go in after the real runs) ----------------------

MODEL_LABELS = {"smollm2": "SmolLM2", "gemma": "gemma"}
"""universality.json's model keys -> the names in the tables."""
SPACE_LABELS = {"raw": "raw residual", "sae": "SAE features", "codebook": "codebook codes"}


def _model(name: str) -> str:
    return MODEL_LABELS.get(name, name)


def _pair(key: str) -> str:
    """``"smollm2 6 vs gemma 3"`` -> ``"SmolLM2 6 vs gemma 3"`` (universality.json's pair keys)."""
    sides = (side.strip().partition(" ") for side in key.split(" vs "))
    return " vs ".join(f"{_model(name)} {layer}".strip() for name, _, layer in sides)


def _direction(key: str) -> str:
    """``"smollm2->gemma"`` -> ``"SmolLM2 → gemma"``."""
    return " → ".join(_model(side) for side in key.split("->"))


def _layer_map(layers: list[int], best: list[int | None]) -> str:
    """``"0–3→2, 4→3"``: each layer of A and its best layer of B, consecutive layers with the same
    best one in one run."""
    runs: list[list] = []
    for a, b in zip(layers, best, strict=True):
        if runs and runs[-1][2] == b and runs[-1][1] + 1 == a:
            runs[-1][1] = a
        else:
            runs.append([a, a, b])
    return ", ".join(f"{lo if lo == hi else f'{lo}–{hi}'}→{'n/a' if b is None else b}" for lo, hi, b in runs)


def _monotone(best: list[int | None]) -> str:
    if any(b is None for b in best):
        return "n/a"
    if all(x <= y for x, y in pairwise(best)):
        return "non-decreasing"
    drops = sum(x > y for x, y in pairwise(best))
    return f"not monotone: {drops} step{'s' if drops > 1 else ''} down"


@table("universality_cka", "universality.json")
def universality_cka(r: dict) -> list[str]:
    cka, settings = r["cka"], r["settings"]
    a, b = cka["layers"]  # model A, model B
    la, lb = _model(a), _model(b)
    n_perm = {m["n_perm"] for m in cka["matched"].values()}
    out = [
        f"Linear CKA between the two models' reads of the same {settings['n_examples']} examples; "
        f"shuffled: biased CKA with the examples shuffled ({', '.join(map(str, sorted(n_perm)))} "
        f"shuffles), its mean, q95 and the p-value; within classes: shuffled only inside each class "
        f"(what the class labels alone explain). Best {lb} layer: the one of highest CKA with "
        f"that {la} layer (debiased in parentheses).",
        "",
    ]
    out += _header(
        f"{la} layer",
        f"{lb} layer",
        "CKA",
        "debiased CKA",
        "shuffled mean (q95)",
        "shuffled p",
        "within classes mean (q95)",
        "within classes p",
        f"best {lb} layer",
    )
    for m in cka["matched"].values():
        out.append(
            _row(
                m[a],
                m[b],
                _num(m["cka"]),
                _num(m["cka_debiased"]),
                f"{_num(m['null_mean'])} ({_num(m['null_q95'])})",
                _num(m["p_value"]),
                f"{_num(m['within_class_null_mean'])} ({_num(m['within_class_null_q95'])})",
                _num(m["within_class_p_value"]),
                f"{_num(m['best_in_row'], 'd')} ({_num(m['best_in_row_debiased'], 'd')})",
            )
        )
    key = f"best_{b}_layer_per_{a}_layer"
    biased, debiased = cka["biased"][key], cka["debiased"][key]
    layers = cka["layers"][a]
    summary = f"{_layer_map(layers, biased)} ({_monotone(biased)})"
    summary += (
        "; debiased the same"
        if debiased == biased
        else f"; debiased: {_layer_map(layers, debiased)} ({_monotone(debiased)})"
    )
    out.append(_row(f"**every {la} layer**", "", "", "", "", "", "", "", summary))
    return out


@table("universality_geometry", "universality.json")
def universality_geometry(r: dict, spaces: tuple[str, ...] | None = None) -> list[str]:
    """``spaces``: only those rows (the codebook run's table shows its codebook rows: its raw ones
    are the SAE run's)."""
    g, settings = r["geometry"], r["settings"]
    skipped = f" ({', '.join(g['skipped_sets'])} left out: fewer than 4 classes)" if g["skipped_sets"] else ""
    out = [
        "Spearman r between the two class-similarity matrices (centred cosines of the class means); "
        f"95% interval: {settings['n_boot']} bootstrap resamples of examples within classes; "
        f"Mantel test over {settings['n_mantel']} relabellings, its p-value and the null's q95 "
        f"(chance). Scopes: every class pooled; every class pooled but only the pairs inside one "
        f"class set correlated, relabelled within sets (the geometry the split between sets cannot "
        f"carry); and each set{skipped}.",
        "",
    ]
    out += _header("", "layers", "space", "classes", "r", "95% interval", "Mantel p", "null q95", "K")
    for kind, label in (("across", "across the models"), ("within", "within one model")):
        for pair, by_space in g[kind].items():
            for space, by_scope in by_space.items():
                if spaces is not None and space not in spaces:
                    continue
                for scope, x in by_scope.items():
                    out.append(
                        _row(
                            label,
                            _pair(pair),
                            SPACE_LABELS.get(space, space),
                            {"all": "all, pooled", "within_sets": "all, pairs within sets"}.get(scope, scope),
                            _num(x["r"]),
                            f"[{_num(x['ci_low'])}, {_num(x['ci_high'])}]",
                            _num(x["p_value"]),
                            _num(x["null_q95"]),
                            x["n_classes"],
                        )
                    )
    return out


@table("universality_correspondence", "universality.json")
def universality_correspondence(r: dict, spaces: tuple[str, ...] | None = None) -> list[str]:
    """``spaces``: only those rows, as in :func:`universality_geometry`."""
    c = r["correspondence"]
    out = [
        f"Each class's {c['top']} most distinctive columns in the first model (pooled over the "
        f"classes), each matched to its best-correlated column of the other model (Pearson over all "
        f"examples); a match has r >= {c['threshold']:g}. Shuffled: the examples shuffled "
        f"({c['n_perm']} shuffles); within classes: shuffled only inside each class, so a column "
        "that only tells the classes apart still matches (a share above it needs agreement on "
        "individual examples).",
        "",
    ]
    out += _header(
        "layers",
        "space",
        "direction",
        "features",
        "share with a match",
        "shuffled share mean (q95)",
        "within classes share mean (q95)",
        "mean best r (shuffled; within classes)",
    )
    for pair, by_space in c.items():
        if not isinstance(by_space, dict):  # threshold, top, n_perm
            continue
        for space, by_direction in by_space.items():
            if spaces is not None and space not in spaces:
                continue
            for direction, x in by_direction.items():
                out.append(
                    _row(
                        _pair(pair),
                        SPACE_LABELS.get(space, space),
                        _direction(direction),
                        x["n_features"],
                        _num(x["share"]),
                        f"{_num(x['null_share_mean'])} ({_num(x['null_share_q95'])})",
                        f"{_num(x['within_class_null_share_mean'])} "
                        f"({_num(x['within_class_null_share_q95'])})",
                        f"{_num(x['mean_best_r'])} "
                        f"({_num(x['null_r_mean'])}; {_num(x['within_class_null_r_mean'])})",
                    )
                )
    return out


@table("universality_codebook_geometry", "universality_codebook.json")
def universality_codebook_geometry(r: dict) -> list[str]:
    return universality_geometry(r, spaces=("codebook",))


@table("universality_codebook_correspondence", "universality_codebook.json")
def universality_codebook_correspondence(r: dict) -> list[str]:
    return universality_correspondence(r, spaces=("codebook",))


def _method(name: str) -> str:
    return name if name == "unsteered" else f"`{name}`"


@table("steering_transfer", "steering_transfer.json")
def steering_transfer(r: dict) -> list[str]:
    s = r["settings"]
    out = [
        f"`{s['source_model']}` → `{s['target_model']}` ({s['source_hook']} → {s['target_hook']}), "
        f"{s['dataset']}, every direction at KL {s['kl']:g}; {s['test_prompts']} test prompts × "
        f"{len(s['targets'])} target classes. Hit rate: judged as the steered class (exact 95% "
        "interval); differences: paired, 95% bootstrap over prompts.",
        "",
        *_header("method", "pooled hit rate [95% interval]", "hits / n"),
    ]
    for m, h in r["hit_rates"].items():
        p = h["pooled"]
        out.append(_row(_method(m), _interval(p), f"{p['successes']} / {p['n']}"))
    out += ["", *_header("paired difference", "pooled [95% interval]", "interval excludes 0")]
    for d, x in r["differences"].items():
        p = x["pooled"]
        label = " − ".join(_method(m) for m in d.split("-"))
        out.append(_row(label, _interval(p, "+.3f"), "yes" if p["excludes_zero"] else "no"))
    pooled = r["maps"]["pooled"]
    out += [
        "",
        f"Held-out R² of the maps (source → target reads, ridge chosen by leave-one-class-out "
        f"cross-validation): pooled map (every class) {_num(pooled['r2_held_out'])}; per target "
        "class, the map fitted without it:",
        "",
        *_header(
            "target class",
            "R² held out, that class",
            "R² held out, the other classes",
            "cosine own vs mapped (unseen-class map)",
            "cosine own vs mapped (pooled map)",
            "cosine own vs random (max \\|cos\\|)",
        ),
    ]
    for c in s["targets"]:
        m, cos = r["maps"]["unseen"][c], r["cosines"][c]
        out.append(
            _row(
                c,
                _num(m["r2_held_out_unseen_class"]),
                _num(m["r2_held_out_seen_classes"]),
                _num(cos["own_vs_mapped_unseen"], ".2f"),
                _num(cos["own_vs_mapped_pooled"], ".2f"),
                f"{_num(cos['own_vs_random'], '.2f')} ({_num(cos['own_vs_random_abs_max'], '.2f')})",
            )
        )
    keys = ("own_vs_mapped_unseen", "own_vs_mapped_pooled", "own_vs_random")
    cosines = {k: [r["cosines"][c][k] for c in s["targets"]] for k in keys}
    mean = {k: None if None in v else statistics.fmean(v) for k, v in cosines.items()}
    out.append(_row("**mean**", "", "", *(_num(mean[k], ".2f") for k in keys)))
    return out


@table("method_ranking", "method_ranking.json")
def method_ranking(r: dict) -> list[str]:
    s, rho = r["settings"], r["spearman"]
    a, b = r["inputs"]["a"]["model"], r["inputs"]["b"]["model"]
    agree = r["words_agree"]
    out = [
        f"{s['set']}, the first {s['n_prompts']} test prompts in both runs; success: the mean over "
        "targets of the per-target mean outcome; rank 1 the highest. Words: each model's verdict "
        f"against CAA (they agree in {agree['agree']} of {agree['compared']} cells). Spearman r: 95% "
        f"bootstrap over prompts ({rho['n_resamples']} resamples, {rho['dropped_resamples']} dropped).",
        "",
        *_header(
            "cell",
            f"`{a}` success (rank)",
            f"`{b}` success (rank)",
            f"`{a}` vs CAA",
            f"`{b}` vs CAA",
        ),
    ]
    for cell in r["cells"]:
        row, words = r["table"][cell], r["words"].get(cell, {})
        out.append(
            _row(
                f"`{cell}`",
                f"{_num(row['success_a'])} ({_num(row['rank_a'], 'g')})",
                f"{_num(row['success_b'])} ({_num(row['rank_b'], 'g')})",
                words.get("a") or "n/a",
                words.get("b") or "n/a",
            )
        )
    out.append(_row("**Spearman r**", _interval(rho, "+.3f"), f"**{rho['word']}**", "", ""))
    return out


table("method_ranking_codes", "method_ranking_codes.json")(method_ranking)


# ---- equivalence classes (docs/guide/equivalence-classes.md) ------------------------------------

ANALOGY_DOMAINS = {
    "country_capital": "country → capital",
    "number_successor": "number → successor",
    "month_next": "month → next",
    "comparative": "adjective → comparative",
}


@table("analogies", "analogies.json")
def analogies(r: dict) -> list[str]:
    unknown = sorted(set(r["domains"]) - set(ANALOGY_DOMAINS))
    if unknown:
        raise ReportError(f"analogies.json has domains without a label here: {unknown}")
    out = _header("domain", "none", "random, same norm", "relation vector", "5-shot prompt")
    for name, d in r["domains"].items():
        cells = (
            f"{d[k]['top1']:.2f} / {d[k]['top5']:.2f}" for k in ("none", "random", "relation", "few_shot")
        )
        out.append(_row(f"{ANALOGY_DOMAINS[name]} ({d['pairs']})", *cells))
    return out


# ---- writing and checking -----------------------------------------------------------------------


def render(name: str, results: Path) -> list[str]:
    """The lines of table ``name``, from the JSON files under ``results``."""
    if name not in TABLES:
        raise ReportError(f"no table named {name!r}; the tables are: {', '.join(sorted(TABLES))}")
    t = TABLES[name]
    data = []
    for source in t.sources:
        path = results / source
        if not path.is_file():
            raise ReportError(f"table {name!r} reads {path}, which does not exist")
        data.append(json.loads(path.read_text()))
    return t.render(*data)


def markdown_files(root: Path) -> list[Path]:
    """README.md and every page under docs/."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def update(text: str, results: Path, where: str = "<text>") -> tuple[str, list[str]]:
    """``text`` with every marked table rendered again, and the names of those tables."""
    lines = text.split("\n")
    out: list[str] = []
    names: list[str] = []
    i = 0
    while i < len(lines):
        start = START.match(lines[i])
        if END.match(lines[i]):
            raise ReportError(f"{where}:{i + 1}: '<!-- /table -->' without a '<!-- table:NAME -->' before it")
        out.append(lines[i])
        i += 1
        if not start:
            continue
        name, indent = start["name"], start["indent"]
        opened = i
        while i < len(lines) and not END.match(lines[i]):
            if START.match(lines[i]):
                raise ReportError(
                    f"{where}:{i + 1}: a table marker inside table {name!r} (opened at line {opened})"
                )
            i += 1
        if i == len(lines):
            raise ReportError(f"{where}:{opened}: table {name!r} has no '<!-- /table -->' after it")
        try:
            body = render(name, results)
        except ReportError as e:
            raise ReportError(f"{where}:{opened}: {e}") from None
        out += ["", *(indent + line if line else "" for line in body), ""]
        names.append(name)
        out.append(lines[i])  # the end marker
        i += 1
    return "\n".join(out), names


def run(root: Path, check: bool) -> int:
    """Write (or with ``check`` compare) every marked table under ``root``; 1 where one differs."""
    results = root / RESULTS
    differs = False
    placed: set[str] = set()
    for path in markdown_files(root):
        if not path.is_file():
            continue
        old = path.read_text()
        rel = path.relative_to(root).as_posix()
        new, names = update(old, results, rel)
        placed.update(names)
        if new == old:
            continue
        if check:
            differs = True
            sys.stdout.writelines(
                difflib.unified_diff(
                    old.splitlines(keepends=True),
                    new.splitlines(keepends=True),
                    f"{rel} (as written)",
                    f"{rel} (from {RESULTS.as_posix()}/*.json)",
                )
            )
        else:
            path.write_text(new)
            print(f"wrote {rel}: {', '.join(dict.fromkeys(names))}")
    unplaced = sorted(name for name, t in TABLES.items() if name not in placed and not t.pending)
    if unplaced:
        print(f"tables not placed in any page (add '<!-- table:NAME -->' markers): {', '.join(unplaced)}")
        return 1
    if check and differs:
        print("\nthe tables above differ from their JSON; run: python benchmarks/report.py")
        return 1
    return 0


def where(root: Path) -> dict[str, list[str]]:
    """Each table's name and the files (with line numbers) where it is placed."""
    found: dict[str, list[str]] = {name: [] for name in TABLES}
    for path in markdown_files(root):
        if path.is_file():
            for n, line in enumerate(path.read_text().split("\n"), 1):
                if m := START.match(line):
                    found.setdefault(m["name"], []).append(f"{path.relative_to(root).as_posix()}:{n}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="write nothing; exit 1 where a table differs")
    mode.add_argument("--list", action="store_true", help="each table, its JSON files and where it is placed")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this one)")
    args = parser.parse_args(argv)
    if args.list:
        for name, places in where(args.root).items():
            sources = ", ".join(TABLES[name].sources) if name in TABLES else "(unknown table)"
            pending = " (pending)" if name in TABLES and TABLES[name].pending else ""
            print(f"{name}: {sources} -> {', '.join(places) or '(not placed)'}{pending}")
        return 0
    try:
        return run(args.root, args.check)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
