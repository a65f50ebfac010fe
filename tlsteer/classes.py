"""Equivalence classes of behaviour: K named classes of examples, their splits and raw-space reads.

A :class:`ClassDataset` holds K >= 2 named classes (sizes may differ), each a list of
:class:`ClassExample` (a chat prompt with a response, or a plain text), optionally ordered
(``ordinal``: the classes are levels, lowest first), with labelled judge texts kept apart from the
examples. Build one from a dict, JSON or CSV, or load a built-in set (:data:`CLASS_DATASETS`).
:meth:`ClassDataset.split` gives deterministic train / validation / test parts from a seed.

An example's representation at a hook is, by default, the mean of the activations over its
response tokens (a chat example's assistant reply; every token but the first of a plain text,
whose first position is an attention sink), or the activation at a chosen read position
(:func:`class_reads`, batched and left-padded like every read of the core).
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from tlsteer._types import check_batch_size, is_int, validate_hook_name
from tlsteer.data import chat_prompt, read_text, reply_start
from tlsteer.errors import closest, format_options
from tlsteer.read import Read, as_read
from tlsteer.reading import plan_reads, read_all

__all__ = [
    "CLASS_DATASETS",
    "ClassDataset",
    "ClassExample",
    "class_reads",
    "class_reads_by_hook",
    "load_class_dataset",
]

CLASS_DATASETS: tuple[str, ...] = ("speaking_styles", "aggression", "attitude_domain", "emotions")
"""Built-in class sets: four speaking styles; four ordered levels of aggression (ordinal); a 2 x 2
of attitude (enjoy, dislike) by domain (animals, food); three emotions (joy, sadness, anger) shown
through situation and behaviour, never named (45 examples per class)."""

MIN_EXAMPLES = 2


@dataclass(frozen=True)
class ClassExample:
    """A chat exchange (``prompt`` the user turn, ``response`` the assistant's reply) or a plain text
    (``prompt`` is ``None``; the text is ``response``)."""

    response: str
    prompt: str | None = None

    def text(self, model: HookedTransformer) -> str:
        """What the model reads: the chat-formatted exchange, or the plain text."""
        return self.response if self.prompt is None else chat_prompt(model, self.prompt, self.response)


def _example(raw: Any, where: str) -> ClassExample:
    if isinstance(raw, ClassExample):
        prompt, response = raw.prompt, raw.response
    elif isinstance(raw, str):
        prompt, response = None, raw
    elif isinstance(raw, Mapping):
        unknown = set(raw) - {"prompt", "response", "text"}
        if unknown or ("text" in raw) == ("response" in raw):
            raise ValueError(
                f"{where}: an example is a string, {{'text': ...}} or {{'prompt': ..., 'response': ...}}; "
                f"got keys {sorted(raw)}"
            )
        prompt, response = raw.get("prompt"), raw.get("response", raw.get("text"))
    else:
        raise TypeError(f"{where}: an example is a string or a dict, got {type(raw).__name__}")
    if not isinstance(response, str) or not response.strip():
        raise ValueError(f"{where}: the response (or text) must be a non-empty string, got {response!r}")
    if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
        raise ValueError(f"{where}: the prompt must be a non-empty string or absent, got {prompt!r}")
    return ClassExample(response, prompt)


def _check_bare_classes(data: Mapping[Any, Any], known: Sequence[str]) -> None:
    """Refuse a dict without ``examples`` that is not a bare ``{class: [examples]}`` dict either.

    A key that is a top-level key, or whose value is not a list of examples (a misspelled
    ``examples``, say), would otherwise be read as a class.
    """
    for key, value in data.items():
        is_list = isinstance(value, Sequence) and not isinstance(value, str)
        if key not in known and is_list:
            continue
        if key in known:
            typo = [k for k in data if k not in known and closest(str(k), ["examples"])]
            hint = f" (is {typo[0]!r} a misspelling of 'examples'?)" if typo else ""
            raise ValueError(
                f"the dict has the top-level key {key!r} but no 'examples'{hint}; give "
                "{'examples': {class_name: [examples]}, ...} or a bare {class_name: [examples]}"
            )
        near = closest(str(key), known)
        hint = f"; closest valid key: {near[0]!r}" if near else ""
        raise ValueError(
            f"unknown key {key!r} (its value is a {type(value).__name__}, not a list of examples, so it "
            f"is no class){hint}; a dict without 'examples' is read as "
            f"{{class_name: [examples]}}, and top-level keys are {format_options(known)}"
        )


@dataclass(frozen=True)
class ClassDataset:
    """K >= 2 named classes of examples; see the module docstring.

    Attributes:
        name: The set's name.
        classes: Class names, in order (for an ordinal set: lowest level first).
        examples: Per class, its examples (the texts that build vectors and profiles).
        ordinal: Whether the classes are ordered levels.
        judge_texts: Per class, labelled texts for a judge, kept apart from the examples (may be empty).
        factors: Optional factor labels, e.g. ``{"domain": {"enjoy_food": "food", ...}}``.
        description: Free text.
    """

    # checked (and normalized to tuples) in __post_init__, so annotated loosely for runtime checkers
    name: str
    classes: Any  # tuple[str, ...]
    examples: Any = field(repr=False)  # Mapping[str, tuple[ClassExample, ...]]
    ordinal: Any = False  # bool
    judge_texts: Any = field(default_factory=dict, repr=False)  # Mapping[str, tuple[str, ...]]
    factors: Any = field(default_factory=dict, repr=False)  # Mapping[str, Mapping[str, str]]
    description: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"name must be a string, got {self.name!r:.80}")
        for label, given, shape in (
            ("examples", self.examples, "{class_name: [examples]}"),
            ("judge_texts", self.judge_texts, "{class_name: [texts]}"),
            ("factors", self.factors, "{factor: {class_name: label}}"),
        ):
            if not isinstance(given, Mapping):
                raise TypeError(
                    f"{self.name}: {label} must be a mapping {shape}, got {type(given).__name__} "
                    f"{given!r:.80}"
                )
        classes = self.classes
        if isinstance(classes, str) or not isinstance(classes, Sequence):
            raise TypeError(f"classes must be a list of names, got {classes!r}")
        bad = [c for c in classes if not isinstance(c, str) or not c.strip()]
        if bad:
            raise ValueError(f"class names must be non-empty strings, got {bad[0]!r}")
        seen = [c for i, c in enumerate(classes) if c in classes[:i]]
        if seen:
            raise ValueError(f"duplicate class name {seen[0]!r} in {list(classes)}")
        if len(classes) < 2:
            raise ValueError(f"a class set needs at least 2 classes, got {list(classes)}")
        object.__setattr__(self, "classes", tuple(classes))
        for label, given in (("examples", self.examples), ("judge_texts", self.judge_texts)):
            unknown = sorted(set(given) - set(classes))
            if unknown:
                raise ValueError(
                    f"{label} name unknown class {unknown[0]!r}; classes: {format_options(classes)}"
                )
        examples = {}
        for c in classes:
            rows = self.examples.get(c, ())
            if isinstance(rows, (str, Mapping)):
                raise TypeError(f"examples[{c!r}] must be a list of examples, got {type(rows).__name__}")
            examples[c] = tuple(
                _example(r, f"{self.name}: class {c!r}, example {i}") for i, r in enumerate(rows)
            )
            if len(examples[c]) < MIN_EXAMPLES:
                raise ValueError(
                    f"{self.name}: class {c!r} has {len(examples[c])} example(s); each class needs at least "
                    f"{MIN_EXAMPLES}"
                )
        object.__setattr__(self, "examples", examples)
        judge = {}
        for c, texts in self.judge_texts.items():
            if isinstance(texts, str) or not all(isinstance(t, str) and t.strip() for t in texts):
                raise ValueError(f"{self.name}: judge_texts[{c!r}] must be a list of non-empty strings")
            judge[c] = tuple(texts)
        object.__setattr__(self, "judge_texts", judge)
        for factor, labels in self.factors.items():
            missing = [c for c in classes if c not in labels]
            if missing:
                raise ValueError(f"{self.name}: factor {factor!r} gives no label for class {missing[0]!r}")
        if not isinstance(self.ordinal, bool):
            raise TypeError(f"ordinal must be True or False, got {self.ordinal!r}")

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, name: str | None = None) -> ClassDataset:
        """From ``{"classes": [...], "examples": {class: [...]}, "ordinal": ..., "judge_texts": ...}``.

        ``classes`` may be left out (then the order of ``examples``), except for an ordinal set,
        whose order must be given. A bare ``{class: [examples]}`` dict is read as ``examples``.

        Example:
            >>> data = {"calm": ["fine.", "sure."], "angry": ["NO.", "ugh!"]}
            >>> ds = ClassDataset.from_dict(data, name="toy")
            >>> ds.classes, ds.sizes
            (('calm', 'angry'), {'calm': 2, 'angry': 2})
        """
        if not isinstance(data, Mapping):
            raise TypeError(
                "expected a mapping {class_name: [examples]} or {'examples': {class_name: [examples]}, "
                f"'classes': ..., ...}}, got {type(data).__name__} {data!r:.80}"
            )
        known = ("classes", "description", "examples", "factors", "judge_texts", "name", "ordinal")
        if "examples" not in data:
            _check_bare_classes(data, known)
            data = {"examples": data}
        unknown = sorted((k for k in data if k not in known), key=str)
        if unknown:
            near = closest(str(unknown[0]), known)
            hint = f"; closest: {near[0]!r}" if near else ""
            raise ValueError(f"unknown key {unknown[0]!r}{hint}; valid keys: {format_options(known)}")
        ordinal = data.get("ordinal", False)
        if ordinal and "classes" not in data:
            raise ValueError("an ordinal set needs 'classes': its levels in order, lowest first")
        return cls(
            name=name or data.get("name", "classes"),
            classes=tuple(data.get("classes", list(data["examples"]))),
            examples=data["examples"],
            ordinal=ordinal,
            judge_texts=data.get("judge_texts", {}),
            factors=data.get("factors", {}),
            description=data.get("description", ""),
        )

    @classmethod
    def from_json(cls, path: str | Path, encoding: str = "utf-8-sig") -> ClassDataset:
        """From a JSON file in the :meth:`from_dict` layout (UTF-8 by default, see :meth:`from_csv`)."""
        path = Path(path)
        return cls.from_dict(json.loads(read_text(path, encoding)), name=None)

    @classmethod
    def from_csv(
        cls,
        path: str | Path,
        class_column: str = "class",
        text_column: str = "text",
        prompt_column: str = "prompt",
        order: Sequence[str] | None = None,
        name: str | None = None,
        encoding: str = "utf-8-sig",
    ) -> ClassDataset:
        """From a CSV with a class column and a text column (and optionally a prompt column).

        ``order`` lists the classes in order and makes the set ordinal; without it, classes come in
        the order they first appear. The file is read as UTF-8, with or without the byte-order
        mark that spreadsheet programs write; a file in another encoding is refused with the
        offset of its first bad byte, unless ``encoding`` names it (e.g. ``"latin-1"``).
        """
        path = Path(path)
        reader = csv.DictReader(io.StringIO(read_text(path, encoding), newline=""))
        columns = reader.fieldnames or []
        for needed in (class_column, text_column):
            if needed not in columns:
                raise ValueError(f"{path.name}: no column {needed!r}; columns: {columns}")
        examples: dict[str, list[dict[str, str]]] = {}
        for row in reader:
            example = {"response": row[text_column]}
            if prompt_column in columns and row[prompt_column]:
                example["prompt"] = row[prompt_column]
            examples.setdefault(row[class_column], []).append(example)
        data: dict[str, Any] = {"examples": examples}
        if order is not None:
            data["classes"], data["ordinal"] = list(order), True
        return cls.from_dict(data, name=name or path.stem)

    # -- views ------------------------------------------------------------------------------
    @property
    def sizes(self) -> dict[str, int]:
        return {c: len(self.examples[c]) for c in self.classes}

    def check_class(self, name: Any) -> str:
        """``name`` if it is a class of the set, else a ``ValueError`` listing the classes."""
        if name not in self.classes:
            raise ValueError(
                f"unknown class {name!r}; classes of {self.name!r}: {format_options(self.classes)}"
            )
        return name

    def level(self, name: str) -> int:
        """An ordinal set's level of a class (0 for the lowest)."""
        if not self.ordinal:
            raise ValueError(f"{self.name!r} is not ordinal; its classes have no levels")
        return self.classes.index(self.check_class(name))

    def texts(self, model: HookedTransformer, name: str) -> list[str]:
        """The texts the model reads for a class's examples (chat-formatted where they have a prompt)."""
        return [e.text(model) for e in self.examples[self.check_class(name)]]

    def split(self, seed: int = 0, validation: float = 0.2, test: float = 0.2) -> tuple[ClassDataset, ...]:
        """``(train, validation, test)``: each class shuffled with its own seeded RNG and cut.

        The shuffle of a class depends only on ``seed`` and its size, so classes of the same size
        whose example ``i`` answers the same prompt (as in the built-in sets) keep their prompts
        aligned across parts: a test prompt is a test prompt in every class. Adding a class changes
        no other class's split. Every part keeps at least 2 examples of every class; the judge
        texts go with every part.
        """
        if not is_int(seed):
            raise TypeError(f"seed must be an int, got {seed!r}")
        for label, share in (("validation", validation), ("test", test)):
            if not 0 <= share < 1:
                raise ValueError(f"{label} must be in [0, 1), got {share!r}")
        if validation + test >= 1:
            raise ValueError(f"validation + test must be < 1, got {validation + test}")
        parts: list[dict[str, list[ClassExample]]] = [{}, {}, {}]
        for c in self.classes:
            rows = list(self.examples[c])
            random.Random(f"{seed}:{len(rows)}").shuffle(rows)
            n_val, n_test = round(validation * len(rows)), round(test * len(rows))
            n_train = len(rows) - n_val - n_test
            if min(n_train, n_val if validation else 2, n_test if test else 2) < MIN_EXAMPLES:
                raise ValueError(
                    f"class {c!r} has {len(rows)} examples: too few for a {1 - validation - test:.0%} / "
                    f"{validation:.0%} / {test:.0%} split with at least {MIN_EXAMPLES} in each part"
                )
            parts[0][c], parts[1][c], parts[2][c] = (
                rows[:n_train],
                rows[n_train : n_train + n_val],
                rows[n_train + n_val :],
            )
        out = []
        for suffix, part in zip(("train", "validation", "test"), parts, strict=True):
            if not any(part.values()):
                out.append(None)
                continue
            out.append(
                ClassDataset(
                    f"{self.name}[{suffix}]",
                    self.classes,
                    part,
                    self.ordinal,
                    self.judge_texts,
                    self.factors,
                    self.description,
                )
            )
        return tuple(out)


def load_class_dataset(name: str) -> ClassDataset:
    """A built-in class set (:data:`CLASS_DATASETS`).

    Example:
        >>> load_class_dataset("aggression").classes
        ('calm', 'curt', 'irritated', 'hostile')
    """
    if name not in CLASS_DATASETS:
        raise ValueError(f"unknown built-in class set {name!r}; valid: {format_options(CLASS_DATASETS)}")
    return ClassDataset.from_json(
        Path(str(resources.files("tlsteer") / "datasets" / "classes" / f"{name}.json"))
    )


def _response_span(model: HookedTransformer, dataset: ClassDataset) -> Callable[..., Any]:
    """The span of :meth:`Read.reply`: a reply's tokens, or a plain text's tokens but the first."""
    starts: dict[str, int] = {}
    where: dict[str, str] = {}
    for c in dataset.classes:
        for i, e in enumerate(dataset.examples[c]):
            text = e.text(model)
            if text in starts:
                continue
            where[text] = f"{dataset.name}: class {c!r}, example {i} ({e.response[:40]!r})"
            try:
                starts[text] = 1 if e.prompt is None else reply_start(model, text)
            except ValueError as err:
                raise ValueError(f"{where[text]}: {err}") from err

    def span(prompt: str, ids: Sequence[int]) -> tuple[int, None]:
        if starts[prompt] >= len(ids):
            raise ValueError(
                f"{where[prompt]} is a plain text of {len(ids)} token: Read.reply() averages every "
                "token of a plain text but the first (an attention sink), which leaves none; give a "
                "longer text, or read=Read.last() or a position"
            )
        return starts[prompt], None

    return span


def class_reads(
    model: HookedTransformer,
    dataset: ClassDataset,
    hook: str,
    *,
    read: Read | None = None,
    transform: Callable[[Tensor], Tensor] | None = None,
    d_out: int | None = None,
    batch_size: int = 8,
) -> dict[str, Float[Tensor, "n d"]]:
    """Each class's example representations at ``hook`` (float32, CPU): ``{class: [n_class, d]}``.

    ``read`` defaults to :meth:`Read.reply <tlsteer.Read.reply>`: the mean over the reply tokens
    (a plain text: every token but the first); any position or mean read works too.
    ``transform`` maps activation rows before the mean (an SAE's ``encode``); ``d_out``, when
    given, is checked against the width it returns. All classes are read in one batched stream
    (:func:`class_reads_by_hook` with one hook).
    """
    return class_reads_by_hook(
        model, dataset, [hook], read=read, transform=transform, d_out=d_out, batch_size=batch_size
    )[hook]


def class_reads_by_hook(
    model: HookedTransformer,
    dataset: ClassDataset,
    hooks: Sequence[str],
    *,
    read: Read | None = None,
    transform: Callable[[Tensor], Tensor] | None = None,
    d_out: int | None = None,
    batch_size: int = 8,
) -> dict[str, dict[str, Float[Tensor, "n d"]]]:
    """:func:`class_reads` at several hooks in one batched stream: ``{hook: {class: [n_class, d]}}``.

    Each hook's entry equals ``class_reads(model, dataset, hook, ...)``; the examples go through
    the model once (up to the deepest hook) for all of them. ``transform`` (and ``d_out``) apply
    at every hook. Hooks come back in the order given; a hook named twice is refused.

    Example:
        >>> hooks = [f"blocks.{layer}.hook_resid_post" for layer in (3, 6)]  # doctest: +SKIP
        >>> reads = class_reads_by_hook(model, load_class_dataset("emotions"), hooks)  # doctest: +SKIP
        >>> reads["blocks.6.hook_resid_post"]["joy"].shape  # doctest: +SKIP
        torch.Size([45, 576])
    """
    if not isinstance(dataset, ClassDataset):
        raise TypeError(f"dataset must be a ClassDataset, got {type(dataset).__name__}")
    if isinstance(hooks, str) or not isinstance(hooks, Sequence):
        raise TypeError(
            f"hooks must be a list of hook names like ['blocks.3.hook_resid_post'], got {hooks!r:.80}"
        )
    if not hooks:
        raise ValueError("hooks is empty; give at least one hook name")
    hooks = [validate_hook_name(model, hook) for hook in hooks]
    twice = [hook for i, hook in enumerate(hooks) if hook in hooks[:i]]
    if twice:
        raise ValueError(f"hook {twice[0]!r} is named twice in hooks; name each hook once")
    batch_size = check_batch_size(batch_size)
    examples = [e for c in dataset.classes for e in dataset.examples[c]]
    texts = [e.text(model) for e in examples]
    read = as_read(read, Read.reply())
    if read.kind == "reply":
        plan = plan_reads(model, texts, Read.mean(_response_span(model, dataset)))
    else:
        plan = plan_reads(model, texts, read)
    rows = read_all(model, plan, hooks, transform=transform, batch_size=batch_size)
    width = rows[hooks[0]].shape[1]
    if d_out is not None and width != d_out:
        raise ValueError(f"the transform returns rows of width {width}, but d_out={d_out}")
    out: dict[str, dict[str, Tensor]] = {}
    for hook in hooks:
        out[hook], at = {}, 0
        for c in dataset.classes:
            n = len(dataset.examples[c])
            out[hook][c] = rows[hook][at : at + n]
            at += n
    return out
