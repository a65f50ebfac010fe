"""A token-level view of steering: where the direction is, and where steering changed the output.

:func:`token_view` generates the steered greedy continuation of a prompt with
:func:`tlsteer.generate_tokens`, then runs the whole sequence (prompt + continuation) twice,
teacher-forced on the same tokens: once unsteered, once steered (the whole vector, at every layer it
has, from absolute position ``min_token_index`` on, as during generation). Per token it keeps

- ``projection``: the residual at the vector's hook (at ``layer``) in the **unsteered** forward,
  projected on the unit direction: where the model itself carries the direction;
- ``steered_projection``: the same in the steered forward, read after the vector's own edit at that
  hook (with addition, ``multiplier * |direction|`` more at the steered positions, plus whatever
  steering at earlier layers and positions moved);
- ``kl``: KL(unsteered || steered) of the next-token distributions at that position (in nats), the
  distribution the position predicts the next token from; the same direction as
  :func:`tlsteer.eval.kl_on_neutral` and :func:`tlsteer.eval.kl_stats`, so a view's numbers read on
  the same scale as a KL budget. It is 0 before ``min_token_index``.

:func:`feature_token_view` is the same for the features of a feature dictionary (an SAE, say:
:class:`tlsteer.dictionary.FeatureDictionary`): their activations per token, from its encoding of
the residual at its hook, optionally under steering (then with the KL and the
unsteered activations too). Both return frozen values with ``to_html`` (a coloured token strip; see
:mod:`tlsteer.eval.token_view_render`), ``_repr_html_`` for notebooks, ``plot`` and ``to_dict``.

``tokens`` holds each token's own text (:func:`token_text`). A byte-level BPE token (GPT-2,
Llama 3, SmolLM2) can hold part of a multi-byte UTF-8 character (an emoji or a CJK character is
often split over two or three tokens), which ``tokenizer.decode`` alone turns into U+FFFD; such
bytes are written as ``\\xNN`` escapes instead (``😀``, split as ``'ðŁĺ'`` + ``'Ģ'``, shows as the
two tokens ``\\xf0\\x9f\\x98`` and ``\\x80``), so one token stays one entry with its own values, and
the HTML tooltip names the character the token shares with its neighbours.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from matplotlib.figure import Figure
from torch import Tensor
from transformer_lens import HookedTransformer

from tlsteer._types import is_int, parse_hook_name
from tlsteer.data import chat_prompt
from tlsteer.decode import generate_tokens
from tlsteer.dictionary import check_feature_dictionary, check_feature_ids, fingerprint
from tlsteer.eval.token_view_render import Row, view_figure, view_html
from tlsteer.operators import check_multiplier
from tlsteer.positions import Positions
from tlsteer.steering import Steering, as_steering
from tlsteer.tokens import tokenize_prompts
from tlsteer.vector import SteeringVector

__all__ = [
    "FeatureTokenView",
    "TokenView",
    "byte_level_bytes",
    "feature_token_view",
    "next_token_kl",
    "token_text",
    "token_view",
]


@dataclass(frozen=True)
class TokenView:
    """Per-token projection on a steering direction and per-position KL (see the module docstring).

    Every tuple has one entry per token of the prompt followed by its generated continuation.
    """

    tokens: tuple[str, ...]
    token_ids: tuple[int, ...]
    generated: tuple[bool, ...]
    projection: tuple[float, ...]
    steered_projection: tuple[float, ...]
    kl: tuple[float, ...]
    hook_name: str
    multiplier: float
    min_token_index: int
    direction_norm: float
    vector_note: str = ""
    model_name: str = ""

    @property
    def n_prompt(self) -> int:
        """The number of prompt tokens (the continuation starts there)."""
        return sum(not g for g in self.generated)

    def title(self) -> str:
        about = f" ({self.vector_note})" if self.vector_note else ""
        return (
            f"projection on the unit steering direction{about} at {self.hook_name}, unsteered forward; "
            f"steered with multiplier {self.multiplier:.4g} from token {self.min_token_index}"
        )

    def _rows(self) -> list[Row]:
        return [Row("projection", self.projection, self.steered_projection, "steered run", "unsteered run")]

    def to_html(self, vmax: Any = None, standalone: bool = False) -> str:
        """The coloured token strip: background = projection (0 is white), bar under it = KL.

        Args:
            vmax: The projection at the colormap's ends (default: the largest ``|projection|``
                after the first token, often an attention sink); give one value to compare views.
            standalone: A whole HTML page (to save to a file) instead of a fragment.
        """
        args = (self.tokens, self.generated, self._rows(), self.kl, self.min_token_index)
        return view_html(self.title(), *args, vmax=vmax, standalone=standalone)

    def _repr_html_(self) -> str:
        return self.to_html()

    def plot(self, path: str | Path | None = None) -> Figure:
        """Two aligned bar panels over token index: the projection (ticks: steered run) and the KL."""
        args = (self.tokens, self.generated, self._rows(), self.kl, self.min_token_index)
        return view_figure(self.title(), *args, path=path)

    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON-ready Python values."""
        return {**dataclasses.asdict(self), "n_prompt": self.n_prompt}


