"""Build the offline SAE training corpus for the embedded model: chat conversations, tokenized and packed.

Every example is what SmolLM2-135M-Instruct sees around steering: a chat-formatted conversation
(``tlsteer.chat_prompt``: the template's system turn, a user turn, an assistant turn holding the
response, closed by ``<|im_end|>`` unless the response was cut off), tokenized with
``tlsteer.tokenize``. The sources:

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

import hashlib
import json
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import _common as common
import numpy as np

import tlsteer
from tlsteer.data import (
    BUILTIN_DATASETS,
    CAA_BEHAVIOURS,
    ABItem,
    builtin_dataset_path,
    chat_prompt,
    load_ab_items,
    load_open_prompts,
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
HELDOUT_PREFIXES = ("caa_ab:", "generated:")
"""Sources whose examples may be held out: conversational text like what steering acts on."""


@dataclass(frozen=True)
class Example:
    source: str
    key: str  # the user turn (or the raw text): decides the held-out split
    text: str


def user_key_heldout(key: str, fraction: float) -> bool:
    """Whether the examples of this user turn are held out (a stable hash, independent of order)."""
    digest = int(hashlib.sha256(key.encode()).hexdigest()[:12], 16)
    return digest / 16**12 < fraction


def conversation(model, user: str, response: str, closed: bool = True) -> str:
    """System, user and assistant turns; the assistant turn is closed with ``<|im_end|>`` if ``closed``."""
    end = f"{model.tokenizer.eos_token}\n" if closed else ""
    return chat_prompt(model, user, response) + end


def choice_text(question: str, letter: str) -> str | None:
    """The text of choice ``(letter)`` in a CAA question's ``Choices:`` block, if it can be found."""
    _, _, block = question.rpartition("Choices:")
    match = re.search(rf"^\s*\({re.escape(letter)}\)\s*(.+)$", block, flags=re.MULTILINE)
    return match.group(1).strip() if match else None


def ab_answer(item: ABItem, matching: bool) -> str:
    """``"(A) <choice text>"`` for the chosen answer, or just ``"(A)"`` when the text is unknown."""
    answer = item.matching if matching else item.not_matching
    full = item.extra.get("correct_full_text" if matching else "incorrect_full_text")
    text = full if isinstance(full, str) else choice_text(item.question, answer.strip("() "))
    return f"{answer} {text}" if text else answer


def ab_examples(model, source: str, items: list[ABItem], limit: int | None, seed: int) -> list[Example]:
    rng = random.Random(f"{seed}:{source}")
    if limit is not None and len(items) > limit:
        items = rng.sample(items, limit)
    return [
        Example(
            source, item.question, conversation(model, item.question, ab_answer(item, rng.random() < 0.5))
        )
        for item in items
    ]


def fixed_examples(model, caa_dir: Path, ab_limit: int | None, seed: int) -> list[Example]:
    """Everything that needs no generation: A/B items of every source, and the neutral texts."""
    examples: list[Example] = []
    for behaviour in CAA_BEHAVIOURS:
        items = load_ab_items(caa_dir / "generate" / behaviour / "generate_dataset.json")
        examples += ab_examples(model, f"caa_ab:{behaviour}", items, ab_limit, seed)
    for source, rel in (
        ("mmlu_ab", "test/mmlu/mmlu.json"),
        ("truthfulqa_ab", "test/truthfulqa/truthful_qa.json"),
    ):
        examples += ab_examples(model, source, load_ab_items(caa_dir / rel), ab_limit, seed)
    for name in BUILTIN_DATASETS:
        examples += ab_examples(
            model, f"builtin_ab:{name}", load_ab_items(builtin_dataset_path(name)), None, seed
        )
    examples += [Example("neutral", text, text) for text in tlsteer.load_neutral_text()]
    return examples


