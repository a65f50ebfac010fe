"""Does llama.cpp, steered by a control vector tlsteer exported, move the next token as tlsteer does?

On the embedded SmolLM2-135M-Instruct GGUF, for 16 chat prompts: the change of the last-position
logits (steered minus unsteered) in llama.cpp, which reads the file ``vec.to_gguf(path)`` wrote at
strength ``m`` (``--control-vector-scaled``), against tlsteer adding ``m * vec`` at every position
of the TransformerLens model (``Positions.all()``); Pearson r per prompt, and the 20-token
greedy continuations (where they differ: ``tlsteer.llama_cpp.greedy_divergences``). Token ids
come from the TransformerLens tokenizer for both (no BOS).

Two llama.cpp models: the shipped Q4_1 file (quantised weights, 8-bit activations in its matrix
products) and a float32 copy of it (``write_f32_gguf``: the same dequantised weights tlsteer runs),
which isolates how the vector is applied from quantisation error. Controls: the same direction
exported one layer too low and one too high.

With ``--tiny``: a tiny random Llama-style model (20 blocks, so the same layers), written as Q4_1
and float32 GGUF files (``tlsteer.llama_cpp.write_llama_gguf``) for llama.cpp; without llama.cpp
the llama.cpp part is skipped, saying so.

    python benchmarks/llama_cpp_agreement.py [--prompts 16] [--new-tokens 20]   # 13 to 21 min on 2 cores
    python benchmarks/llama_cpp_agreement.py --tiny   # seconds

Needs llama.cpp: ``pip install xllamacpp`` (or ``TLSTEER_LLAMA_CPP_LIB=/path/to/libllama.so``).
Writes results/llama_cpp_agreement.json and .png.
"""

from __future__ import annotations

import platform
import statistics
import tempfile
import time
from importlib import metadata
from pathlib import Path

import _common as common
import torch

import tlsteer
from tlsteer.data import load_open_prompts
from tlsteer.llama_cpp import (
    LlamaCpp,
    compare_with_llama_cpp,
    find_llama_library,
    greedy_divergences,
    write_f32_gguf,
    write_llama_gguf,
)
from tlsteer.models import embedded_model_path

TINY = {"prompts": 2, "new_tokens": 3, "strengths": [8.0], "pairs": 8}
TINY_LAYERS = 20
"""The tiny model is deep enough for the real layers (6, 12 and 18, and the controls at 11 and 13)."""


def at_layer(vec: tlsteer.SteeringVector, layer: int) -> tlsteer.SteeringVector:
    """The same single direction, filed under another layer (the off-by-one control)."""
    (direction,) = vec.directions.values()
    return tlsteer.SteeringVector({f"blocks.{layer}.hook_resid_post": direction}, vec.metadata)


def vectors(model, args) -> dict[str, tlsteer.SteeringVector]:
    layer = args.layer
    pairs = tlsteer.load_builtin_dataset("sentiment", model)[: args.pairs]
    one = tlsteer.train_steering_vector(model, pairs, layers=[layer], batch_size=16)
    several = sorted({args.extra_layers[0], layer, args.extra_layers[1]})
    three = tlsteer.train_steering_vector(model, pairs, layers=several, batch_size=16)
    gen = torch.Generator().manual_seed(args.seed)
    noise = torch.randn(model.cfg.d_model, generator=gen)
    norm = one.norms()[f"blocks.{layer}.hook_resid_post"]
    random = tlsteer.SteeringVector({f"blocks.{layer}.hook_resid_post": noise / noise.norm() * norm})
    return {
        f"sentiment L{layer}": one,
        "sentiment " + "+".join(f"L{x}" for x in several): three,
        f"random L{layer} (same norm)": random,
    }


