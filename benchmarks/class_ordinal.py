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
expected level (``tlsteer.eval.ordinal.ordinal_sweep``). Reported per method: mean level per
strength and the Spearman correlation of level with strength over all generations. Writes
``benchmarks/results/class_ordinal_<set>.{json,png}``.

    python benchmarks/class_ordinal.py [--set aggression] [--strengths -0.5 -0.25 0 0.25 0.5] [--tiny]
"""

from __future__ import annotations

import time
from pathlib import Path

import _common as common
import torch

import tlsteer
from tlsteer.eval import residual_norms
from tlsteer.eval.class_plots import plot_ordinal
from tlsteer.eval.judge import class_judge
from tlsteer.eval.ordinal import ordinal_sweep
from tlsteer.sae import class_profile

TINY = {"strengths": [-0.5, 0.0, 0.5], "max_new_tokens": 4}


def body(args) -> Path:
    start = time.perf_counter()
    model = common.load_model(args)
    sae = common.load_sae(args, model, args.layer)
    ds = common.load_class_dataset(args, args.set)
    if not ds.ordinal:
        raise SystemExit(f"{args.set!r} is not an ordinal class set")
    train, val, test = ds.split(seed=args.seed)
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
            common.log.info("held-out Spearman, %s: %+.3f", name, spearman[name])

    norm = residual_norms(model, tlsteer.load_neutral_text(), [hook])[hook]
    judge = class_judge(ds, common.load_embedder(args))
    common.log.info("judge held-out accuracy %.3f (flagged: %s)", judge.held_out_accuracy, judge.flagged)
    prompts = list(dict.fromkeys(e.prompt for part in (val, test) for e in part.examples[low]))
    gen = torch.Generator().manual_seed(args.seed)
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
        common.log.info("%s: mean level by strength %s; Spearman %+.3f", name, means, sweep.spearman)
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
    path = common.write_json(args.out / f"class_ordinal_{args.set}.json", out)
    common.log.info("done in %.0f s", out["seconds"])
    return path


def main(argv: list[str] | None = None) -> Path:
    p = common.parser(__doc__)
    p.add_argument("--set", default="aggression")
    p.add_argument("--layer", type=int, default=None, help="default: the lowest shipped SAE")
    p.add_argument("--strengths", type=float, nargs="+", default=[-0.5, -0.25, 0.0, 0.25, 0.5])
    p.add_argument("--max-new-tokens", type=int, default=40)
    return common.run(body, p, argv, TINY)


if __name__ == "__main__":
    main()
