"""Contrast data: pairs of prompts, CAA A/B files, chat formatting and the built-in datasets.

A :class:`ContrastPair` holds a positive and a negative prompt (plain strings, already formatted)
and optionally the token index to read them at. :class:`ContrastSet` holds unpaired lists of
positive and negative prompts of any lengths. :func:`load_caa_dataset` reads the CAA A/B JSON
format and formats each item with the model's chat template, the answer letter opening the
assistant turn, and the read position on that letter. :func:`read_text` reads a data file as
UTF-8 (a byte-order mark allowed) or a named encoding, naming the offset of a byte it cannot decode.
"""

from __future__ import annotations

import codecs
import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from transformer_lens import HookedTransformer

from tlsteer.tokens import tokenize

__all__ = [
    "BUILTIN_DATASETS",
    "CAA_BEHAVIOURS",
    "ABItem",
    "ContrastPair",
    "ContrastSet",
    "answer_letter",
    "as_contrast_data",
    "builtin_dataset_path",
    "PLAIN_MARK",
    "QUESTION_ANSWER",
    "PlainFormat",
    "chat_prompt",
    "is_plain_format",
    "use_plain_format",
    "data_hash",
    "load_ab_items",
    "load_builtin_dataset",
    "load_caa_dataset",
    "load_neutral_text",
    "load_builtin_replies",
    "load_open_prompts",
    "load_heldout_prompts",
    "HELDOUT_PARTS",
    "read_text",
    "reply_span",
    "reply_start",
]

BUILTIN_DATASETS: tuple[str, ...] = ("sentiment", "formality")
"""Behaviours shipped with tlsteer, in the CAA A/B format (80 pairs each, A/B balanced)."""

CAA_BEHAVIOURS: tuple[str, ...] = (
    "coordinate-other-ais",
    "corrigible-neutral-HHH",
    "hallucination",
    "myopic-reward",
    "refusal",
    "survival-instinct",
    "sycophancy",
)
"""The CAA paper's 7 behaviours: folder names under its ``generate/`` and ``test/`` directories."""

HELDOUT_PARTS: tuple[str, ...] = ("calibration", "test")
"""The parts of the held-out prompts (see :func:`load_heldout_prompts`)."""


@dataclass(frozen=True)
class ContrastPair:
    """A positive and a negative prompt; ``read_index`` overrides the extraction's read position.

    Example:
        >>> ContrastPair("I love it", "I hate it", read_index=-1)
        ContrastPair(positive='I love it', negative='I hate it', read_index=-1)
    """

    positive: str
    negative: str
    read_index: int | None = None

    def __post_init__(self) -> None:
        for name in ("positive", "negative"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"ContrastPair.{name} must be a non-empty string, got {value!r}")
        if self.read_index is not None and (
            isinstance(self.read_index, bool) or not isinstance(self.read_index, int)
        ):
            raise TypeError(f"ContrastPair.read_index must be an int or None, got {self.read_index!r}")


@dataclass(frozen=True)
class ContrastSet:
    """Unpaired positive and negative prompts (their counts may differ)."""

    positive: tuple[str, ...]
    negative: tuple[str, ...]
    read_index: int | None = None

    def __init__(
        self, positive: Iterable[str], negative: Iterable[str], read_index: int | None = None
    ) -> None:
        object.__setattr__(self, "positive", tuple(positive))
        object.__setattr__(self, "negative", tuple(negative))
        object.__setattr__(self, "read_index", read_index)
        for name in ("positive", "negative"):
            prompts = getattr(self, name)
            if not prompts:
                raise ValueError(f"ContrastSet.{name} is empty; give at least one prompt")
            for i, prompt in enumerate(prompts):
                if not isinstance(prompt, str) or not prompt:
                    raise ValueError(f"ContrastSet.{name}[{i}] must be a non-empty string, got {prompt!r}")


ContrastData = Sequence[ContrastPair | tuple[str, str]] | ContrastSet


def as_contrast_data(data: Any) -> list[ContrastPair] | ContrastSet:
    """Normalise pairs, ``(pos, neg)`` tuples or a :class:`ContrastSet`; reject anything else."""
    if isinstance(data, ContrastSet):
        return data
    if isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise TypeError(
            f"contrast data must be a list of ContrastPair or (positive, negative) tuples, or a "
            f"ContrastSet; got {type(data).__name__}"
        )
    pairs: list[ContrastPair] = []
    for i, item in enumerate(data):
        if isinstance(item, ContrastPair):
            pairs.append(item)
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            pairs.append(ContrastPair(item[0], item[1]))
        else:
            raise TypeError(
                f"contrast data item {i} is {item!r}; expected a ContrastPair or a (positive, negative) tuple"
            )
    if not pairs:
        raise ValueError("contrast data is empty; give at least one pair")
    return pairs