def summary(c, diverged: tuple | list = ()) -> dict:
    out = {
        "r_mean": statistics.fmean(c.correlations),
        "r_min": min(c.correlations),
        "r_per_prompt": [round(r, 5) for r in c.correlations],
        "mean_abs_change_tlsteer": float(c.changes_tlsteer.abs().mean()),
        "mean_abs_change_llama": float(c.changes_llama.abs().mean()),
    }
    if c.greedy_tlsteer:
        out |= {
            "greedy_same": sum(c.greedy_same),
            "greedy_first_token_same": sum(
                a[0] == b[0] for a, b in zip(c.greedy_tlsteer, c.greedy_llama, strict=True)
            ),
            "greedy_divergences": diverged,
        }
    return out


def unsteered_greedy(model, llama: LlamaCpp, prompts: list[str], new_tokens: int) -> dict:
    ours = tlsteer.generate_tokens(model, prompts, max_new_tokens=new_tokens, stop_at_eos=False).new_tokens
    theirs = [tuple(llama.greedy(tlsteer.tokenize(model, p), new_tokens)) for p in prompts]
    same = [a == b for a, b in zip(ours, theirs, strict=True)]
    return {
        "greedy_same": sum(same),
        "greedy_first_token_same": sum(a[0] == b[0] for a, b in zip(ours, theirs, strict=True)),
    }


def gguf_files(args, model, tmp: str) -> dict[str, Path]:
    """The shipped Q4_1 file and its float32 copy; with ``--tiny`` the tiny model in both."""
    if args.tiny:
        return {q: write_llama_gguf(model, f"{tmp}/tiny_{q}.gguf", q) for q in ("Q4_1", "F32")}
    return {"Q4_1": embedded_model_path(), "F32": write_f32_gguf(embedded_model_path(), f"{tmp}/f32.gguf")}


