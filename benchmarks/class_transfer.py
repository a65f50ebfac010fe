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

    python benchmarks/class_transfer.py [--set speaking_styles] [--strength 0.5] [--prompts 8]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import tlsteer
from tlsteer.eval import residual_norms
from tlsteer.eval.class_plots import plot_transfer_matrix
from tlsteer.eval.judge import class_judge, load_embedder
from tlsteer.eval.transfer import class_switch_methods, source_prompts, transfer_matrix
from tlsteer.sae import class_profile, load_embedded_sae

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--set", default="speaking_styles", choices=tlsteer.CLASS_DATASETS)
    parser.add_argument("--layer", type=int, default=None, help="default: the lowest shipped SAE")
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--prompts", type=int, default=8, help="source prompts per class")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    start = time.perf_counter()
    model = tlsteer.load_model()
    sae = load_embedded_sae(args.layer)
    ds = tlsteer.load_class_dataset(args.set)
    train, _, test = ds.split(seed=0)
    profile = class_profile(model, sae, train, n_bootstrap=0)
    hook = profile.hook_name
    norm = residual_norms(model, tlsteer.load_neutral_text(), [hook])[hook]
    judge = class_judge(ds, load_embedder())
    prompts = source_prompts(model, test, n=args.prompts, seed=0)
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
    args.out.mkdir(parents=True, exist_ok=True)
    for name, steer in class_switch_methods(profile, args.strength, norm).items():
        result = transfer_matrix(model, judge, prompts, steer, max_new_tokens=args.max_new_tokens)
        out["methods"][name] = result.to_dict()
        print(
            f"== {name}: off-diagonal success {result.success:.3f}\n{result.matrix.round(2).to_string()}",
            flush=True,
        )
        title = f"{args.set}: {name}, strength {args.strength} (judge {judge.held_out_accuracy:.2f})"
        plot_transfer_matrix(result.matrix, title, path=args.out / f"class_transfer_{args.set}_{name}.png")
    out["seconds"] = round(time.perf_counter() - start, 1)
    (args.out / f"class_transfer_{args.set}.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"done in {out['seconds']:.0f} s")


if __name__ == "__main__":
    main()