def data_hash(data: list[ContrastPair] | ContrastSet) -> str:
    """A short sha256 of the prompts, stored in a vector's metadata.

    The first 16 hex digits of the sha256 of, for each pair in order, the UTF-8 positive prompt,
    a ``0x00`` byte, the UTF-8 negative prompt and a ``0x01`` byte. A :class:`ContrastSet` hashes
    as the pairs ``("+", p)`` for each positive prompt, then ``("-", n)`` for each negative one.
    Read indices are not part of the hash.
    """
    digest = hashlib.sha256()
    if isinstance(data, ContrastSet):
        items: Iterable[tuple[str, str]] = [("+", p) for p in data.positive] + [
            ("-", n) for n in data.negative
        ]
    else:
        items = [(p.positive, p.negative) for p in data]
    for a, b in items:
        digest.update(a.encode())
        digest.update(b"\x00")
        digest.update(b.encode())
        digest.update(b"\x01")
    return digest.hexdigest()[:16]


PLAIN_MARK = "{#- tlsteer plain format -#}"
"""Opens the chat template that :func:`use_plain_format` sets (a Jinja comment: it renders nothing)."""


@dataclass(frozen=True)
class PlainFormat:
    """A plain-text format for the turns of a model without a chat template (a base model).

    A user turn renders as ``question + text + answer``; an assistant turn as ``" " + text``
    (the answer label ends the user turn, so a generated reply starts with its own space token);
    turns after the first are separated by ``separator``. The default,
    :data:`QUESTION_ANSWER`, renders ``"Question: Why is the sky blue?\\nAnswer:"``.
    """

    question: str = "Question: "
    answer: str = "\nAnswer:"
    separator: str = "\n\n"

    def __post_init__(self) -> None:
        for name in ("question", "answer", "separator"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(f"PlainFormat.{name} must be a string, got {value!r}")
            if "{" in value or "}" in value:
                raise ValueError(f"PlainFormat.{name} may not contain braces (Jinja syntax), got {value!r}")
        if not self.answer.strip():
            raise ValueError(
                f"PlainFormat.answer must hold a visible label such as '\\nAnswer:', got {self.answer!r}"
            )

    def template(self) -> str:
        """The format as a Jinja chat template (what :func:`use_plain_format` sets)."""
        q, a, sep = (json.dumps(x) for x in (self.question, self.answer, self.separator))
        return (
            PLAIN_MARK + "{% for m in messages %}{% if not loop.first and m['role'] != 'assistant' %}"
            "{{ " + sep + " }}{% endif %}{% if m['role'] == 'user' %}{{ " + q + " }}{{ m['content'] }}"
            "{{ " + a + " }}{% elif m['role'] == 'assistant' %} {{ m['content'] }}{% else %}"
            "{{ m['content'] }}{% endif %}{% endfor %}"
        )


QUESTION_ANSWER = PlainFormat()
"""``"Question: {user}\\nAnswer: {reply}"``: the plain format a base model is most often asked in."""


def use_plain_format(model: HookedTransformer, plain: PlainFormat = QUESTION_ANSWER) -> None:
    """Let a model without a chat template (a base model) be used where tlsteer formats chat turns.

    tlsteer never applies a chat format a model was not given: :func:`chat_prompt` (and so
    ``chat=True`` generation, A/B evaluation, class datasets' conversations, the SAE corpus)
    refuses a tokenizer without a chat template. This sets ``plain`` as the tokenizer's chat
    template, so every one of them renders turns in that format. A model that has a chat
    template of its own is refused (replace it yourself if you mean to).

    Example:
        >>> model = tlsteer.load_model("gemma-3-270m")  # doctest: +SKIP
        >>> tlsteer.use_plain_format(model)  # doctest: +SKIP
        >>> tlsteer.chat_prompt(model, "Why is the sky blue?", "Because")  # doctest: +SKIP
        'Question: Why is the sky blue?\\nAnswer: Because'
    """
    if not isinstance(plain, PlainFormat):
        raise TypeError(f"plain must be a tlsteer.PlainFormat, got {type(plain).__name__}")
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise ValueError("the model has no tokenizer; attach one before choosing its plain format")
    current = getattr(tokenizer, "chat_template", None)
    if current and not str(current).startswith(PLAIN_MARK):
        raise ValueError(
            f"{model.cfg.model_name!r} has a chat template of its own; use_plain_format is for models "
            "without one (set tokenizer.chat_template yourself to replace it)"
        )
    tokenizer.chat_template = plain.template()


def is_plain_format(model: HookedTransformer) -> bool:
    """Whether ``model``'s chat template is a :class:`PlainFormat` that :func:`use_plain_format` set."""
    template = getattr(model.tokenizer, "chat_template", None)
    return bool(template) and str(template).startswith(PLAIN_MARK)


def chat_prompt(model: HookedTransformer, user: str, assistant_prefix: str = "") -> str:
    """``user`` formatted as one user turn with the model's chat template, then the assistant turn.

    A model without a chat template (a base model such as gemma-3-270m) is refused with an error
    that says how to choose a plain format (:func:`use_plain_format`); with one chosen, a
    non-empty ``assistant_prefix`` follows the answer label after a space.
    """
    tokenizer = model.tokenizer
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"{model.cfg.model_name!r} has no chat template (a base model?), and tlsteer applies no "
            "other model's: call tlsteer.use_plain_format(model) to format turns as 'Question: "
            "...\\nAnswer: ...' (or pass a tlsteer.PlainFormat), or give raw text (chat=False)"
        )
    text = str(
        tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
    )
    if assistant_prefix and is_plain_format(model):
        return text + " " + assistant_prefix
    return text + assistant_prefix