def run_llama(args, model, prompts: list[str], vecs: dict, result: dict) -> dict:
    """Every file, strength and vector against llama.cpp; fills ``result``, returns the scatter runs."""
    layer = args.layer
    plot_strength = args.strengths[len(args.strengths) // 2]
    scatter = {}
    with tempfile.TemporaryDirectory() as tmp:
        for file_name, path in gguf_files(args, model, tmp).items():
            with LlamaCpp(path, n_threads=1 if args.tiny else None) as llama:
                runs = result["runs"][file_name] = {}
                result.setdefault("unsteered_greedy", {})[file_name] = unsteered_greedy(
                    model, llama, prompts, args.new_tokens
                )
                for m in args.strengths:
                    for name, vec in vecs.items():
                        c = compare_with_llama_cpp(
                            model, llama, vec, m, prompts, max_new_tokens=args.new_tokens
                        )
                        diverged = greedy_divergences(model, vec, m, prompts, c)
                        runs.setdefault(name, {})[str(m)] = summary(c, diverged)
                        result.setdefault("unsteered", {})[file_name] = {
                            "r_mean": statistics.fmean(c.unsteered_correlations),
                            "r_min": min(c.unsteered_correlations),
                            "max_abs_diff": c.unsteered_max_abs_diff,
                        }
                        if name == f"sentiment L{layer}" and m == plot_strength:
                            scatter[file_name] = c
                    base = vecs[f"sentiment L{layer}"]
                    for shift in (-1, 1):
                        c = compare_with_llama_cpp(
                            model,
                            llama,
                            base,
                            m,
                            prompts,
                            max_new_tokens=0,
                            llama_vector=at_layer(base, layer + shift),
                        )
                        runs.setdefault(f"control: exported as L{layer + shift}", {})[str(m)] = summary(c)
                    common.log.info(
                        "%s x%g: %s",
                        file_name,
                        m,
                        ", ".join(f"{k} r={v[str(m)]['r_mean']:.4f}" for k, v in runs.items()),
                    )
    return scatter


def body(args) -> Path:
    start = time.perf_counter()
    model = common.load_model(args, device="cpu", tiny_layers=TINY_LAYERS)
    questions = load_open_prompts()[: args.prompts]
    prompts = [tlsteer.chat_prompt(model, q) for q in questions]
    vecs = vectors(model, args)
    result = {
        "model": model.cfg.model_name,
        "prompts": questions,
        "tokens_per_prompt": [len(tlsteer.tokenize(model, p)) for p in prompts],
        "strengths": list(args.strengths),
        "vector_norms": {name: {h: round(n, 4) for h, n in v.norms().items()} for name, v in vecs.items()},
        "runs": {},
    }
    try:
        library = find_llama_library()
    except (ModuleNotFoundError, FileNotFoundError, OSError) as err:
        if not args.tiny:
            raise
        common.log.info("--tiny: no llama.cpp (%s); the llama.cpp part is skipped", err)
        result["skipped"] = f"no llama.cpp: {err}"
        library = None
    scatter = {}
    if library is not None:
        result |= {
            "llama_cpp_library": library.name,  # the file, not this machine's path
            "xllamacpp": _xllamacpp_version(library),
            "machine": platform.processor() or platform.machine(),
        }
        scatter = run_llama(args, model, prompts, vecs, result)
    result["seconds"] = round(time.perf_counter() - start, 1)
    path = common.write_json(args.out / "llama_cpp_agreement.json", result)
    if scatter:
        plot(
            result,
            scatter,
            args.layer,
            args.strengths[len(args.strengths) // 2],
            args.out / "llama_cpp_agreement.png",
        )
    common.log.info("%s", {k: result.get(k) for k in ("unsteered", "unsteered_greedy", "seconds")})
    return path


def plot(result: dict, scatter: dict, layer: int, plot_strength: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 5.2))
    gen = torch.Generator().manual_seed(0)
    for ax, (file_name, c) in zip(axes, scatter.items(), strict=False):
        x, y = c.changes_tlsteer.flatten(), c.changes_llama.flatten()
        keep = torch.randperm(x.numel(), generator=gen)[:60_000]
        ax.scatter(x[keep], y[keep], s=1, alpha=0.25, rasterized=True)
        lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, ls="--")
        ax.set_title(
            f"llama.cpp {file_name} vs tlsteer, sentiment L{layer} x{plot_strength:g}\n"
            f"r per prompt: mean {statistics.fmean(c.correlations):.4f}, min {min(c.correlations):.4f}",
            fontsize=10,
        )
        ax.set_xlabel("logit change, tlsteer (TransformerLens, float32)")
        ax.set_ylabel(f"logit change, llama.cpp ({file_name})")
    ax = axes[2]
    styles = {"Q4_1": "-", "F32": "--"}
    colours = {}
    for file_name, runs in result["runs"].items():
        for name, by_m in runs.items():
            colour = colours.setdefault(name, f"C{len(colours)}")
            ms = [float(m) for m in by_m]
            r = [by_m[m]["r_mean"] for m in by_m]
            ax.plot(ms, r, styles[file_name], color=colour, marker="o", label=f"{file_name}: {name}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("strength m")
    ax.set_ylabel("mean Pearson r of logit changes")
    ax.set_title(
        "agreement by strength (solid: shipped Q4_1, dashed: F32 copy);\n"
        "controls: the vector exported one layer off",
        fontsize=10,
    )
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _xllamacpp_version(library: Path) -> str | None:
    """xllamacpp's version, also when its library comes from another environment's site-packages."""
    try:
        return metadata.version("xllamacpp")
    except metadata.PackageNotFoundError:
        found = sorted(library.parent.parent.glob("xllamacpp-*.dist-info"))
        return found[0].name.removesuffix(".dist-info").split("-", 1)[1] if found else None


def main(argv: list[str] | None = None) -> Path:
    p = common.parser(__doc__)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=20)
    p.add_argument("--layer", type=int, default=12, help="the sentiment vector's layer")
    p.add_argument(
        "--extra-layers", type=int, nargs=2, default=[6, 18], help="the 3-layer vector's other two"
    )
    p.add_argument("--strengths", type=float, nargs="+", default=[2.0, 4.0, 8.0, 16.0])
    p.add_argument("--pairs", type=int, default=60, help="sentiment pairs that build the vectors")
    return common.run(body, p, argv, TINY)


if __name__ == "__main__":
    main()
