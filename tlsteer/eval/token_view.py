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

:func:`feature_token_view` is the same for SAE features: their activations per token, from the
SAE's encoding of the residual at its hook, optionally under steering (then with the KL and the
unsteered activations too). Both return frozen values with ``to_html`` (a coloured token strip; see
:mod:`tlsteer.eval.token_view_render`), ``_repr_html_`` for notebooks, ``plot`` and ``to_dict``.
"""

from __future__ import annotations

import dataclasses
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
from tlsteer.eval.token_view_render import Row, view_figure, view_html
from tlsteer.hooks import edit_hooks, vector_edits
from tlsteer.operators import check_multiplier
from tlsteer.positions import Positions
from tlsteer.tokens import tokenize_prompts
from tlsteer.vector import SteeringVector

__all__ = ["FeatureTokenView", "TokenView", "feature_token_view", "next_token_kl", "token_view"]


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
    sae_fingerprint: str = ""

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


def _prompt_and_new(
    model: HookedTransformer, prompt: str, chat: bool, max_new_tokens: int, **steer: Any
) -> tuple[list[int], list[int]]:
    if max_new_tokens == 0:
        text = chat_prompt(model, prompt) if chat else prompt
        return tokenize_prompts(model, [text])[0], []
    out = generate_tokens(model, [prompt], max_new_tokens=max_new_tokens, chat=chat, **steer)
    return list(out.prompt_tokens[0]), list(out.new_tokens[0])


def _decode(model: HookedTransformer, ids: list[int]) -> tuple[str, ...]:
    return tuple(model.tokenizer.decode([i]) for i in ids)


def token_view(
    model: HookedTransformer,
    vector: Any,
    prompt: Any,
    multiplier: Any,
    max_new_tokens: Any = 30,
    chat: Any = False,
    min_token_index: Any = 0,
    layer: Any = None,
    stop_at_eos: Any = True,
) -> TokenView:
    """Per token of a prompt and its steered greedy continuation: projection on the vector and KL.

    Args:
        model: A ``HookedTransformer`` with a tokenizer.
        vector: A :class:`~tlsteer.SteeringVector`; all of it steers, ``layer`` picks where to read.
        prompt: The text (with ``chat=True``, a user message put in the chat template).
        multiplier: The steering strength (finite; 0 gives the unsteered continuation, KL 0).
        max_new_tokens: Greedy tokens to generate under steering (0: the prompt alone).
        chat: Format the prompt as a user turn of the model's chat template.
        min_token_index: Steer from this absolute position on (0 is the first prompt token), in
            generation and in the steered forward alike.
        layer: The layer (or the vector's hook name) whose residual is projected; default the
            vector's first hook.
        stop_at_eos: Stop the continuation at the end-of-sequence token (kept).

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
    start = Positions.make(min_token_index).min_index
    hook = _pick_hook(vector, layer)
    direction = vector.directions[hook].detach().float()
    norm = float(direction.norm())
    if norm == 0:
        raise ValueError(
            f"the vector's direction at {hook!r} is zero; a projection needs a nonzero direction"
        )
    pairs = [(vector, value)]
    hooks = edit_hooks(model, vector_edits(model, pairs), min_token_index=start)  # checks before generating
    prompt_ids, new_ids = _prompt_and_new(
        model, prompt, chat, new_tokens, vectors=pairs, min_token_index=start, stop_at_eos=stop_at_eos
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


def _describe(vectors: Any, edits: Any) -> str:
    parts = []
    for vector, multiplier in vectors:
        name = getattr(getattr(vector, "metadata", None), "note", "") or "vector at " + ", ".join(
            getattr(vector, "hooks", None) or list(vector)
        )
        parts.append(f"{name} x {float(multiplier):.4g}")
    parts += [f"edit at {name}" for name, _ in edits]
    return "; ".join(parts)


def feature_token_view(
    model: HookedTransformer,
    sae: Any,
    features: Any,
    prompt: Any,
    vectors: Any = (),
    edits: Any = (),
    max_new_tokens: Any = 0,
    chat: Any = False,
    min_token_index: Any = 0,
    hook_name: Any = None,
) -> FeatureTokenView:
    """Per token: the activations of a few SAE features at the SAE's hook, optionally under steering.

    Args:
        model: A ``HookedTransformer`` with a tokenizer.
        sae: A sae-lens SAE whose ``d_in`` is ``model.cfg.d_model`` (needs the ``sae`` extra).
        features: A feature id or a list of distinct ids in ``0..d_sae-1``.
        prompt: A text; or token ids (a list or a 1-D tensor); or a :class:`TokenView`, whose
            tokens and generated flags are reused.
        vectors: ``(vector, multiplier)`` pairs to steer with, as for :func:`tlsteer.apply_steering`.
        edits: ``(hook_name, edit)`` pairs to steer with (``tlsteer.sae.feature_edit``, say).
        max_new_tokens: With a text prompt, greedy tokens to generate under the steering first.
        chat: Format a text prompt as a user turn of the model's chat template.
        min_token_index: Steer from this absolute position on.
        hook_name: Where the SAE reads, if its metadata does not say.

    The activations are read after any steering at the SAE's own hook (the edited residual).

    Example:
        >>> view = feature_token_view(model, sae, [12, 40], "I love this film")  # doctest: +SKIP
        >>> view.to_html()  # doctest: +SKIP
    """
    from tlsteer.sae.adapter import check_feature_ids, check_sae, sae_dims, sae_fingerprint

    hook = check_sae(model, sae, hook_name)
    ids_f = check_feature_ids(features, sae_dims(sae)[1])
    new_tokens = _check_new_tokens(max_new_tokens)
    chat = _check_flag("chat", chat)
    start = Positions.make(min_token_index).min_index
    vectors, edits = list(vectors), list(edits)
    all_edits = edits + (vector_edits(model, vectors) if vectors else [])
    hooks = edit_hooks(model, all_edits, min_token_index=start) if all_edits else []
    if isinstance(prompt, TokenView):
        ids, n_prompt = list(prompt.token_ids), prompt.n_prompt
    elif isinstance(prompt, str):
        steer = {"vectors": vectors, "edits": edits, "min_token_index": start}
        prompt_ids, new_ids = _prompt_and_new(model, _check_prompt(prompt), chat, new_tokens, **steer)
        ids, n_prompt = prompt_ids + new_ids, len(prompt_ids)
    elif isinstance(prompt, (Tensor, Sequence)) and not isinstance(prompt, bytes):
        ids = _token_ids(model, prompt)
        n_prompt = len(ids)
    else:
        raise TypeError(f"prompt must be a string, token ids or a TokenView, got {type(prompt).__name__}")
    if new_tokens and not isinstance(prompt, str):
        raise ValueError("max_new_tokens > 0 needs a text prompt; with token ids or a TokenView pass 0")
    w_dec = sae.W_dec
    index = torch.tensor(ids_f, dtype=torch.long, device=w_dec.device)

    def encoded(act: Tensor) -> tuple[tuple[float, ...], ...]:
        with torch.no_grad():
            feats = sae.encode(act.to(device=w_dec.device, dtype=w_dec.dtype))[:, index]
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
        steering=_describe(vectors, edits),
        min_token_index=start,
        sae_fingerprint=sae_fingerprint(sae),
    )