def generation_requests(caa_dir: Path, samples_per_prompt: int, ab_questions: int, seed: int) -> list[dict]:
    """The user turns to answer, each with its sampling seed, in a seeded order."""
    requests = [
        {"source": "generated:open_prompts", "user": p, "seed": s}
        for p in load_open_prompts()
        for s in range(samples_per_prompt)
    ]
    requests += [{"source": "generated:neutral", "user": p, "seed": 0} for p in tlsteer.load_neutral_text()]
    for behaviour in CAA_BEHAVIOURS:
        path = caa_dir / "test" / behaviour / "test_dataset_open_ended.json"
        requests += [
            {"source": "generated:caa_open_ended", "user": entry["question"], "seed": 0}
            for entry in json.loads(path.read_text())
        ]
        items = load_ab_items(caa_dir / "generate" / behaviour / "generate_dataset.json")
        rng = random.Random(f"{seed}:generate:{behaviour}")
        requests += [
            {"source": "generated:caa_ab_questions", "user": item.question, "seed": 0}
            for item in rng.sample(items, min(ab_questions, len(items)))
        ]
    random.Random(f"{seed}:requests").shuffle(requests)
    return requests


def request_key(req: dict, temperature: float, max_new_tokens: int) -> str:
    return json.dumps([req["user"], req["seed"], temperature, max_new_tokens])


def write_json(path: Path, data) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False))
    tmp.replace(path)


def generate_answers(model, requests: list[dict], args) -> tuple[list[dict], dict]:
    """The model's sampled answer to every request, from the cache where possible."""
    cache_path = args.out / "generated.json"
    cache = {"model": model.cfg.model_name, "entries": []}
    if cache_path.exists() and not args.regenerate:
        cache = json.loads(cache_path.read_text())
        if cache.get("model") != model.cfg.model_name:
            raise ValueError(
                f"{cache_path} holds answers of {cache.get('model')!r}, not {model.cfg.model_name!r}; "
                "pass --regenerate"
            )
    known = {request_key(e, e["temperature"], e["max_new_tokens"]): e for e in cache["entries"]}
    todo = [r for r in requests if request_key(r, args.temperature, args.max_new_tokens) not in known]
    common.log.info(
        "generation: %d of %d answers cached, %d to generate",
        len(requests) - len(todo),
        len(requests),
        len(todo),
    )
    chunk = args.batch_size * 4
    for start in range(0, len(todo), chunk):
        part = todo[start : start + chunk]
        t0 = time.perf_counter()
        out = tlsteer.generate_tokens(
            model,
            [r["user"] for r in part],
            max_new_tokens=args.max_new_tokens,
            do_sample=True,
            temperature=args.temperature,
            seed=[r["seed"] for r in part],
            chat=True,
            batch_size=args.batch_size,
        )
        seconds = time.perf_counter() - t0
        eos = model.tokenizer.eos_token_id
        for req, text, new in zip(part, out.texts, out.new_tokens, strict=True):
            entry = {
                **req,
                "response": text,
                "n_new_tokens": len(new),
                "stopped": bool(new) and new[-1] == eos,
                "temperature": args.temperature,
                "max_new_tokens": args.max_new_tokens,
            }
            known[request_key(entry, args.temperature, args.max_new_tokens)] = entry
        n_new = sum(len(t) for t in out.new_tokens)
        cache["entries"] = list(known.values())
        cache["generation_seconds"] = cache.get("generation_seconds", 0.0) + seconds
        cache["generated_tokens"] = cache.get("generated_tokens", 0) + n_new
        write_json(cache_path, cache)
        done = min(start + chunk, len(todo))
        common.log.info(
            "  %d/%d answers, %d tokens in %.0fs (%.1f tokens/s)",
            done,
            len(todo),
            n_new,
            seconds,
            n_new / seconds,
        )
    answers = [known[request_key(r, args.temperature, args.max_new_tokens)] for r in requests]
    stats = {
        "seconds_total_in_cache": round(cache.get("generation_seconds", 0.0), 1),
        "tokens_total_in_cache": cache.get("generated_tokens", 0),
    }
    return answers, stats


