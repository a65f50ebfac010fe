"""An ordinal class set: held-out Spearman of projections with the level, and steering along the order.

The profile (raw and feature space, ``tlsteer.sae.class_profile`` at the shipped SAE's hook) is
built on the training split of an ordinal set (default: the four levels of aggression). Each
direction along the order is fitted there:

- ``lstsq``: the ridge least-squares fit of the level on the representations;
- ``centroid``: the highest level's mean minus the lowest's;

in raw space, and in feature space (for projections: SAE codes; for steering: the feature
centroid difference decoded through ``W_dec``). The held-out Spearman correlation of every test
example's projection with its level is reported per direction and space.

Steering: each direction, scaled to unit norm, is added from each prompt's last token on at
``--strengths`` times the mean residual norm at the hook on neutral text; a random direction
(seeded) is the control. Prompts are the user prompts of the validation and test examples (never
used to build a direction). Generations are greedy; the set's K-class judge scores each by its
expected level. Reported per method: mean level per strength and the Spearman correlation of
level with strength over all generations. Writes ``benchmarks/results/class_ordinal_<set>.{json,png}``.

    python benchmarks/class_ordinal.py [--set aggression] [--strengths -0.5 -0.25 0 0.25 0.5]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import tlsteer
from tlsteer.eval import residual_norms
from tlsteer.eval.class_plots import plot_ordinal
from tlsteer.eval.judge import class_judge, load_embedder
from tlsteer.eval.ordinal import ordinal_sweep
from tlsteer.sae import class_profile, load_embedded_sae

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--set", default="aggression")
    parser.add_argument("--layer", type=int, default=None, help="default: the lowest shipped SAE")
    parser.add_argument("--strengths", type=float, nargs="+", default=[-0.5, -0.25, 0.0, 0.25, 0.5])
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    start = time.perf_counter()
    model = tlsteer.load_model()
    sae = load_embedded_sae(args.layer)
    ds = tlsteer.load_class_dataset(args.set)
    if not ds.ordinal:
        parser.error(f"{args.set!r} is not an ordinal class set")
    train, val, test = ds.split(seed=0)
    profile = class_profile(model, sae, train, n_bootstrap=0)
    held_out = class_profile(model, sae, test, n_bootstrap=0)
    hook = profile.hook_name
    low, high = ds.classes[0], ds.classes[-1]

    projections, spearman = {}, {}
    for space in ("raw", "feature"):
        for method in ("lstsq", "centroid"):
            w = profile.ordinal_weights(method, space)
            name = f"{space} {method}"
            spearman[name] = held_out.ordinal_spearman(w, space)
            rows = held_out.reps[space]
            projections[name] = {c: (rows[c] @ w).numpy() for c in ds.classes}
            print(f"held-out Spearman, {name}: {spearman[name]:+.3f}", flush=True)

    norm = residual_norms(model, tlsteer.load_neutral_text(), [hook])[hook]
    judge = class_judge(ds, load_embedder())
    print(f"judge held-out accuracy {judge.held_out_accuracy:.3f} (flagged: {judge.flagged})", flush=True)
    prompts = list(dict.fromkeys(e.prompt for part in (val, test) for e in part.examples[low]))
    gen = torch.Generator().manual_seed(0)
    directions = {
        "raw lstsq": profile.ordinal_direction("lstsq"),
        "raw centroid": profile.direction(low, high),
        "feature centroid": profile.direction(low, high, space="feature"),
        "random": tlsteer.SteeringVector({hook: torch.randn(model.cfg.d_model, generator=gen)}),
    }
    sweeps, out_sweeps = {}, {}
    for name, vec in directions.items():
        unit = vec / float(vec[hook].norm())
        sweep = ordinal_sweep(
            model, judge, prompts, unit, args.strengths, scale=norm, max_new_tokens=args.max_new_tokens
        )
        sweeps[name] = sweep
        out_sweeps[name] = sweep.to_dict()
        means = " ".join(f"{s:+.2f}:{m:.2f}" for s, m in zip(args.strengths, sweep.mean_scores, strict=True))
        print(f"{name}: mean level by strength {means}; Spearman {sweep.spearman:+.3f}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    title = f"{args.set} at {hook} (judge held-out {judge.held_out_accuracy:.2f}, {len(prompts)} prompts)"
    plot_ordinal(projections, sweeps, title, path=args.out / f"class_ordinal_{args.set}.png")
    out = {
        "set": args.set,
        "hook": hook,
        "train_sizes": train.sizes,
        "test_sizes": test.sizes,
        "held_out_spearman": spearman,
        "residual_norm": norm,
        "strengths": args.strengths,
        "prompts": len(prompts),
        "judge_held_out_accuracy": judge.held_out_accuracy,
        "judge_flagged": judge.flagged,
        "sweeps": out_sweeps,
        "seconds": round(time.perf_counter() - start, 1),
    }
    (args.out / f"class_ordinal_{args.set}.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"done in {out['seconds']:.0f} s")


if __name__ == "__main__":
    main()
