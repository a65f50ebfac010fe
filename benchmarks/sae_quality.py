"""Quality of every shipped SAE of the embedded model on held-out conversations: one command.

For each layer of ``tlsteer.sae.embedded_sae_layers()``, ``tlsteer.sae.sae_quality`` on held-out
chat conversations (system, user and assistant turns) that no SAE trained on:

- ``heldout``: the held-out split of the corpus (``benchmarks/build/sae_corpus/heldout.json``,
  5% of the user turns, chosen by hash; CAA A/B items answered, and the model's own answers), up
  to ``--texts`` of them spread over the list. Present after ``benchmarks/sae_corpus.py`` ran.
- ``shipped``: the held-out conversations shipped beside each SAE (``heldout_texts.json``: those
  whose user turn is one of tlsteer's own prompts), which a fresh clone has.

Position 0 of each conversation (an attention sink, never trained on) is left out of every number.
Explained variance is ``1 - sum ||h - h_hat||^2 / sum ||h - mean h||^2`` pooled over all evaluated
tokens (sae-lens's ``explained_variance_legacy`` is the per-token mean, also reported). The CE loss
score is ``(L_zero - L_sae) / (L_zero - L_clean)`` with the SAE spliced in without its error term
and the hook zero-ablated at the evaluated positions. Writes ``benchmarks/results/sae_quality.json``.

With ``--tiny``: random SAEs on the tiny model, scored on a few of the shipped conversations (also
standing in for the corpus's held-out split unless ``--heldout`` names one).

    python benchmarks/sae_quality.py [--texts 200] [--tiny]
    python benchmarks/sae_quality.py --model gemma-3-270m   # sae_quality_gemma-3-270m.json
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import _common as common

from tlsteer.sae import embedded_sae_layers, sae_quality
from tlsteer.sae.corpus import spread
from tlsteer.sae.embedded import embedded_sae_path
from tlsteer.sae.quality import QualityTargets

HELDOUT = common.BUILD / "sae_corpus" / "heldout.json"
TARGETS = QualityTargets()
TINY = {"texts": 3, "heldout": None}


def summary(quality) -> dict:
    return {**quality.to_dict(), "meets_targets": quality.meets(TARGETS)}


def shipped_texts(args, layer: int) -> list[str]:
    """The held-out conversations shipped beside the SAE (with ``--tiny``: a few of the lowest one's)."""
    if args.tiny:
        return json.loads((embedded_sae_path(min(embedded_sae_layers())) / "heldout_texts.json").read_text())[
            : args.texts
        ]
    return json.loads((embedded_sae_path(layer, args.model) / "heldout_texts.json").read_text())


def body(args) -> Path:
    start = time.perf_counter()
    model = common.load_model(args)
    tag = common.model_tag(args)
    if args.heldout == HELDOUT and tag:  # the second model's corpus
        args.heldout = common.BUILD / f"sae_corpus{tag}" / "heldout.json"
    sets = {}
    if args.heldout is not None and args.heldout.exists():
        sets["heldout"] = spread(json.loads(args.heldout.read_text()), args.texts)
    elif args.tiny:  # no corpus: the shipped sample stands in for its held-out split
        sets["heldout"] = shipped_texts(args, min(common.sae_layers(args)))
    else:
        common.log.info(
            "no held-out corpus (%s; build the corpus first); only the shipped sample", args.heldout
        )
    out = {"model": model.cfg.model_name, "targets": TARGETS.to_dict(), "layers": {}}
    for layer in common.sae_layers(args):
        sae = common.load_sae(args, model, layer)
        rows = {}
        for name, texts in {**sets, "shipped": shipped_texts(args, layer)}.items():
            quality = sae_quality(model, sae, texts)
            common.log.info("layer %d [%s] %s", layer, name, quality)
            rows[name] = summary(quality)
        out["layers"][layer] = rows
    out["seconds"] = round(time.perf_counter() - start, 1)
    path = common.write_json(args.out / f"sae_quality{tag}.json", out)
    common.log.info("wrote %s in %.0f s", path, out["seconds"])
    return path


def main(argv: list[str] | None = None) -> Path:
    p = common.parser(__doc__)
    p.add_argument("--texts", type=int, default=200, help="held-out conversations per SAE")
    p.add_argument("--heldout", type=Path, default=HELDOUT, help="the corpus's held-out conversations")
    return common.run(body, p, argv, TINY)


if __name__ == "__main__":
    main()