@dataclass(frozen=True)
class FeatureTokenView:
    """SAE feature activations per token, optionally under steering (see the module docstring).

    ``activations[j][i]`` is feature ``features[j]`` at token ``i`` in the forward with the given
    steering (unsteered when there is none); ``unsteered_activations`` and ``kl`` are ``None``
    without steering.
    """

    tokens: tuple[str, ...]
    token_ids: tuple[int, ...]
    generated: tuple[bool, ...]
    features: tuple[int, ...]
    activations: tuple[tuple[float, ...], ...]
    unsteered_activations: tuple[tuple[float, ...], ...] | None
    kl: tuple[float, ...] | None
    hook_name: str
    steering: str = ""
    min_token_index: int = 0
    dictionary_fingerprint: str = ""

    def title(self) -> str:
        how = (
            f"steered by {self.steering} from token {self.min_token_index}" if self.steering else "unsteered"
        )
        return f"SAE feature activations at {self.hook_name}, {how}"

    def _rows(self) -> list[Row]:
        base = self.unsteered_activations
        return [
            Row(
                f"feature {f}",
                self.activations[j],
                None if base is None else base[j],
                "unsteered run",
                "steered run" if base is not None else "",
            )
            for j, f in enumerate(self.features)
        ]

    def to_html(self, vmax: Any = None, standalone: bool = False) -> str:
        """One coloured strip per feature (0 is white); with steering, a bar under each token = KL.

        ``vmax`` is the activation at the colormap's ends (default: each feature's largest after
        the first token).
        """
        mark = self.min_token_index if self.steering else 0
        args = (self.tokens, self.generated, self._rows(), self.kl, mark)
        return view_html(self.title(), *args, vmax=vmax, standalone=standalone)

    def _repr_html_(self) -> str:
        return self.to_html()

    def plot(self, path: str | Path | None = None) -> Figure:
        """One bar panel per feature (ticks: the unsteered run, with steering), then the KL if steered."""
        mark = self.min_token_index if self.steering else 0
        return view_figure(self.title(), self.tokens, self.generated, self._rows(), self.kl, mark, path)

    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON-ready Python values."""
        return dataclasses.asdict(self)


def next_token_kl(
    unsteered: Float[Tensor, "pos d_vocab"], steered: Float[Tensor, "pos d_vocab"]
) -> Float[Tensor, " pos"]:
    """KL(unsteered || steered) of the next-token distributions at each position, in nats (float64).

    The direction of every KL in :mod:`tlsteer.eval`: the expectation is under the unsteered model.

    Example:
        >>> next_token_kl(torch.zeros(2, 3), torch.zeros(2, 3)).tolist()
        [0.0, 0.0]
    """
    log_u = unsteered.double().log_softmax(-1)
    log_s = steered.double().log_softmax(-1)
    return (log_u.exp() * (log_u - log_s)).sum(-1).clamp_min(0.0)


@dataclass(eq=False)
class _Reader:
    """A hook that keeps the activation it sees (placed after any steering hook at the same point)."""

    act: Tensor | None = None

    def __call__(self, act: Tensor, hook: Any) -> None:  # noqa: ARG002
        self.act = act.detach()


def _forward(model: HookedTransformer, ids: list[int], hook: str, hooks: list) -> tuple[Tensor, Tensor]:
    """Logits ``[pos, d_vocab]`` and the activation at ``hook`` ``[pos, d_model]`` of one sequence."""
    reader = _Reader()
    tokens = torch.tensor([ids], dtype=torch.long, device=model.cfg.device)
    with torch.no_grad(), model.hooks(fwd_hooks=[*hooks, (hook, reader)]):
        logits = model(tokens)
    if reader.act is None:
        raise RuntimeError(f"the forward pass never reached {hook!r}")
    return logits[0], reader.act[0]


def _check_flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def _check_new_tokens(max_new_tokens: Any) -> int:
    if not is_int(max_new_tokens) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0 (0: the prompt alone), got {max_new_tokens!r}")
    return int(max_new_tokens)


def _check_prompt(prompt: Any) -> str:
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}: {prompt!r:.60}")
    if not prompt:
        raise ValueError("prompt is empty; give the text whose tokens (and continuation) to view")
    return prompt


def _pick_hook(vector: SteeringVector, layer: Any) -> str:
    if layer is None:
        return vector.hooks[0]
    if isinstance(layer, str):
        if layer not in vector.directions:
            raise ValueError(f"hook {layer!r} is not in this vector; its hooks: {vector.hooks}")
        return layer
    if not is_int(layer):
        raise TypeError(f"layer must be an int (or a hook name of the vector), got {layer!r}")
    hooks = [name for name in vector.hooks if parse_hook_name(name)[0] == int(layer)]
    if not hooks:
        raise ValueError(f"layer={layer} is not a layer of this vector; its layers: {vector.layers}")
    if len(hooks) > 1:
        raise ValueError(f"layer={layer} has {len(hooks)} hooks in this vector ({hooks}); pass one as layer=")
    return hooks[0]


def _view_positions(positions: Any) -> Positions:
    """The view steers every position or from an index on: one sequence, run whole."""
    where = Positions.all() if positions is None else positions
    if not isinstance(where, Positions):
        raise TypeError(f"positions must be a tlsteer.Positions, got {where!r}")
    if where.mode not in ("all", "from"):
        raise ValueError(
            "the token view steers every position or from an index on (Positions.all(), "
            f"Positions.start_at(i)), got {where.describe()}"
        )
    return where


def _prompt_and_new(
    model: HookedTransformer, prompt: str, chat: bool, max_new_tokens: int, **steer: Any
) -> tuple[list[int], list[int]]:
    if max_new_tokens == 0:
        text = chat_prompt(model, prompt) if chat else prompt
        return tokenize_prompts(model, [text])[0], []
    out = generate_tokens(model, [prompt], max_new_tokens=max_new_tokens, chat=chat, **steer)
    return list(out.prompt_tokens[0]), list(out.new_tokens[0])


@functools.cache
def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet, inverted: the character that stands for each byte -> the byte.

    Printable Latin-1 bytes stand for themselves; the other 68 are ``chr(256 + n)`` in byte order
    (``bytes_to_unicode`` in GPT-2's ``encoder.py`` and in ``transformers``).
    """
    ranges = (range(ord("!"), ord("~") + 1), range(ord("¡"), ord("¬") + 1), range(ord("®"), ord("ÿ") + 1))
    printable = {b for r in ranges for b in r}
    alphabet, n = {}, 0
    for byte in range(256):
        if byte in printable:
            alphabet[chr(byte)] = byte
        else:
            alphabet[chr(256 + n)] = byte
            n += 1
    return alphabet