@dataclass(frozen=True)
class ABItem:
    """One CAA A/B item: the question (with its choices) and the two answer letters."""

    question: str
    matching: str
    not_matching: str
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


def answer_letter(answer: Any, where: str) -> str:
    """The letter of an A/B answer written ``(X)`` with ``X`` a capital letter A-Z.

    Surrounding whitespace is ignored. Anything else raises a ``ValueError`` that starts with
    ``where`` (e.g. ``"item 3 of 'ab.json'"``) and quotes the answer.

    Example:
        >>> answer_letter(" (B)", "item 0")
        'B'
        >>> answer_letter("Yes", "item 0")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: item 0: answer 'Yes' is not a capital letter answer like '(A)'; valid answers ...
    """
    text = answer.strip() if isinstance(answer, str) else answer
    if not (
        isinstance(text, str)
        and len(text) == 3
        and text[0] == "("
        and text[2] == ")"
        and "A" <= text[1] <= "Z"
    ):
        raise ValueError(
            f"{where}: answer {answer!r} is not a capital letter answer like '(A)'; valid answers are "
            "'(X)' with X in A-Z"
        )
    return text[1]


def load_ab_items(path: str | Path) -> list[ABItem]:
    """Read a CAA A/B JSON file (behaviour items, or MMLU/TruthfulQA items) into :class:`ABItem`.

    Behaviour files have ``question`` / ``answer_matching_behavior`` /
    ``answer_not_matching_behavior``; MMLU and TruthfulQA files have ``prompt`` / ``correct`` /
    ``incorrect`` (the correct answer counts as matching).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CAA dataset {str(path)!r} does not exist")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{str(path)!r} is not valid JSON: {err}") from err
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{str(path)!r} must hold a non-empty JSON list of A/B items")
    items = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise ValueError(f"item {i} of {str(path)!r} is {entry!r}; expected a JSON object")
        if "question" in entry:
            keys = ("question", "answer_matching_behavior", "answer_not_matching_behavior")
        elif "prompt" in entry:
            keys = ("prompt", "correct", "incorrect")
        else:
            raise ValueError(
                f"item {i} of {str(path)!r} has keys {sorted(entry)}; expected 'question', "
                "'answer_matching_behavior', 'answer_not_matching_behavior' (or 'prompt', "
                "'correct', 'incorrect')"
            )
        missing = [k for k in keys if k not in entry]
        if missing:
            raise ValueError(f"item {i} of {str(path)!r} lacks {missing}")
        question, matching, not_matching = (entry[k] for k in keys)
        for key, value in zip(keys, (question, matching, not_matching), strict=True):
            if not isinstance(value, str):
                raise ValueError(f"item {i} of {str(path)!r}: {key!r} is {value!r}; expected a string")
        extra = {k: v for k, v in entry.items() if k not in keys}
        items.append(ABItem(question, matching.strip(), not_matching.strip(), extra))
    return items


def _letter_read_index(model: HookedTransformer, prompt: str) -> int:
    """Negative index of the answer letter in a prompt ending with ``(X)``."""
    ids = tokenize(model, prompt)
    letter_pos = len(prompt) - 2  # the X of "(X)"
    tokenizer = model.tokenizer
    if tokenizer is not None and getattr(tokenizer, "is_fast", False):
        add_special = len(ids) != len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        enc = tokenizer(prompt, add_special_tokens=add_special, return_offsets_mapping=True)
        for i, (start, end) in enumerate(enc["offset_mapping"]):
            if start <= letter_pos < end:
                return i - len(ids)
    return -2


def load_caa_dataset(
    path: str | Path,
    model: HookedTransformer,
    limit: int | None = None,
    format_prompt: Callable[[HookedTransformer, str, str], str] = chat_prompt,
) -> list[ContrastPair]:
    """Read a CAA A/B file into contrast pairs formatted for ``model``.

    Each question becomes a user turn in the model's chat template; the assistant turn opens with
    the matching answer (positive) or the other answer (negative), e.g. ``(A)``, and the read index
    points at the answer letter (``-2`` for tokenizers that split ``(A)`` into three tokens).
    Both answers of every item must be distinct letter answers ``(X)`` with ``X`` in A-Z (see
    :func:`answer_letter`); anything else raises a ``ValueError`` naming the file and the item.

    Args:
        path: A ``generate_dataset.json`` or ``test_dataset_ab.json`` of the CAA repository.
        model: The model whose chat template and tokenizer are used.
        limit: Keep the first ``limit`` items.
        format_prompt: ``(model, question, answer) -> prompt``; the default is :func:`chat_prompt`.

    Example:
        >>> pairs = load_caa_dataset("caa/generate/refusal/generate_dataset.json", model)  # doctest: +SKIP
    """
    items = load_ab_items(path)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        items = items[:limit]
    pairs = []
    for i, item in enumerate(items):
        where = f"item {i} of {str(path)!r}"
        matching = answer_letter(item.matching, where)
        if answer_letter(item.not_matching, where) == matching:
            raise ValueError(
                f"{where}: matching and not-matching answers are both {item.matching!r}; a contrast "
                "pair needs two different letters, like '(A)' and '(B)'"
            )
        positive = format_prompt(model, item.question, item.matching)
        negative = format_prompt(model, item.question, item.not_matching)
        read_pos = _letter_read_index(model, positive)
        read_neg = _letter_read_index(model, negative)
        if read_pos != read_neg:
            raise ValueError(
                f"answer letters of {item.matching!r} and {item.not_matching!r} tokenize to "
                f"different offsets ({read_pos} vs {read_neg}); pass read indices explicitly"
            )
        pairs.append(ContrastPair(positive, negative, read_index=read_pos))
    return pairs


def builtin_dataset_path(name: str) -> Path:
    """Path of a built-in A/B dataset (see :data:`BUILTIN_DATASETS`)."""
    if name not in BUILTIN_DATASETS:
        raise ValueError(f"unknown built-in dataset {name!r}; valid: {list(BUILTIN_DATASETS)}")
    return Path(str(resources.files("tlsteer") / "datasets" / f"{name}.json"))


def load_builtin_dataset(name: str, model: HookedTransformer, limit: int | None = None) -> list[ContrastPair]:
    """A built-in behaviour (``"sentiment"`` or ``"formality"``) as contrast pairs for ``model``."""
    return load_caa_dataset(builtin_dataset_path(name), model, limit=limit)


def _reply_header(model: HookedTransformer) -> str:
    """The text that opens the assistant turn in :func:`chat_prompt` (``"<|im_start|>assistant\\n"``)."""
    probe = "\x00user\x00"
    text = chat_prompt(model, probe)
    return text[text.rindex(probe) + len(probe) :]


def reply_start(model: HookedTransformer, text: Any) -> int:
    """Token index where the assistant's reply of a :func:`chat_prompt` conversation begins.

    That is the first token after the last assistant header. The text before the reply must
    tokenize to a prefix of the whole text's tokens (true where the header ends in a special
    token or a newline, as chat templates do); otherwise the reply has no clean token boundary
    and this raises.

    Example:
        >>> reply_start(model, chat_prompt(model, "Hi", "Hello there!"))  # doctest: +SKIP
        31
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    header = _reply_header(model).strip(" ") or "\n"
    at = text.rfind(header)
    if at < 0:
        raise ValueError(
            f"no assistant turn (header {header!r}) in {text[-80:]!r}; build it with chat_prompt"
        )
    head_ids = tokenize(model, text[: at + len(header)])
    ids = tokenize(model, text)
    if ids[: len(head_ids)] != head_ids or len(ids) == len(head_ids):
        raise ValueError(f"the reply of {text[-80:]!r} is empty or does not start on a token boundary")
    return len(head_ids)


