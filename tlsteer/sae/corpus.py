"""A corpus to train an SAE on: chat conversations from several sources, held out by hash, packed.

An SAE for steering should see what the model sees around steering: chat-formatted conversations
(the template's system turn, a user turn, an assistant turn). This module builds such a corpus in
four steps, each a function a notebook can call on its own:

1. Sources, each a list of :class:`CorpusExample` (a source name, the key that decides the
   held-out split, the text): :func:`ab_examples` (A/B items answered with a letter and that
   choice's text), :func:`text_examples` (raw texts as they are), and the model's own answers:
   :func:`generate_answers` samples them with :func:`tlsteer.generate_tokens` (cached in a JSON
   file, so a later call generates only what is missing) and :func:`answered_examples` turns them
   into conversations.
2. The held-out split (:func:`is_heldout`): a stable hash of an example's key, so every example
   of a user turn falls on the same side, whatever the order or the other examples.
3. Packing (:func:`pack_rows`): the training examples concatenated and cut into rows of
   ``context_size`` tokens; the last partial row is dropped.
4. :func:`build_corpus` does 2 and 3 on a list of examples and returns a :class:`Corpus`, whose
   :meth:`Corpus.save` writes the folder that :func:`load_corpus` reads and that sae-lens trains
   from (``dataset/``: a ``datasets.Dataset`` with an ``input_ids`` column, sae-lens's
   ``is_dataset_tokenized=True`` format; ``heldout.json``; ``manifest.json``).

Example:
    >>> examples = ab_examples(model, "builtin_ab:x", items, seed=0)  # doctest: +SKIP
    >>> examples += text_examples("neutral", tlsteer.load_neutral_text())  # doctest: +SKIP
    >>> corpus = build_corpus(model, examples, context_size=128)  # doctest: +SKIP
    >>> corpus.save("build/corpus")  # doctest: +SKIP

``benchmarks/sae_corpus.py`` builds the corpus of the shipped SAEs with these functions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from transformer_lens import HookedTransformer

from tlsteer._types import check_batch_size, is_int
from tlsteer.data import ABItem, chat_prompt, load_neutral_text, load_open_prompts
from tlsteer.decode import generate_tokens
from tlsteer.tokens import tokenize

__all__ = [
    "HELDOUT_SOURCES",
    "Answer",
    "AnswerRequest",
    "Corpus",
    "CorpusExample",
    "GeneratedAnswers",
    "LoadedCorpus",
    "ab_examples",
    "answered_examples",
    "build_corpus",
    "conversation",
    "generate_answers",
    "is_heldout",
    "load_corpus",
    "own_prompt_conversations",
    "pack_rows",
    "spread",
    "text_examples",
]

LOG = logging.getLogger(__name__)

HELDOUT_SOURCES = ("caa_ab:", "generated:")
"""Source prefixes whose examples may be held out: conversational text like what steering acts on."""


@dataclass(frozen=True)
class CorpusExample:
    """One example of the corpus.

    Attributes:
        source: Where it comes from, e.g. ``"caa_ab:refusal"`` or ``"generated:open_prompts"``.
        key: What decides the held-out split: the user turn (or the raw text), so every example
            of one question falls on the same side.
        text: The text as the model reads it (a chat conversation, or raw text).
    """

    source: str
    key: str
    text: str


def conversation(model: HookedTransformer, user: str, response: str, *, closed: bool = True) -> str:
    """System, user and assistant turns; the assistant turn is closed by the end-of-sequence token
    (``<|im_end|>`` and a newline) if ``closed``."""
    end = f"{model.tokenizer.eos_token}\n" if closed and model.tokenizer is not None else ""
    return chat_prompt(model, user, response) + end


def _choice_text(question: str, letter: str) -> str | None:
    """The text of choice ``(letter)`` in a CAA question's ``Choices:`` block, if it can be found."""
    _, _, block = question.rpartition("Choices:")
    match = re.search(rf"^\s*\({re.escape(letter)}\)\s*(.+)$", block, flags=re.MULTILINE)
    return match.group(1).strip() if match else None


