"""The ``tlsteer`` console command: ``tlsteer demo`` and ``tlsteer train``."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tlsteer", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser("demo", help="build a vector on the embedded model, steer and score")
    demo.add_argument("--dataset", default="sentiment", choices=["sentiment", "formality"])
    demo.add_argument("--layer", type=int, default=12)
    demo.add_argument("--multiplier", type=float, default=16.0)
    demo.add_argument("--n-train", type=int, default=60)
    demo.add_argument("--max-new-tokens", type=int, default=40)
    demo.add_argument("--out", type=Path, default=None, help="save the vector here (.safetensors)")
    train = sub.add_parser("train", help="train a vector from a CAA A/B JSON file")
    train.add_argument("dataset", type=Path, help="CAA A/B JSON (e.g. generate_dataset.json)")
    train.add_argument("--model", default="smollm2-135m-instruct")
    train.add_argument("--layers", type=int, nargs="+", default=None)
    train.add_argument("--hook", default="resid_post")
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--limit", type=int, default=None)
    train.add_argument("--out", type=Path, required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:  # plain `tlsteer` runs the demo at its defaults
        args = _parser().parse_args(["demo"])
    if args.command == "demo":
        from tlsteer.demo import DemoConfig, run_demo

        run_demo(
            DemoConfig(
                args.dataset, args.layer, args.multiplier, args.n_train, args.max_new_tokens, out=args.out
            )
        )
        return 0
    from tlsteer.caa import train_steering_vector
    from tlsteer.data import load_caa_dataset
    from tlsteer.models import load_model

    model = load_model(args.model)
    pairs = load_caa_dataset(args.dataset, model, limit=args.limit)
    vec = train_steering_vector(
        model,
        pairs,
        layers=args.layers,
        hook=args.hook,
        batch_size=args.batch_size,
        show_progress=True,
    )
    vec.save(args.out)
    print(f"saved {vec!r} to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