_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def byte_level_bytes(piece: str) -> bytes | None:
    r"""The raw bytes of a token string from ``tokenizer.convert_ids_to_tokens``, or ``None``.

    A byte-level BPE token string (GPT-2 style: one character per byte) or a SentencePiece
    byte-fallback piece (``<0xF0>``); any other string gives ``None``.

    Example:
        >>> byte_level_bytes("ðŁĺ"), byte_level_bytes("Ġcat"), byte_level_bytes("<0xF0>")
        (b'\xf0\x9f\x98', b' cat', b'\xf0')
        >>> byte_level_bytes("▁cat") is None
        True
    """
    fallback = _BYTE_FALLBACK.fullmatch(piece)
    if fallback:
        return bytes([int(fallback[1], 16)])
    alphabet = _byte_level_alphabet()
    if not piece or any(ch not in alphabet for ch in piece):
        return None
    return bytes(alphabet[ch] for ch in piece)


def token_text(tokenizer: Any, token_id: int) -> str:
    r"""One token's text as the token view shows it: the bytes of a split character as ``\xNN``.

    ``tokenizer.decode([token_id])``, unless that holds U+FFFD and the token's string is
    byte-level BPE or a byte-fallback piece (see :func:`byte_level_bytes`): then the token's own
    bytes, decoded as UTF-8, with each byte that is not part of a whole character in this token
    written ``\xNN`` (always ``\x80`` or above: bytes of a multi-byte character). A real U+FFFD
    (bytes ``ef bf bd`` in one token) stays U+FFFD. The escapes are plain text: a token whose
    text is literally ``\xf0`` looks the same (``token_ids`` are the ground truth).

    Example:
        >>> token_text(gpt2_tokenizer, gpt2_tokenizer.convert_tokens_to_ids("ðŁĺ"))  # doctest: +SKIP
        '\\xf0\\x9f\\x98'
    """
    text = tokenizer.decode([token_id])
    if "\ufffd" not in text:
        return text
    raw = byte_level_bytes(tokenizer.convert_ids_to_tokens(token_id))
    return text if raw is None else raw.decode("utf-8", "backslashreplace")


