"""The ``tlsteer`` console command: ``tlsteer demo``, ``train``, ``check`` and ``view``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

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
    check = sub.add_parser(
        "check", help="check KV cache, batching, multiplier 0 and hook removal on a model (exit 1 on failure)"
    )
    check.add_argument("--model", default="smollm2-135m-instruct")
    check.add_argument(
        "--vector",
        type=Path,
        default=None,
        help=".safetensors, .gguf (llama.cpp control vector) or .npy (needs --layer); "
        "default: a random direction at --layer",
    )
    check.add_argument("--layer", type=int, default=None, help="layer of a .npy vector or the random one")
    check.add_argument("--norm", type=float, default=8.0, help="norm of the random direction")
    check.add_argument("--multiplier", type=float, default=4.0)
    check.add_argument("--prompt", action="append", default=None, help="a prompt (repeat for several)")
    check.add_argument("--max-new-tokens", type=int, default=8)
    check.add_argument("--min-token-index", type=int, default=0)
    check.add_argument("--chat", action="store_true", help="put prompts in the chat template")
    check.add_argument("--tolerance", type=float, default=None)
    check.add_argument("--json", type=Path, default=None, help="also write the report here")
    view = sub.add_parser(
        "view", help="per-token projection on a vector and KL of its steering, as HTML (and a figure)"
    )
    view.add_argument("--model", default="smollm2-135m-instruct")
    view.add_argument(
        "--vector", type=Path, required=True, help=".safetensors, .gguf or .npy (needs --layer)"
    )
    view.add_argument("--prompt", required=True)
    view.add_argument("--multiplier", type=float, required=True)
    view.add_argument("--layer", type=int, default=None, help="layer to read (and of a .npy vector)")
    view.add_argument("--max-new-tokens", type=int, default=30)
    view.add_argument("--min-token-index", type=int, default=0)
    view.add_argument("--chat", action="store_true", help="put the prompt in the chat template")
    view.add_argument("--html", type=Path, required=True, help="write the token strip here (a whole page)")
    view.add_argument("--png", type=Path, default=None, help="also write the figure here")
    view.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    return parser


def _load_vector(args: argparse.Namespace, model: Any) -> Any:
    import torch

    from tlsteer.vector import SteeringVector

    if args.vector is None:
        layer = model.cfg.n_layers // 2 if args.layer is None else args.layer
        direction = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
        return SteeringVector({f"blocks.{layer}.hook_resid_post": args.norm * direction / direction.norm()})
    suffix = args.vector.suffix.lower()
    if suffix == ".gguf":
        return SteeringVector.from_gguf(args.vector)
    if suffix == ".npy":
        if args.layer is None:
            raise SystemExit("a .npy vector needs --layer (the block whose resid_post it steers)")
        return SteeringVector.from_numpy_file(args.vector, args.layer)
    return SteeringVector.load(args.vector)


def _run_check(args: argparse.Namespace) -> int:
    import json

    from tlsteer.invariants import DEFAULT_PROMPTS, check_invariants
    from tlsteer.models import load_model

    model = load_model(args.model)
    report = check_invariants(
        model,
        _load_vector(args, model),
        args.prompt or DEFAULT_PROMPTS,
        multiplier=args.multiplier,
        max_new_tokens=args.max_new_tokens,
        min_token_index=args.min_token_index,
        chat=args.chat,
        tolerance=args.tolerance,
    )
    print(report)
    if args.json is not None:
        args.json.write_text(json.dumps(report.to_dict(), indent=1))
    return 0 if report.passed else 1


def _run_view(args: argparse.Namespace) -> int:
    import json

    from tlsteer.eval.token_view import token_view
    from tlsteer.models import load_model

    model = load_model(args.model)
    view = token_view(
        model,
        _load_vector(args, model),
        args.prompt,
        args.multiplier,
        max_new_tokens=args.max_new_tokens,
        chat=args.chat,
        min_token_index=args.min_token_index,
        layer=args.layer,
    )
    args.html.write_text(view.to_html(standalone=True), encoding="utf-8")
    if args.png is not None:
        view.plot(args.png)
    if args.json is not None:
        args.json.write_text(json.dumps(view.to_dict(), indent=1))
    n = view.n_prompt
    print(f"{len(view.tokens)} tokens ({n} prompt, {len(view.tokens) - n} generated); wrote {args.html}")
    print("continuation:", model.tokenizer.decode(list(view.token_ids[n:])))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:  # plain `tlsteer` runs the demo at its defaults
        args = _parser().parse_args(["demo"])
    if args.command == "check":
        return _run_check(args)
    if args.command == "view":
        return _run_view(args)
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