def _ab_answer(item: ABItem, matching: bool) -> str:
    """``"(A) <choice text>"`` for the chosen answer, or just ``"(A)"`` when the text is unknown."""
    answer = item.matching if matching else item.not_matching
    full = item.extra.get("correct_full_text" if matching else "incorrect_full_text")
    text = full if isinstance(full, str) else _choice_text(item.question, answer.strip("() "))
    return f"{answer} {text}" if text else answer


def ab_examples(
    model: HookedTransformer,
    source: str,
    items: Sequence[ABItem],
    *,
    limit: int | None = None,
    seed: int = 0,
) -> list[CorpusExample]:
    """A/B items as conversations: the question (with its choices) as the user turn, answered.

    The assistant answers with a letter and that choice's text (``"(A) I would accept"``; the
    letter alone when the text cannot be found), the matching or the other answer at random.

    Args:
        model: Its chat template formats the conversations.
        source: The source name of every example (and part of the seed).
        items: The A/B items (:func:`tlsteer.data.load_ab_items`).
        limit: At most this many items, sampled (``None``: all).
        seed: Seeds the sample and the answers (with ``source``: each source draws its own).
    """
    if limit is not None and (not is_int(limit) or limit < 0):
        raise ValueError(f"limit must be an int >= 0 or None, got {limit!r}")
    rng = random.Random(f"{seed}:{source}")
    chosen = list(items)
    if limit is not None and len(chosen) > limit:
        chosen = rng.sample(chosen, limit)
    return [
        CorpusExample(
            source,
            item.question,
            conversation(model, item.question, _ab_answer(item, rng.random() < 0.5)),
        )
        for item in chosen
    ]


def text_examples(source: str, texts: Sequence[str]) -> list[CorpusExample]:
    """Raw texts as they are (no chat template), each its own held-out key."""
    return [CorpusExample(source, text, text) for text in texts]


@dataclass(frozen=True)
class AnswerRequest:
    """A user turn for the model to answer (:func:`generate_answers`), with its sampling seed."""

    source: str
    user: str
    seed: int = 0


@dataclass(frozen=True)
class Answer:
    """The model's sampled answer to an :class:`AnswerRequest`, as stored in the answer cache.

    Attributes:
        response: The decoded new tokens (special tokens skipped).
        n_new_tokens: How many tokens were generated.
        stopped: Whether generation stopped at the end-of-sequence token (the answer is complete).
        temperature, max_new_tokens: The sampling settings (with ``user`` and ``seed``: the key).
    """

    source: str
    user: str
    seed: int
    response: str
    n_new_tokens: int
    stopped: bool
    temperature: float
    max_new_tokens: int


@dataclass(frozen=True)
class GeneratedAnswers:
    """What :func:`generate_answers` returns: one answer per request, in the order given.

    ``seconds_in_cache`` and ``tokens_in_cache`` add up every generation the cache file has seen
    (the cost of all its answers, not only of this call's).
    """

    answers: tuple[Answer, ...]
    generated: int
    seconds_in_cache: float
    tokens_in_cache: int


def _answer_key(user: str, seed: int, temperature: float, max_new_tokens: int) -> str:
    return json.dumps([user, seed, temperature, max_new_tokens])


def _write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON through a temporary file, so an interrupted write leaves the old file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False))
    tmp.replace(path)