def reply_span(model: HookedTransformer) -> Callable[[str, Sequence[int]], tuple[int, None]]:
    """A span for ``Read.mean``: every token of the assistant's reply (see :func:`reply_start`).

    Example:
        >>> encode(model, sae, conversations, read=Read.mean(reply_span(model)))  # doctest: +SKIP
    """

    def span(prompt: str, _token_ids: Sequence[int]) -> tuple[int, None]:
        return reply_start(model, prompt), None

    return span


def _choice_text(item: ABItem, letter: str) -> str:
    for line in item.question.splitlines():
        if line.strip().startswith(letter):  # letter: "(A)"
            return line.strip()[len(letter) :].strip()
    raise ValueError(f"no choice {letter} in {item.question!r}")


def load_builtin_replies(
    name: str, model: HookedTransformer, limit: int | None = None
) -> list[tuple[str, str]]:
    """A built-in behaviour as (positive, negative) conversations that differ only in the reply.

    The question (without its choices) is the user turn; the assistant replies with the text of
    the matching or of the other choice. Read them with ``read=Read.mean(reply_span(model))``.

    Example:
        >>> pairs = load_builtin_replies("sentiment", model)  # doctest: +SKIP
        >>> pairs[0][0][-40:]  # doctest: +SKIP
        'wonderful, rich and creamy, and everyone happily went back for seconds.'
    """
    items = load_ab_items(builtin_dataset_path(name))[:limit]
    pairs = []
    for item in items:
        user = item.question.split("\n\nChoices:")[0].strip()
        pairs.append(
            (
                chat_prompt(model, user, _choice_text(item, item.matching)),
                chat_prompt(model, user, _choice_text(item, item.not_matching)),
            )
        )
    return pairs


