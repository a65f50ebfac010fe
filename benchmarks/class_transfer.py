"""The K x K transfer matrix of a built-in class set: steer from class i to class j, judge where it lands.

The profile is built on the training split (``tlsteer.sae.class_profile`` at the shipped SAE's
hook). Source prompts come from the test split: each is a chat whose first exchange is a test
example of the source class, then the user prompt of another test example
(``tlsteer.eval.transfer.source_prompts``). Each method of ``class_switch_methods`` (raw centroid
direction i -> j, mean-centred j, decoded feature direction i -> j) is scaled to ``--strength``
times the mean residual norm at the hook on neutral text. The diagonal is unsteered (primed by
class i alone). 32 new tokens, greedy, steering from each prompt's last token on. The K-class
judge (trained on the set's judge texts) labels every generation; its held-out accuracy is
reported. Writes ``benchmarks/results/class_transfer_<set>.{json,png}``.

    python benchmarks/class_transfer.py [--set speaking_styles] [--strength 0.5] [--prompts 8] [--tiny]
"""

from __future__ import annotations

import time
from pathlib import Path

import _common as common

import tlsteer
from tlsteer.classes import CLASS_DATASETS
from tlsteer.eval import residual_norms
from tlsteer.eval.class_plots import plot_transfer_matrix
from tlsteer.eval.judge import class_judge
from tlsteer.eval.transfer import class_switch_methods, source_prompts, transfer_matrix
from tlsteer.sae import class_profile

TINY = {"prompts": 1, "max_new_tokens": 4}


def body(args) -> Path:
    start = time.perf_counter()
    model = common.load_model(args)
    sae = common.load_sae(args, model, args.layer)
    ds = common.load_class_dataset(args, args.set)
    train, _, test = ds.split(seed=args.seed)
    profile = class_profile(model, sae, train, n_bootstrap=0)
    hook = profile.hook_name
    norm = residual_norms(model, tlsteer.load_neutral_text(), [hook])[hook]
    judge = class_judge(ds, common.load_embedder(args))
    prompts = source_prompts(model, test, n=args.prompts, seed=args.seed)
    out = {
        "set": args.set,
        "hook": hook,
        "strength": args.strength,
        "residual_norm": norm,
        "prompts_per_class": args.prompts,
        "judge_held_out_accuracy": judge.held_out_accuracy,
        "judge_flagged": judge.flagged,
        "methods": {},
    }
    for name, steer in class_switch_methods(profile, args.strength, norm).items():
        result = transfer_matrix(model, judge, prompts, steer, max_new_tokens=args.max_new_tokens)
        out["methods"][name] = result.to_dict()
        common.log.info(
            "== %s: off-diagonal success %.3f\n%s", name, result.success, result.matrix.round(2).to_string()
        )
        title = f"{args.set}: {name}, strength {args.strength} (judge {judge.held_out_accuracy:.2f})"
        plot_transfer_matrix(result.matrix, title, path=args.out / f"class_transfer_{args.set}_{name}.png")
    out["seconds"] = round(time.perf_counter() - start, 1)
    path = common.write_json(args.out / f"class_transfer_{args.set}.json", out)
    common.log.info("done in %.0f s", out["seconds"])
    return path


def main(argv: list[str] | None = None) -> Path:
    p = common.parser(__doc__)
    p.add_argument("--set", default="speaking_styles", choices=CLASS_DATASETS)
    p.add_argument("--layer", type=int, default=None, help="default: the lowest shipped SAE")
    p.add_argument("--strength", type=float, default=0.5)
    p.add_argument("--prompts", type=int, default=8, help="source prompts per class")
    p.add_argument("--max-new-tokens", type=int, default=32)
    return common.run(body, p, argv, TINY)


if __name__ == "__main__":
    main()
