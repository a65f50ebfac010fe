"""Print the README's markdown tables from the JSON files in benchmarks/results/.

python benchmarks/tables.py
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def extraction(r: dict) -> None:
    print(f"Batch size {r['batch_size']}, {r['threads']} threads; every layer's resid_post.\n")
    for name, d in r["datasets"].items():
        print(f"**{name}**: {d['pairs']} pairs, {d['tokens']} prompt tokens\n")
        print(
            "| method | seconds | tokens/s | tlsteer speed-up | min cosine to tlsteer | max abs diff / norm |"
        )
        print("|---|---|---|---|---|---|")
        for label, m in d["methods"].items():
            a = m["agreement_with_tlsteer"]
            print(
                f"| {label} | {m['seconds']:.1f} | {m['tokens_per_s']:.0f} | {m['speedup_of_tlsteer']:.2f}x "
                f"| {a['min_cosine']:.7f} | {a['max_abs_diff_over_norm']:.1e} |"
            )
        print()
    print("| memory mode | pairs | RSS growth while training (MB) | seconds |")
    print("|---|---|---|---|")
    for m in r["memory"]:
        print(f"| {m['mode']} | {m['pairs']} | {m['growth_mb']:.0f} | {m['seconds']:.0f} |")
    print(f"\nload_model: cold {r['load_model']['cold_s']:.1f} s, warm {r['load_model']['warm_s']:.2f} s\n")


def overhead(r: dict) -> None:
    print(f"{r['new_tokens']} new tokens, greedy, KV cache on, median of {r['repeats']}.\n")
    print("| batch | vector | positions | unsteered s | steered s | overhead |")
    print("|---|---|---|---|---|---|")
    for row in r["rows"]:
        print(
            f"| {row['batch']} | {row['vector']} | {row['positions']} | {row['unsteered_s']:.2f} "
            f"| {row['steered_s']:.2f} | {100 * row['overhead']:+.1f}% |"
        )
    print()


def sweep_engine(r: dict) -> None:
    print(
        "| behaviour | items | settings | shared s | repeat s | full s | shared speed-up | repeat speed-up "
        "| max abs diff p(matching), shared / repeat |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in r["rows"]:
        s, x, d = row["seconds"], row["speedup"], row["max_abs_diff"]
        print(
            f"| {row['behaviour']} | {row['items']} | {row['settings']} "
            f"| {s['shared']:.1f} | {s['repeat']:.1f} | {s['full']:.1f} "
            f"| {x['shared']:.1f}x | {x['repeat']:.1f}x "
            f"| {d['shared']['p_matching']:.1e} / {d['repeat']['p_matching']:.1e} |"
        )
    t, x = r["total_s"], r["speedup"]
    print(
        f"| **all** | | | {t['shared']:.1f} | {t['repeat']:.1f} | {t['full']:.1f} | {x['shared']:.1f}x "
        f"| {x['repeat']:.1f}x | |\n"
    )


def reproduction(r: dict) -> None:
    print(
        "| behaviour | layer | m | p(-m) | p(-m/2) | p(0) | p(+m/2) | p(+m) | anti-steerable | "
        "MMLU -m / 0 / +m | TruthfulQA -m / 0 / +m | KL +m | paper -1 / 0 / +1 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, b in r["behaviours"].items():
        p = [t["p_matching"] for t in sorted(b["test"], key=lambda t: t["multiplier"])]
        mm, tq = b["mmlu_accuracy"], b["truthfulqa_accuracy"]
        paper = b["paper_llama2_7b_layer13"]
        print(
            f"| {name} | {b['chosen_layer']} | {b['chosen_relative_multiplier']:g} | "
            + " | ".join(f"{x:.3f}" for x in p)
            + f" | {b['steerability']['anti_steerable_share']:.2f} "
            f"| {mm['-m']:.2f} / {mm['0']:.2f} / {mm['+m']:.2f} "
            f"| {' / '.join(f'{tq[k]:.2f}' if k in tq else '-' for k in ('-m', '0', '+m'))} "
            f"| {b['kl_neutral']['+m']:.3f} "
            f"| {paper['-1']:.2f} / {paper['0']:.2f} / {paper['+1']:.2f} |"
        )
    if r.get("partial"):
        print("\n(partial run: the behaviours finished so far)\n")
    else:
        print(
            f"\nMMLU on {r['mmlu_items']} items, TruthfulQA on {r['truthfulqa_items']}; "
            f"{r['seconds']:.0f} s in all.\n"
        )


def concepts(r: dict) -> None:
    prompts = f"{len(r['prompts'])} prompts, " if "prompts" in r else ""
    print(f"Layer {r['layer']}, {prompts}greedy, {r['settings']['max_new_tokens']} new tokens.\n")
    print("| concept | relative m | judge P(concept) | VADER | perplexity | A/B p(matching) |")
    print("|---|---|---|---|---|---|")
    for concept, data in r["concepts"].items():
        for row in data["rows"]:
            vader = f"{row['vader_compound']:.2f}" if "vader_compound" in row else ""
            print(
                f"| {concept} | {row['relative_multiplier']:g} | {row['judge_p_concept']:.2f} | {vader} "
                f"| {row['perplexity']:.1f} | {row['ab_p_matching']:.3f} |"
            )
    accs = ", ".join(
        f"{c} {d['judge_held_out_accuracy']:.2f} on {d['judge_n_test']}" for c, d in r["concepts"].items()
    )
    print(f"\nJudge held-out accuracy: {accs} texts.\n")


def main() -> None:
    concept_files = sorted(p.name for p in RESULTS.glob("concept_steering*.json"))
    for name, fn in [
        ("extraction.json", extraction),
        ("steering_overhead.json", overhead),
        ("sweep_engine.json", sweep_engine),
        ("caa_reproduction.json", reproduction),
        *((name, concepts) for name in concept_files),
    ]:
        r = load(name)
        if r is not None:
            print(f"### {name}\n")
            fn(r)


if __name__ == "__main__":
    main()