def pack(token_lists: list[list[int]], context_size: int) -> np.ndarray:
    """Concatenate and cut into full rows ``[n_rows, context_size]`` (the last partial row is dropped)."""
    flat = np.fromiter((t for ids in token_lists for t in ids), dtype=np.int32)
    n_rows = len(flat) // context_size
    return flat[: n_rows * context_size].reshape(n_rows, context_size)


def body(args) -> Path:
    caa_dir = common.caa_dir(args)
    start = time.perf_counter()
    model = common.load_model(args)

    examples = fixed_examples(model, caa_dir, args.ab_limit, args.seed)
    requests = generation_requests(caa_dir, args.samples_per_prompt, args.ab_questions, args.seed)
    if args.max_generate is not None:
        requests = requests[: args.max_generate]
    answers, gen_stats = generate_answers(model, requests, args)
    examples += [
        Example(a["source"], a["user"], conversation(model, a["user"], a["response"], closed=a["stopped"]))
        for a in answers
    ]

    sources: dict[str, dict[str, int]] = {}
    train_ids: list[list[int]] = []
    heldout: list[str] = []
    for ex in examples:
        ids = tlsteer.tokenize(model, ex.text)
        held = ex.source.startswith(HELDOUT_PREFIXES) and user_key_heldout(ex.key, args.heldout_fraction)
        row = sources.setdefault(
            ex.source, {"examples": 0, "tokens": 0, "heldout_examples": 0, "heldout_tokens": 0}
        )
        row["heldout_examples" if held else "examples"] += 1
        row["heldout_tokens" if held else "tokens"] += len(ids)
        if held:
            heldout.append(ex.text)
        else:
            train_ids.append(ids)
    random.Random(f"{args.seed}:pack").shuffle(train_ids)
    rows = pack(train_ids, args.context_size)

    from datasets import Dataset, Features, Sequence, Value

    features = Features({"input_ids": Sequence(Value("int32"), length=args.context_size)})
    dataset = Dataset.from_dict({"input_ids": rows.tolist()}, features=features)
    dataset.save_to_disk(str(args.out / "dataset"))
    write_json(args.out / "heldout.json", heldout)
    train_tokens = sum(len(ids) for ids in train_ids)
    manifest = {
        "model": model.cfg.model_name,
        "tlsteer_version": tlsteer.__version__,
        "context_size": args.context_size,
        "seed": args.seed,
        "heldout_fraction": args.heldout_fraction,
        "heldout_sources": [f"{p}*" for p in HELDOUT_PREFIXES],
        "ab_limit": args.ab_limit,
        "caa_dir": str(caa_dir),
        "generation": {
            "requests": len(requests),
            "samples_per_prompt": args.samples_per_prompt,
            "ab_questions_per_behaviour": args.ab_questions,
            "max_generate": args.max_generate,
            "max_new_tokens": args.max_new_tokens,
            "temperature": args.temperature,
            "new_tokens": sum(a["n_new_tokens"] for a in answers),
            "stopped_at_eos": sum(a["stopped"] for a in answers),
            **gen_stats,
        },
        "sources": dict(sorted(sources.items())),
        "train_examples": len(train_ids),
        "train_tokens": train_tokens,
        "rows": int(rows.shape[0]),
        "row_tokens": int(rows.size),
        "dropped_tokens": train_tokens - int(rows.size),
        "heldout_examples": len(heldout),
        "heldout_tokens": sum(s["heldout_tokens"] for s in sources.values()),
        "rows_sha256": hashlib.sha256(rows.tobytes()).hexdigest(),
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    path = args.out / "manifest.json"
    write_json(path, manifest)
    common.log.info("%s", json.dumps(manifest, indent=1))
    common.log.info("corpus: %d rows of %d tokens in %s", rows.shape[0], args.context_size, args.out)
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
