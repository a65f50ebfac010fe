"""The ``tlsteer`` console command: ``tlsteer demo``, ``train``, ``check`` and ``view``.

A mistake in the input (a missing file, a bad ``--layer``, an output folder that does not exist)
prints one line, ``tlsteer <command>: error: <message>``, and exits with status 2, as argparse
does for a malformed command line; ``--debug`` shows the traceback instead. Files are checked
before any model is loaded: every input file must exist, and every output path's folder must
exist and be writable, so a typo fails at once rather than after the run.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path
from typing import Any

__all__ = ["CommandError", "main"]

_INPUTS = {"train": ("dataset",), "check": ("vector",), "view": ("vector",)}
"""Per command, the options naming files to read (checked before any model is loaded)."""

_OUTPUTS = {"demo": ("out",), "train": ("out",), "check": ("json",), "view": ("html", "png", "json")}
"""Per command, the options naming files to write (checked before any model is loaded)."""


class CommandError(SystemExit):
    """Exit status 2 after a one-line ``tlsteer <command>: error: <message>`` on stderr.

    ``str()`` of it is the message (``code`` is 2, as for argparse's own errors).
    """

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tlsteer", description=(__doc__ or "").split("\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", help="show the Python traceback of an error instead of one line"
    )
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser(
        "demo", parents=[common], help="build a vector on the embedded model, steer and score"
    )
    demo.add_argument("--dataset", default="sentiment", choices=["sentiment", "formality"])
    demo.add_argument("--layer", type=int, default=12)
    demo.add_argument("--multiplier", type=float, default=16.0)
    demo.add_argument("--n-train", type=int, default=60)
    demo.add_argument("--max-new-tokens", type=int, default=40)
    demo.add_argument("--out", type=Path, default=None, help="save the vector here (.safetensors)")
    train = sub.add_parser("train", parents=[common], help="train a vector from a CAA A/B JSON file")
    train.add_argument("dataset", type=Path, help="CAA A/B JSON (e.g. generate_dataset.json)")
    train.add_argument("--model", default="smollm2-135m-instruct")
    train.add_argument("--layers", type=int, nargs="+", default=None)
    train.add_argument("--hook", default="resid_post")
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--limit", type=int, default=None)
    train.add_argument("--out", type=Path, required=True)
    check = sub.add_parser(
        "check",
        parents=[common],
        help="check KV cache, batching, multiplier 0 and hook removal on a model (exit 1 on failure)",
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
        "view",
        parents=[common],
        help="per-token projection on a vector and KL of its steering, as HTML (and a figure)",
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


def _load_model(name: str) -> Any:
    """The model a command names (tests replace this with a tiny model)."""
    from tlsteer.models import load_model

    return load_model(name)


def _option(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _check_files(args: argparse.Namespace) -> None:
    """Fail before any work: inputs must exist; outputs need an existing, writable folder."""
    for dest in _INPUTS.get(args.command, ()):
        path = getattr(args, dest)
        if path is not None and not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "does not exist"
            name = dest if dest == "dataset" else _option(dest)
            raise FileNotFoundError(f"{name} {str(path)!r} {what}")
    seen: dict[Path, str] = {}
    for dest in _OUTPUTS.get(args.command, ()):
        path = getattr(args, dest)
        if path is None:
            continue
        option, folder = _option(dest), path.parent
        if not folder.is_dir():
            what = "is not a folder" if folder.exists() else "does not exist"
            raise FileNotFoundError(
                f"cannot write {option} {str(path)!r}: folder {str(folder)!r} {what}; "
                "create it or pick another path"
            )
        if path.is_dir():
            raise IsADirectoryError(f"cannot write {option} {str(path)!r}: it is a folder; give a file name")
        if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise PermissionError(
                f"cannot write {option} {str(path)!r}: no write permission in {str(folder)!r}"
            )
        key = Path(os.path.abspath(path))
        if key in seen:
            raise ValueError(f"{seen[key]} and {option} are the same file {str(path)!r}; give each its own")
        seen[key] = option


def _read_vector(args: argparse.Namespace) -> Any:
    """The vector of ``--vector`` (read before the model, so a bad file fails fast), else ``None``."""
    from tlsteer.vector import SteeringVector

    if args.vector is None:
        return None
    suffix = args.vector.suffix.lower()
    if suffix == ".gguf":
        return SteeringVector.from_gguf(args.vector)
    if suffix == ".npy":
        if args.layer is None:
            raise ValueError(
                f"a .npy vector needs --layer (the block whose resid_post it steers); "
                f"got --vector {str(args.vector)!r} and no --layer"
            )
        return SteeringVector.from_numpy_file(args.vector, args.layer)
    return SteeringVector.load(args.vector)


def _load_vector(args: argparse.Namespace, model: Any, vector: Any = None) -> Any:
    """``vector`` (from :func:`_read_vector`), else a random direction at ``--layer``."""
    import torch

    from tlsteer.vector import SteeringVector

    if vector is not None:
        return vector
    n_layers = model.cfg.n_layers
    layer = n_layers // 2 if args.layer is None else args.layer
    if not 0 <= layer < n_layers:
        raise ValueError(f"--layer {layer} is not a layer of {args.model} (valid: 0..{n_layers - 1})")
    direction = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    return SteeringVector({f"blocks.{layer}.hook_resid_post": args.norm * direction / direction.norm()})


def _run_check(args: argparse.Namespace) -> int:
    import json

    from tlsteer.invariants import DEFAULT_PROMPTS, check_invariants
    from tlsteer.positions import Positions

    vector = _read_vector(args)
    model = _load_model(args.model)
    steering = _load_vector(args, model, vector).steering(
        args.multiplier, positions=Positions.start_at(args.min_token_index)
    )
    report = check_invariants(
        model,
        steering,
        args.prompt or DEFAULT_PROMPTS,
        max_new_tokens=args.max_new_tokens,
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
    from tlsteer.positions import Positions

    vector = _read_vector(args)
    model = _load_model(args.model)
    view = token_view(
        model,
        _load_vector(args, model, vector),
        args.prompt,
        args.multiplier,
        max_new_tokens=args.max_new_tokens,
        chat=args.chat,
        positions=Positions.start_at(args.min_token_index),
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


def _is_input_error(err: BaseException) -> bool:
    """An error in what the user gave: a file system error, or a ValueError, TypeError or
    LookupError that tlsteer's own validation raised (a ``raise`` statement in tlsteer). The same
    types raised by Python or a library inside tlsteer are bugs, and keep their traceback."""
    if isinstance(err, OSError):
        return True
    if not isinstance(err, (ValueError, TypeError, LookupError)) or err.__traceback__ is None:
        return False
    frame = traceback.extract_tb(err.__traceback__)[-1]
    package = os.path.dirname(os.path.abspath(__file__))
    inside = os.path.abspath(frame.filename).startswith(package + os.sep)
    return inside and (frame.line or "").startswith("raise")


def _message(err: BaseException) -> str:
    if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
        return err.args[0]  # str(KeyError) would wrap the message in quotes
    return str(err) or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    """Run ``tlsteer <command>``; returns the exit status (raises :class:`CommandError` on bad input)."""
    args = _parser().parse_args(argv)
    if args.command is None:  # plain `tlsteer` runs the demo at its defaults
        args = _parser().parse_args(["demo"])
    try:
        _check_files(args)
        return _run(args)
    except (OSError, ValueError, TypeError, LookupError) as err:
        if args.debug or not _is_input_error(err):
            raise
        message = _message(err)
        print(f"tlsteer {args.command}: error: {message}", file=sys.stderr)
        raise CommandError(message) from err


def _run(args: argparse.Namespace) -> int:
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

    model = _load_model(args.model)
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