def _decode(model: HookedTransformer, ids: list[int]) -> tuple[str, ...]:
    return tuple(token_text(model.tokenizer, i) for i in ids)


def token_view(
    model: HookedTransformer,
    vector: Any,
    prompt: Any,
    multiplier: Any,
    *,
    positions: Positions | None = None,
    max_new_tokens: int = 30,
    chat: bool = False,
    layer: int | str | None = None,
    stop_at_eos: bool = True,
    check_model: bool = True,
) -> TokenView:
    """Per token of a prompt and its steered greedy continuation: projection on the vector and KL.

    Args:
        model: A ``HookedTransformer`` with a tokenizer.
        vector: A :class:`~tlsteer.SteeringVector`; all of it steers, ``layer`` picks where to read.
        prompt: The text (with ``chat=True``, a user message put in the chat template).
        multiplier: The steering strength (finite; 0 gives the unsteered continuation, KL 0).
        max_new_tokens: Greedy tokens to generate under steering (0: the prompt alone).
        chat: Format the prompt as a user turn of the model's chat template.
        positions: Where to steer: every position (default) or from an index on
            (``Positions.start_at(i)``, 0 is the first prompt token), in generation and in the
            steered forward alike.
        layer: The layer (or the vector's hook name) whose residual is projected; default the
            vector's first hook.
        stop_at_eos: Stop the continuation at the end-of-sequence token (kept).
        check_model: Refuse a vector made for another model.

    Example:
        >>> view = token_view(model, vec, "Tell me about cats.", 6.0, chat=True)  # doctest: +SKIP
        >>> view  # in a notebook: the coloured token strip  # doctest: +SKIP
        >>> view.plot("token_view.png")  # doctest: +SKIP
    """
    if not isinstance(vector, SteeringVector):
        hint = "; wrap a {hook_name: direction} mapping as SteeringVector(mapping)" * isinstance(
            vector, Mapping
        )
        raise TypeError(f"vector must be a tlsteer.SteeringVector, got {type(vector).__name__}{hint}")
    prompt = _check_prompt(prompt)
    value = check_multiplier(multiplier)
    new_tokens = _check_new_tokens(max_new_tokens)
    chat = _check_flag("chat", chat)
    stop_at_eos = _check_flag("stop_at_eos", stop_at_eos)
    where = _view_positions(positions)
    start = where.min_index
    hook = _pick_hook(vector, layer)
    direction = vector.directions[hook].detach().float()
    norm = float(direction.norm())
    if norm == 0:
        raise ValueError(
            f"the vector's direction at {hook!r} is zero; a projection needs a nonzero direction"
        )
    steering = vector.steering(value, positions=where)
    hooks = steering.hooks(model, check_model=check_model)  # checks before generating
    prompt_ids, new_ids = _prompt_and_new(
        model, prompt, chat, new_tokens, steering=steering, stop_at_eos=stop_at_eos, check_model=False
    )
    ids = prompt_ids + new_ids
    base_logits, base_act = _forward(model, ids, hook, [])
    steered_logits, steered_act = _forward(model, ids, hook, hooks)
    unit = (direction / norm).to(base_act.device)
    return TokenView(
        tokens=_decode(model, ids),
        token_ids=tuple(ids),
        generated=tuple(i >= len(prompt_ids) for i in range(len(ids))),
        projection=tuple((base_act.float() @ unit).tolist()),
        steered_projection=tuple((steered_act.float() @ unit).tolist()),
        kl=tuple(next_token_kl(base_logits, steered_logits).tolist()),
        hook_name=hook,
        multiplier=value,
        min_token_index=start,
        direction_norm=norm,
        vector_note=vector.metadata.note,
        model_name=model.cfg.model_name or "",
    )