def generate_answers(
    model: HookedTransformer,
    requests: Sequence[AnswerRequest],
    *,
    cache_path: str | Path,
    temperature: float = 0.8,
    max_new_tokens: int = 80,
    batch_size: int = 16,
    regenerate: bool = False,
) -> GeneratedAnswers:
    """The model's sampled answer to every request (a chat user turn), from the cache where possible.

    Answers are cached in the JSON file ``cache_path`` (``{"model", "entries", "generation_seconds",
    "generated_tokens"}``; an entry is an :class:`Answer` as a dict), keyed by (user turn, seed,
    temperature, max new tokens): a later call reuses what is there and generates only what is
    missing. The file is rewritten after every ``4 * batch_size`` answers, so an interrupted run
    keeps what it generated. Sampling is seeded per request (:func:`tlsteer.generate_tokens`), so
    an answer does not depend on which others are generated with it.

    Args:
        model: The model that answers (the cache file must be this model's).
        requests: The user turns and seeds.
        cache_path: The cache file (created if missing).
        temperature, max_new_tokens, batch_size: Sampling settings.
        regenerate: Ignore the cached answers and start the file over.

    Raises:
        ValueError: The cache file holds another model's answers.
    """
    batch_size = check_batch_size(batch_size)
    path = Path(cache_path)
    name = model.cfg.model_name
    cache: dict[str, Any] = {"model": name, "entries": []}
    if path.exists() and not regenerate:
        cache = json.loads(path.read_text())
        if cache.get("model") != name:
            raise ValueError(
                f"{str(path)!r} holds answers of {cache.get('model')!r}, not {name!r}; "
                "regenerate them (regenerate=True) or use another cache file"
            )
    known = {
        _answer_key(e["user"], e["seed"], e["temperature"], e["max_new_tokens"]): Answer(**e)
        for e in cache["entries"]
    }

    def key(r: AnswerRequest) -> str:
        return _answer_key(r.user, r.seed, temperature, max_new_tokens)

    todo = [r for r in requests if key(r) not in known]
    LOG.info(
        "generation: %d of %d answers cached, %d to generate",
        len(requests) - len(todo),
        len(requests),
        len(todo),
    )
    chunk = batch_size * 4
    eos = model.tokenizer.eos_token_id if model.tokenizer is not None else None
    for start in range(0, len(todo), chunk):
        part = todo[start : start + chunk]
        t0 = time.perf_counter()
        out = generate_tokens(
            model,
            [r.user for r in part],
            max_new_tokens=max_new_tokens,
            do_sample=True,
            temperature=temperature,
            seed=[r.seed for r in part],
            chat=True,
            batch_size=batch_size,
        )
        seconds = time.perf_counter() - t0
        for req, text, new in zip(part, out.texts, out.new_tokens, strict=True):
            known[key(req)] = Answer(
                source=req.source,
                user=req.user,
                seed=req.seed,
                response=text,
                n_new_tokens=len(new),
                stopped=bool(new) and new[-1] == eos,
                temperature=temperature,
                max_new_tokens=max_new_tokens,
            )
        n_new = sum(len(t) for t in out.new_tokens)
        cache["entries"] = [dataclasses.asdict(a) for a in known.values()]
        cache["generation_seconds"] = cache.get("generation_seconds", 0.0) + seconds
        cache["generated_tokens"] = cache.get("generated_tokens", 0) + n_new
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_json(path, cache)
        LOG.info(
            "  %d/%d answers, %d tokens in %.0fs (%.1f tokens/s)",
            min(start + chunk, len(todo)),
            len(todo),
            n_new,
            seconds,
            n_new / seconds,
        )
    return GeneratedAnswers(
        answers=tuple(known[key(r)] for r in requests),
        generated=len(todo),
        seconds_in_cache=float(cache.get("generation_seconds", 0.0)),
        tokens_in_cache=int(cache.get("generated_tokens", 0)),
    )


def answered_examples(model: HookedTransformer, answers: Sequence[Answer]) -> list[CorpusExample]:
    """The answers as conversations (the assistant turn left open where the answer was cut off)."""
    return [
        CorpusExample(a.source, a.user, conversation(model, a.user, a.response, closed=a.stopped))
        for a in answers
    ]


def is_heldout(key: str, fraction: float) -> bool:
    """Whether the examples with this key are held out: a stable hash, independent of order.

    The first 12 hex digits of the key's SHA-256, as a number in ``[0, 1)``, below ``fraction``.
    """
    digest = int(hashlib.sha256(key.encode()).hexdigest()[:12], 16)
    return digest / 16**12 < fraction


