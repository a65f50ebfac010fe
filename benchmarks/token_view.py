"""The token-level view of steering on the embedded model, rendered as HTML, a figure and a screenshot.

A sentiment vector (the first 60 built-in pairs, one layer) steers a chat prompt's greedy
continuation at a multiplier relative to the mean residual norm at that layer (as in
``concept_steering.py``). :func:`tlsteer.eval.token_view.token_view` gives, per token, the unsteered
residual's projection on the unit vector and KL(unsteered || steered) of the next-token
distributions; :func:`~tlsteer.eval.token_view.feature_token_view` gives the activations of the
layer's shipped SAE features that the same pairs move most (the ``paired`` feature vector), under
the same steering. The HTML is screenshotted in a headless Chromium when one is on PATH
(``apt-get install chromium``); otherwise the JSON says why there is no screenshot.

    python benchmarks/token_view.py [--layer 12] [--relative 0.3] [--steer generation|all] [--tiny]

Writes to benchmarks/results/: token_view.html, token_view.png, token_view_features.html,
token_view_features.png, token_view_screenshot.png (and _features_screenshot.png), token_view.json.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import _common as common
import numpy as np
from matplotlib.image import imread, imsave

import tlsteer
from tlsteer import Positions
from tlsteer.eval.sweeps import residual_norms
from tlsteer.eval.token_view import feature_token_view, token_view
from tlsteer.sae import as_feature_dictionary, feature_vector

PROMPT = "My morning was awful, but the evening was lovely. Tell me about your weekend."
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
TINY = {"layer": 2, "max_new_tokens": 4, "features": 2, "pairs": 8}


def screenshot(html: Path, png: Path, width: int = 1100, height: int = 900) -> str:
    """A headless-browser screenshot of ``html`` cropped to its content; the browser used, or why none."""
    browser = next((b for b in map(shutil.which, BROWSERS) if b), None)
    if browser is None:
        return f"no headless browser on PATH (looked for {', '.join(BROWSERS)})"
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "shot.png"
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
        ]
        run = subprocess.run(
            [
                browser,
                *flags,
                f"--window-size={width},{height}",
                f"--screenshot={raw}",
                html.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if run.returncode != 0 or not raw.is_file():
            return f"{browser} failed ({run.returncode}): {run.stderr[-500:]}"
        image = imread(str(raw))
        ink = np.nonzero((image[..., :3] < 0.97).any(axis=(1, 2)))[0]  # rows that are not blank page
        bottom = min(image.shape[0], int(ink.max()) + 12) if ink.size else image.shape[0]
        imsave(str(png), image[:bottom])
    version = subprocess.run([browser, "--version"], capture_output=True, text=True).stdout.strip()
    return version or browser


def summary(values: tuple[float, ...], generated: tuple[bool, ...], skip_first: bool = True) -> dict:
    prompt = [
        v for i, (v, g) in enumerate(zip(values, generated, strict=True)) if not g and (i or not skip_first)
    ]
    new = [v for v, g in zip(values, generated, strict=True) if g]
    return {
        "prompt_mean": float(np.mean(prompt)) if prompt else None,
        "generated_mean": float(np.mean(new)) if new else None,
        "max": float(np.max(values)),
        "argmax_token": int(np.argmax(values)),
    }


def body(args) -> Path:
    start = time.perf_counter()
    model = common.load_model(args)
    hook = f"blocks.{args.layer}.hook_resid_post"
    pairs = tlsteer.load_builtin_dataset("sentiment", model)[: args.pairs]
    vec = tlsteer.train_steering_vector(model, pairs, layers=[args.layer], batch_size=16)
    norm = residual_norms(model, tlsteer.load_neutral_text(), [hook])[hook]
    multiplier = args.relative * norm / float(vec[hook].norm())
    n_prompt = len(tlsteer.tokenize(model, tlsteer.chat_prompt(model, args.prompt)))
    first = n_prompt - 1 if args.steer == "generation" else 0  # the last prompt token picks the first new one
    positions = Positions.start_at(first)
    t0 = time.perf_counter()
    view = token_view(
        model,
        vec,
        args.prompt,
        multiplier,
        max_new_tokens=args.max_new_tokens,
        chat=True,
        positions=positions,
    )
    seconds_view = time.perf_counter() - t0
    plain = tlsteer.generate(model, [args.prompt], max_new_tokens=args.max_new_tokens, chat=True)[0]
    steered = model.tokenizer.decode(list(view.token_ids[view.n_prompt :]), skip_special_tokens=True)
    (args.out / "token_view.html").write_text(view.to_html(standalone=True), encoding="utf-8")
    view.plot(args.out / "token_view.png")
    browser = screenshot(args.out / "token_view.html", args.out / "token_view_screenshot.png")

    sae = common.load_sae(args, model, args.layer)
    fv = feature_vector(model, sae, pairs, formula="paired")
    top = fv.values.topk(args.features).indices.tolist()  # the features the positive side raises most
    t0 = time.perf_counter()
    steering = vec.steering(multiplier, positions=positions)
    features = feature_token_view(model, as_feature_dictionary(sae), top, view, steering)
    seconds_features = time.perf_counter() - t0
    (args.out / "token_view_features.html").write_text(features.to_html(standalone=True), encoding="utf-8")
    features.plot(args.out / "token_view_features.png")
    screenshot(args.out / "token_view_features.html", args.out / "token_view_features_screenshot.png")

    out = {
        "prompt": args.prompt,
        "layer": args.layer,
        "hook": hook,
        "relative_multiplier": args.relative,
        "applied_multiplier": multiplier,
        "vector_norm": float(vec[hook].norm()),
        "mean_residual_norm": norm,
        "min_token_index": first,
        "n_prompt_tokens": view.n_prompt,
        "n_generated_tokens": len(view.tokens) - view.n_prompt,
        "unsteered_continuation": plain,
        "steered_continuation": steered,
        "projection": summary(view.projection, view.generated),
        "steered_projection": summary(view.steered_projection, view.generated),
        "kl": summary(view.kl, view.generated, skip_first=False),
        "features": {
            str(f): {
                "paired_value": float(fv.values[f]),
                "steered": summary(features.activations[j], features.generated),
                "unsteered": summary(features.unsteered_activations[j], features.generated),
            }
            for j, f in enumerate(top)
        },
        "view": view.to_dict(),
        "feature_view": features.to_dict(),
        "screenshot_browser": browser,
        "seconds_token_view": seconds_view,
        "seconds_feature_view": seconds_features,
        "seconds": time.perf_counter() - start,
    }
    path = common.write_json(args.out / "token_view.json", out)
    common.log.info(
        "steered: %r\nunsteered: %r\nscreenshot: %s; done in %.0f s", steered, plain, browser, out["seconds"]
    )
    return path


def main(argv: list[str] | None = None) -> Path:
    p = common.parser(__doc__)
    p.add_argument("--layer", type=int, default=12, help="a layer with a shipped SAE (6 or 12)")
    p.add_argument("--relative", type=float, default=0.3, help="multiplier x mean residual norm / |v|")
    p.add_argument("--steer", choices=["generation", "all"], default="generation")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--features", type=int, default=3)
    p.add_argument("--prompt", default=PROMPT)
    p.add_argument("--pairs", type=int, default=60, help="sentiment pairs that build the vector")
    return common.run(body, p, argv, TINY)


if __name__ == "__main__":
    main()