def _token_ids(model: HookedTransformer, tokens: Any) -> list[int]:
    if isinstance(tokens, Tensor):
        if tokens.is_floating_point() or tokens.dtype == torch.bool or tokens.squeeze(0).ndim != 1:
            raise TypeError(f"tokens must be a 1-D integer tensor, got {tokens.dtype} {tuple(tokens.shape)}")
        tokens = tokens.squeeze(0).tolist()
    ids = list(tokens)
    if not ids:
        raise ValueError("tokens is empty; give at least one token id")
    d_vocab = model.cfg.d_vocab
    bad = [t for t in ids if not is_int(t) or not 0 <= t < d_vocab]
    if bad:
        raise ValueError(
            f"token ids must be ints in 0..{d_vocab - 1} (model.cfg.d_vocab={d_vocab}), got {bad[:3]}"
        )
    if len(ids) > model.cfg.n_ctx:
        raise ValueError(
            f"{len(ids)} tokens are more than the model's context (model.cfg.n_ctx={model.cfg.n_ctx})"
        )
    return [int(t) for t in ids]


def feature_token_view(
    model: HookedTransformer,
    dictionary: Any,
    features: Any,
    prompt: Any,
    steering: Steering | None = None,
    *,
    max_new_tokens: int = 0,
    chat: bool = False,
    check_model: bool = True,
) -> FeatureTokenView:
    """Per token: the activations of a few SAE features at the SAE's hook, optionally under steering.

    Args:
        model: A ``HookedTransformer`` with a tokenizer.
        dictionary: A :class:`~tlsteer.dictionary.FeatureDictionary` that reads ``model``'s residual
            (a sae-lens SAE adapted by ``tlsteer.sae.adapter.as_feature_dictionary(sae)``, say).
        features: A feature id or a list of distinct ids in ``0..width-1``.
        prompt: A text; or token ids (a list or a 1-D tensor); or a :class:`TokenView`, whose
            tokens and generated flags are reused.
        steering: A :class:`~tlsteer.Steering` (a vector's, or feature edits), acting at every
            position or from an index on; ``None``: unsteered.
        max_new_tokens: With a text prompt, greedy tokens to generate under the steering first.
        chat: Format a text prompt as a user turn of the model's chat template.
        check_model: Refuse a steering made for another model.

    The activations are read after any steering at the dictionary's own hook (the edited residual).

    Example:
        >>> view = feature_token_view(model, as_feature_dictionary(sae), [12, 40], "I love")  # doctest: +SKIP
        >>> view.to_html()  # doctest: +SKIP
    """
    dictionary = check_feature_dictionary(dictionary, model)
    hook = dictionary.hook_name
    ids_f = check_feature_ids(features, dictionary.width)
    new_tokens = _check_new_tokens(max_new_tokens)
    chat = _check_flag("chat", chat)
    steering = as_steering(steering)
    if steering.prefix:
        raise ValueError(f"the feature view reads the prompt as given; {steering!r} has a prompt prefix")
    start = _view_positions(steering.positions).min_index
    hooks = steering.hooks(model, check_model=check_model)
    if isinstance(prompt, TokenView):
        ids, n_prompt = list(prompt.token_ids), prompt.n_prompt
    elif isinstance(prompt, str):
        prompt_ids, new_ids = _prompt_and_new(
            model, _check_prompt(prompt), chat, new_tokens, steering=steering, check_model=False
        )
        ids, n_prompt = prompt_ids + new_ids, len(prompt_ids)
    elif isinstance(prompt, (Tensor, Sequence)) and not isinstance(prompt, bytes):
        ids = _token_ids(model, prompt)
        n_prompt = len(ids)
    else:
        raise TypeError(f"prompt must be a string, token ids or a TokenView, got {type(prompt).__name__}")
    if new_tokens and not isinstance(prompt, str):
        raise ValueError("max_new_tokens > 0 needs a text prompt; with token ids or a TokenView pass 0")
    index = torch.tensor(ids_f, dtype=torch.long)

    def encoded(act: Tensor) -> tuple[tuple[float, ...], ...]:
        with torch.no_grad():
            codes = dictionary.encode(act)
            feats = codes[:, index.to(codes.device)]
        return tuple(tuple(row) for row in feats.float().T.tolist())

    logits, act = _forward(model, ids, hook, hooks)
    base, kl = None, None
    if hooks:
        base_logits, base_act = _forward(model, ids, hook, [])
        base, kl = encoded(base_act), tuple(next_token_kl(base_logits, logits).tolist())
    return FeatureTokenView(
        tokens=_decode(model, ids),
        token_ids=tuple(ids),
        generated=tuple(i >= n_prompt for i in range(len(ids))),
        features=tuple(ids_f),
        activations=encoded(act),
        unsteered_activations=base,
        kl=kl,
        hook_name=hook,
        steering="" if steering.is_unsteered else repr(steering),
        min_token_index=start,
        dictionary_fingerprint=fingerprint(dictionary),
    )