def pack_rows(token_lists: Sequence[Sequence[int]], context_size: int) -> np.ndarray:
    """Concatenate and cut into full rows ``[n_rows, context_size]`` (int32; the last partial row
    is dropped)."""
    if not is_int(context_size) or context_size < 1:
        raise ValueError(f"context_size must be an int >= 1, got {context_size!r}")
    flat = np.fromiter((t for ids in token_lists for t in ids), dtype=np.int32)
    n_rows = len(flat) // context_size
    return flat[: n_rows * context_size].reshape(n_rows, context_size)


@dataclass(frozen=True, eq=False)
class Corpus:
    """Packed training rows and the held-out conversations (:func:`build_corpus`).

    Attributes:
        rows: ``[n_rows, context_size]`` int32 token ids.
        heldout: The held-out examples' texts, in the order of the examples.
        sources: Per source: ``examples``, ``tokens``, ``heldout_examples``, ``heldout_tokens``.
        train_examples, train_tokens: The examples and tokens packed (before the last partial row
            is dropped).
    """

    rows: np.ndarray
    heldout: tuple[str, ...]
    sources: Mapping[str, Mapping[str, int]]
    train_examples: int
    train_tokens: int
    context_size: int
    seed: int
    heldout_fraction: float
    heldout_sources: tuple[str, ...]

    @property
    def rows_sha256(self) -> str:
        """SHA-256 of the rows' bytes: identifies the corpus (the activation cache is keyed by it)."""
        return hashlib.sha256(self.rows.tobytes()).hexdigest()

    def summary(self) -> dict[str, Any]:
        """Counts and the rows' hash, as ``manifest.json`` records them."""
        return {
            "sources": dict(sorted((k, dict(v)) for k, v in self.sources.items())),
            "train_examples": self.train_examples,
            "train_tokens": self.train_tokens,
            "rows": int(self.rows.shape[0]),
            "row_tokens": int(self.rows.size),
            "dropped_tokens": self.train_tokens - int(self.rows.size),
            "heldout_examples": len(self.heldout),
            "heldout_tokens": sum(s["heldout_tokens"] for s in self.sources.values()),
            "rows_sha256": self.rows_sha256,
        }

    def manifest(self) -> dict[str, Any]:
        """The settings and :meth:`summary` (callers add their own fields: model, sources read, ...)."""
        return {
            "context_size": self.context_size,
            "seed": self.seed,
            "heldout_fraction": self.heldout_fraction,
            "heldout_sources": [f"{p}*" for p in self.heldout_sources],
            **self.summary(),
        }

    def save(self, folder: str | Path, manifest: Mapping[str, Any] | None = None) -> Path:
        """Write ``dataset/``, ``heldout.json`` and ``manifest.json`` (default :meth:`manifest`)
        into ``folder``; returns the manifest's path."""
        from datasets import Dataset, Features, Sequence, Value

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        features = Features({"input_ids": Sequence(Value("int32"), length=self.context_size)})
        dataset = Dataset.from_dict({"input_ids": self.rows.tolist()}, features=features)
        dataset.save_to_disk(str(folder / "dataset"))
        _write_json(folder / "heldout.json", list(self.heldout))
        path = folder / "manifest.json"
        _write_json(path, dict(self.manifest() if manifest is None else manifest))
        return path