def read_text(path: str | Path, encoding: Any = "utf-8-sig") -> str:
    """The text of a file in ``encoding``; a byte it cannot decode is named with its offset.

    The default reads UTF-8 with or without the byte-order mark that spreadsheet programs write.
    """
    if not isinstance(encoding, str):
        raise TypeError(f"encoding must be a codec name such as 'utf-8' or 'latin-1', got {encoding!r}")
    try:
        codecs.lookup(encoding)
    except LookupError as err:
        raise ValueError(
            f"unknown encoding {encoding!r}; give a codec name such as 'utf-8' or 'latin-1'"
        ) from err
    path = Path(path)
    raw = path.read_bytes()
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as err:
        codec = codecs.lookup(encoding).name
        # utf-8-sig counts from after the byte-order mark; the offset is in the file
        at = err.start + (3 if codec == "utf-8-sig" and raw.startswith(codecs.BOM_UTF8) else 0)
        line = raw[:at].count(b"\n") + 1
        named = "UTF-8" if codec in ("utf-8", "utf-8-sig") else encoding
        raise ValueError(
            f"{str(path)!r} is not valid {named}: byte {raw[at : at + 1]!r} at offset "
            f"{at} (line {line}) cannot be decoded ({err.reason}); save the file as UTF-8, or pass "
            "encoding= naming its encoding (e.g. encoding='latin-1')"
        ) from err


def load_open_prompts() -> list[str]:
    """tlsteer's 64 varied open instructions (chat user turns), for steered generation."""
    return json.loads((resources.files("tlsteer") / "datasets" / "open_prompts.json").read_text())


def load_heldout_prompts(part: str) -> list[str]:
    """Everyday open requests (chat user turns) that no SAE or codebook of tlsteer has seen.

    ``"calibration"`` holds 32 prompts and ``"test"`` 160 others; none of them is, or nearly is,
    one of :func:`load_open_prompts` (which the SAE corpus was built from) or a class set's example
    prompt. They are short requests and questions in a neutral tone, on varied everyday topics;
    format them with :func:`chat_prompt`.

    Example:
        >>> len(load_heldout_prompts("calibration")), len(load_heldout_prompts("test"))
        (32, 160)
    """
    if part not in HELDOUT_PARTS:
        raise ValueError(f"unknown held-out part {part!r}; valid: {list(HELDOUT_PARTS)}")
    path = resources.files("tlsteer") / "datasets" / "heldout_prompts.json"
    return list(json.loads(path.read_text(encoding="utf-8"))[part])


def load_neutral_text() -> list[str]:
    """tlsteer's 60 varied neutral prompts, for residual norms and KL side effects."""
    return json.loads((resources.files("tlsteer") / "datasets" / "neutral_text.json").read_text())
