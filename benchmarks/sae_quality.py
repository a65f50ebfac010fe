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

    python benchmarks/sae_quality.py [--texts 200]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

import tlsteer
from tlsteer.sae import embedded_sae_layers, load_embedded_sae, sae_quality
from tlsteer.sae.embedded import embedded_sae_path

ROOT = Path(__file__).resolve().parents[1]
HELDOUT = ROOT / "benchmarks" / "build" / "sae_corpus" / "heldout.json"
TARGETS = {"explained_variance": 0.90, "l0_max": 64, "dead_share_max": 0.05, "ce_loss_score": 0.97}


def spread(items: list, n: int) -> list:
    return items[:: max(1, len(items) // n)][:n]


def summary(quality) -> dict:
    row = {k: v for k, v in dataclasses.asdict(quality).items() if k != "densities"}
    row["meets_targets"] = bool(
        quality.explained_variance >= TARGETS["explained_variance"]
        and quality.l0 <= TARGETS["l0_max"]
        and quality.dead_share < TARGETS["dead_share_max"]
        and quality.ce_loss_score >= TARGETS["ce_loss_score"]
    )
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--texts", type=int, default=200, help="held-out conversations per SAE")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sae_quality.json")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    start = time.perf_counter()
    model = tlsteer.load_model()
    sets = {}
    if HELDOUT.exists():
        sets["heldout"] = spread(json.loads(HELDOUT.read_text()), args.texts)
    else:
        print(
            f"no {HELDOUT.relative_to(ROOT)} (build the corpus first); only the shipped sample is evaluated"
        )
    out = {"targets": TARGETS, "layers": {}}
    for layer in embedded_sae_layers():
        sae = load_embedded_sae(layer)
        shipped = json.loads((embedded_sae_path(layer) / "heldout_texts.json").read_text())
        rows = {}
        for name, texts in {**sets, "shipped": shipped}.items():
            quality = sae_quality(model, sae, texts)
            print(f"layer {layer} [{name}] {quality}", flush=True)
            rows[name] = summary(quality)
        out["layers"][layer] = rows
    out["seconds"] = round(time.perf_counter() - start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out.relative_to(ROOT)} in {out['seconds']:.0f} s")


if __name__ == "__main__":
    main()