def build_corpus(
    model: HookedTransformer,
    examples: Sequence[CorpusExample],
    *,
    context_size: int = 128,
    heldout_fraction: float = 0.05,
    heldout_sources: Sequence[str] = HELDOUT_SOURCES,
    seed: int = 0,
) -> Corpus:
    """Tokenize, hold out, shuffle and pack ``examples``.

    An example is held out when its source starts with one of ``heldout_sources`` and
    :func:`is_heldout` says so for its key. The others are tokenized
    (:func:`tlsteer.tokenize`), shuffled (seeded by ``seed``), concatenated and cut into rows of
    ``context_size`` tokens (:func:`pack_rows`). Rows begin mid-text, so position 0 of a row (an
    attention sink) and sometimes position 1 carry huge norms: train with them left out
    (:mod:`tlsteer.sae.training`).
    """
    if not 0.0 <= heldout_fraction <= 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1], got {heldout_fraction!r}")
    prefixes = tuple(heldout_sources)
    sources: dict[str, dict[str, int]] = {}
    train_ids: list[list[int]] = []
    heldout: list[str] = []
    for ex in examples:
        ids = tokenize(model, ex.text)
        held = ex.source.startswith(prefixes) and is_heldout(ex.key, heldout_fraction)
        row = sources.setdefault(
            ex.source, {"examples": 0, "tokens": 0, "heldout_examples": 0, "heldout_tokens": 0}
        )
        row["heldout_examples" if held else "examples"] += 1
        row["heldout_tokens" if held else "tokens"] += len(ids)
        if held:
            heldout.append(ex.text)
        else:
            train_ids.append(ids)
    random.Random(f"{seed}:pack").shuffle(train_ids)
    return Corpus(
        rows=pack_rows(train_ids, context_size),
        heldout=tuple(heldout),
        sources=sources,
        train_examples=len(train_ids),
        train_tokens=sum(len(ids) for ids in train_ids),
        context_size=int(context_size),
        seed=seed,
        heldout_fraction=heldout_fraction,
        heldout_sources=prefixes,
    )


@dataclass(frozen=True, eq=False)
class LoadedCorpus:
    """A corpus folder read back (:func:`load_corpus`).

    Attributes:
        folder: The folder.
        manifest: ``manifest.json``.
        dataset: ``dataset/`` as a ``datasets.Dataset`` (an ``input_ids`` column of token rows).
        heldout: ``heldout.json``: the held-out conversations.
    """

    folder: Path
    manifest: Mapping[str, Any]
    dataset: Any
    heldout: tuple[str, ...]

    @property
    def rows_sha256(self) -> str:
        return str(self.manifest["rows_sha256"])

    @property
    def context_size(self) -> int:
        return int(self.manifest["context_size"])

    @property
    def manifest_sha256(self) -> str:
        """SHA-256 of the ``manifest.json`` file's bytes."""
        return hashlib.sha256((self.folder / "manifest.json").read_bytes()).hexdigest()


def load_corpus(folder: str | Path) -> LoadedCorpus:
    """Read a folder written by :meth:`Corpus.save`.

    Raises:
        FileNotFoundError: ``folder`` has no ``manifest.json``.
    """
    from datasets import load_from_disk

    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(
            f"no corpus in {str(folder)!r}: expected manifest.json, dataset/ and heldout.json "
            "(what build_corpus(...).save(folder) writes)"
        )
    heldout_path = folder / "heldout.json"
    heldout = json.loads(heldout_path.read_text()) if heldout_path.is_file() else []
    return LoadedCorpus(
        folder=folder,
        manifest=json.loads(manifest_path.read_text()),
        dataset=load_from_disk(str(folder / "dataset")),
        heldout=tuple(heldout),
    )


def own_prompt_conversations(model: HookedTransformer, texts: Sequence[str]) -> list[str]:
    """The conversations whose user turn is one of tlsteer's own prompts (open prompts, neutral text).

    Only these may ship with an SAE: the others quote datasets (CAA) that tlsteer reads but never
    copies.
    """
    heads = [chat_prompt(model, p) for p in load_open_prompts() + load_neutral_text()]
    return [t for t in texts if any(t.startswith(h) for h in heads)]


def spread(items: Sequence[Any], n: int) -> list[Any]:
    """``n`` items spread evenly over ``items`` (every ``len // n``-th; all of them if fewer)."""
    if not is_int(n) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    return list(items[:: max(1, len(items) // n)][:n])
