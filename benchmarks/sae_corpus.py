"""Build the offline SAE training corpus for the embedded model: chat conversations, tokenized and packed.

Every example is what SmolLM2-135M-Instruct sees around steering: a chat-formatted conversation
(``tlsteer.chat_prompt``: the template's system turn, a user turn, an assistant turn holding the
response, closed by ``<|im_end|>`` unless the response was cut off), tokenized with
``tlsteer.tokenize``. The library does the work (:mod:`tlsteer.sae.corpus`: the sources, the
answer cache, the held-out split, the packing); this script picks the data and writes the folder.
The sources:

- ``caa_ab:<behaviour>``: items of the 7 CAA ``generate`` sets (question with its choices as user
  turn; the assistant answers with a letter and that choice's text, e.g. ``(A) I would accept``,
  the matching or the other answer at random);
- ``mmlu_ab``, ``truthfulqa_ab``: the CAA copies of MMLU and TruthfulQA, answered the same way;
- ``builtin_ab:<name>``: tlsteer's built-in A/B datasets;
- ``neutral``: ``tlsteer.load_neutral_text()`` as raw text (as ``kl_on_neutral`` feeds it);
- ``generated:<kind>``: the model's own sampled answers (``tlsteer.generate_tokens``) to
  ``load_open_prompts()`` (several seeds), the neutral prompts, the CAA open-ended questions and
  some A/B questions with their choices.

Generation is slow on CPU, so the answers are cached in ``<out>/generated.json`` keyed by (user turn,
seed, temperature, max new tokens): a later run reuses what is there and generates only what is
missing (``--regenerate`` starts over). The CAA files are read from ``--caa-dir``, never copied.

Held out: 5% of the conversational examples (``caa_ab:*`` and ``generated:*``), chosen by a hash of
the user turn (so every example of a question falls on the same side), are written as chat strings
to ``<out>/heldout.json`` for quality evaluation and kept out of training. The rest is shuffled
(``--seed``), concatenated and cut into rows of ``--context-size`` tokens (the last partial row is
dropped), saved as a ``datasets.Dataset`` with an ``input_ids`` column in ``<out>/dataset``
(sae-lens's ``is_dataset_tokenized=True`` format). ``<out>/manifest.json`` records the sources, example
and token counts, the settings and a hash of the rows.

    python benchmarks/sae_corpus.py --caa-dir ../shared/caa   # the full corpus (generation: ~20 min)
    python benchmarks/sae_corpus.py --caa-dir ../shared/caa --ab-limit 20 --max-generate 16 --out X  # smoke
    python benchmarks/sae_corpus.py --tiny    # seconds: the tiny model, CAA-format items from the built-ins
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import _common as common

import tlsteer
from tlsteer.data import (
    BUILTIN_DATASETS,
    CAA_BEHAVIOURS,
    builtin_dataset_path,
    load_ab_items,
    load_open_prompts,
)
from tlsteer.sae.corpus import (
    HELDOUT_SOURCES,
    AnswerRequest,
    CorpusExample,
    ab_examples,
    answered_examples,
    build_corpus,
    generate_answers,
    text_examples,
)

DEFAULT_OUT = common.BUILD / "sae_corpus"
TINY = {
    "context_size": 64,
    "ab_limit": 3,
    "samples_per_prompt": 1,
    "ab_questions": 1,
    "max_generate": 4,
    "max_new_tokens": 4,
    "batch_size": 4,
}


def fixed_examples(model, caa_dir: Path, ab_limit: int | None, seed: int) -> list[CorpusExample]:
    """Everything that needs no generation: A/B items of every source, and the neutral texts."""
    examples: list[CorpusExample] = []
    for behaviour in CAA_BEHAVIOURS:
        items = load_ab_items(caa_dir / "generate" / behaviour / "generate_dataset.json")
        examples += ab_examples(model, f"caa_ab:{behaviour}", items, limit=ab_limit, seed=seed)
    for source, rel in (
        ("mmlu_ab", "test/mmlu/mmlu.json"),
        ("truthfulqa_ab", "test/truthfulqa/truthful_qa.json"),
    ):
        examples += ab_examples(model, source, load_ab_items(caa_dir / rel), limit=ab_limit, seed=seed)
    for name in BUILTIN_DATASETS:
        items = load_ab_items(builtin_dataset_path(name))
        examples += ab_examples(model, f"builtin_ab:{name}", items, seed=seed)
    return examples + text_examples("neutral", tlsteer.load_neutral_text())


def generation_requests(
    caa_dir: Path, samples_per_prompt: int, ab_questions: int, seed: int
) -> list[AnswerRequest]:
    """The user turns to answer, each with its sampling seed, in a seeded order."""
    requests = [
        AnswerRequest("generated:open_prompts", p, s)
        for p in load_open_prompts()
        for s in range(samples_per_prompt)
    ]
    requests += [AnswerRequest("generated:neutral", p) for p in tlsteer.load_neutral_text()]
    for behaviour in CAA_BEHAVIOURS:
        path = caa_dir / "test" / behaviour / "test_dataset_open_ended.json"
        requests += [
            AnswerRequest("generated:caa_open_ended", entry["question"])
            for entry in json.loads(path.read_text())
        ]
        items = load_ab_items(caa_dir / "generate" / behaviour / "generate_dataset.json")
        rng = random.Random(f"{seed}:generate:{behaviour}")
        requests += [
            AnswerRequest("generated:caa_ab_questions", item.question)
            for item in rng.sample(items, min(ab_questions, len(items)))
        ]
    random.Random(f"{seed}:requests").shuffle(requests)
    return requests


def body(args) -> Path:
    if args.out == DEFAULT_OUT and common.model_tag(args):  # the second model's own corpus folder
        args.out = DEFAULT_OUT.with_name(f"sae_corpus{common.model_tag(args)}")
    caa_dir = common.caa_dir(args)
    start = time.perf_counter()
    model = common.load_model(args)

    examples = fixed_examples(model, caa_dir, args.ab_limit, args.seed)
    requests = generation_requests(caa_dir, args.samples_per_prompt, args.ab_questions, args.seed)
    if args.max_generate is not None:
        requests = requests[: args.max_generate]
    generated = generate_answers(
        model,
        requests,
        cache_path=args.out / "generated.json",
        temperature=args.temperature,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        regenerate=args.regenerate,
    )
    examples += answered_examples(model, generated.answers)
    corpus = build_corpus(
        model,
        examples,
        context_size=args.context_size,
        heldout_fraction=args.heldout_fraction,
        heldout_sources=HELDOUT_SOURCES,
        seed=args.seed,
    )
    answers = generated.answers
    manifest = {
        "model": model.cfg.model_name,
        "tlsteer_version": tlsteer.__version__,
        "context_size": args.context_size,
        "seed": args.seed,
        "heldout_fraction": args.heldout_fraction,
        "heldout_sources": [f"{p}*" for p in HELDOUT_SOURCES],
        "ab_limit": args.ab_limit,
        "caa_dir": str(caa_dir),
        "generation": {
            "requests": len(requests),
            "samples_per_prompt": args.samples_per_prompt,
            "ab_questions_per_behaviour": args.ab_questions,
            "max_generate": args.max_generate,
            "max_new_tokens": args.max_new_tokens,
            "temperature": args.temperature,
            "new_tokens": sum(a.n_new_tokens for a in answers),
            "stopped_at_eos": sum(a.stopped for a in answers),
            "seconds_total_in_cache": round(generated.seconds_in_cache, 1),
            "tokens_total_in_cache": generated.tokens_in_cache,
        },
        **corpus.summary(),
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    path = corpus.save(args.out, manifest)
    common.log.info("%s", json.dumps(manifest, indent=1))
    common.log.info("corpus: %d rows of %d tokens in %s", corpus.rows.shape[0], args.context_size, args.out)
    return path


def main(argv: list[str] | None = None) -> Path:
    p = common.parser(__doc__, out_help="the corpus folder (default: benchmarks/build/sae_corpus)")
    p.add_argument("--caa-dir", type=Path, default=None, help="the CAA datasets folder (read only; required)")
    p.add_argument("--context-size", type=int, default=128)
    p.add_argument("--heldout-fraction", type=float, default=0.05)
    p.add_argument("--ab-limit", type=int, default=400, help="A/B items per CAA/MMLU/TruthfulQA source")
    p.add_argument("--samples-per-prompt", type=int, default=3, help="answers per open prompt (seeds)")
    p.add_argument("--ab-questions", type=int, default=20, help="A/B questions answered per behaviour")
    p.add_argument("--max-generate", type=int, default=None, help="answer only the first N requests")
    p.add_argument("--max-new-tokens", type=int, default=80)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--regenerate", action="store_true", help="ignore the cached answers")
    return common.run(body, p, argv, TINY, default_out=DEFAULT_OUT)


if __name__ == "__main__":
    main()
