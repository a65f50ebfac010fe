"""Tokens: tokenizing prompts, padding batches, and resolving read positions.

One home for what every reader of the model needs before a forward pass: the model's tokenizer
and its special ids (:func:`model_tokenizer`, :func:`decode_tokens`, :func:`eos_token_id`,
:func:`pad_token_id`), :func:`tokenize` (the model's own tokenizer, no doubled BOS),
:func:`tokenize_prompts` (with the context-length check), :func:`left_pad` and :func:`right_pad`
(tokens and attention mask), and the read-position rules (:data:`ReadIndex`, :func:`read_indices`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import torch
from transformer_lens import HookedTransformer
from transformers import PreTrainedTokenizerBase

__all__ = [
    "ReadIndex",
    "check_pair_read_index",
    "decode_tokens",
    "eos_token_id",
    "left_pad",
    "model_tokenizer",
    "pad_token_id",
    "read_indices",
    "resolve_read_index",
    "right_pad",
    "tokenize",
    "tokenize_prompts",
]

ReadIndex = int | Sequence[int] | Callable[[str, list[int]], int]
"""Where to read: an int (negative counts from the end), one int per prompt or pair, or a
callable ``(prompt, token_ids) -> int``."""


def model_tokenizer(model: HookedTransformer) -> PreTrainedTokenizerBase:
    """The model's tokenizer; a model without one is refused with a ``ValueError``."""
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise ValueError("the model has no tokenizer; attach one to tokenize text prompts")
    return tokenizer


def decode_tokens(model: HookedTransformer, ids: list[int], skip_special_tokens: bool = False) -> str:
    """The text of one sequence of token ids, as the model's tokenizer decodes it."""
    text = model_tokenizer(model).decode(ids, skip_special_tokens=skip_special_tokens)
    # transformers types decode as str | list[str]: only a batch of sequences gives a list
    return cast(str, text)


# transformers serves special-token ids through __getattr__, which pyright types as the union of
# every branch there (str, lists, ...); a special token's id is an int, or None when it is unset.


def eos_token_id(model: HookedTransformer) -> int | None:
    """The tokenizer's end-of-sequence id (``None`` if it has none)."""
    return cast("int | None", model_tokenizer(model).eos_token_id)


def pad_token_id(model: HookedTransformer) -> int:
    """The id that fills the padding of a batch: the tokenizer's pad token, else 0 (it is masked)."""
    tokenizer = model.tokenizer
    pad_id = cast("int | None", tokenizer.pad_token_id) if tokenizer is not None else None
    return pad_id or 0


def tokenize(model: HookedTransformer, text: str) -> list[int]:
    """Token ids of ``text`` exactly as the model's tokenizer makes them.

    The tokenizer adds its own special tokens (if it adds any), except that no BOS is added to a
    text that already starts with the BOS string (a chat-formatted prompt, say).
    """
    tokenizer = model_tokenizer(model)
    bos = tokenizer.bos_token
    starts_with_bos = isinstance(bos, str) and bool(bos) and text.startswith(bos)
    add_special = not (starts_with_bos and model.cfg.tokenizer_prepends_bos)
    return list(tokenizer(text, add_special_tokens=add_special)["input_ids"])


def tokenize_prompts(model: HookedTransformer, prompts: Sequence[str], room: int = 0) -> list[list[int]]:
    """Token ids of each prompt; refuses empty prompts and prompts longer than the context.

    Args:
        model: A ``HookedTransformer`` with a tokenizer.
        prompts: Non-empty strings.
        room: Positions each prompt must leave free in the context (new tokens to generate).
    """
    if isinstance(prompts, str):
        raise TypeError(f"prompts must be a list of strings, not one string ({prompts[:40]!r})")
    token_ids = []
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt:
            raise ValueError(f"prompt {i} must be a non-empty string, got {prompt!r}")
        ids = tokenize(model, prompt)
        if not ids:
            raise ValueError(f"prompt {i} ({prompt!r}) tokenizes to no tokens")
        if len(ids) + room > model.cfg.n_ctx:
            extra = f" plus {room} new tokens" if room else ""
            raise ValueError(
                f"prompt {i} has {len(ids)} tokens{extra}, more than the model's context "
                f"(model.cfg.n_ctx={model.cfg.n_ctx})"
            )
        token_ids.append(ids)
    return token_ids


def _pad(
    model: HookedTransformer, token_ids: Sequence[list[int]], left: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in token_ids)
    tokens = torch.full((len(token_ids), width), pad_token_id(model), dtype=torch.long)
    mask = torch.zeros((len(token_ids), width), dtype=torch.long)
    for row, ids in enumerate(token_ids):
        cols = slice(width - len(ids), width) if left else slice(0, len(ids))
        tokens[row, cols] = torch.tensor(ids, dtype=torch.long)
        mask[row, cols] = 1
    device = model.cfg.device
    return tokens.to(device), mask.to(device)


def left_pad(model: HookedTransformer, token_ids: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into ``(tokens, attention_mask)`` on the model's device.

    TransformerLens shifts rotary and learned positions by the padding, so each row sees its own
    positions from 0; every prompt ends in the last column.
    """
    return _pad(model, token_ids, left=True)


def right_pad(model: HookedTransformer, token_ids: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists into ``(tokens, attention_mask)``: absolute positions are columns."""
    return _pad(model, token_ids, left=False)


def resolve_read_index(index: int, prompt_no: int, n_tokens: int) -> int:
    """``index`` (negative counts from the end) as a position in a prompt of ``n_tokens``."""
    if isinstance(index, bool) or not isinstance(index, int):
        raise TypeError(f"read index for prompt {prompt_no} must be an int, got {index!r}")
    if not -n_tokens <= index < n_tokens:
        raise IndexError(
            f"read index {index} is outside prompt {prompt_no} ({n_tokens} tokens; valid: "
            f"{-n_tokens}..{n_tokens - 1})"
        )
    return index % n_tokens


def read_indices(
    prompts: Sequence[str],
    token_ids: Sequence[list[int]],
    read_token_index: ReadIndex,
    overrides: Sequence[int | None] | None = None,
) -> list[int]:
    """The read position (from 0) of each prompt; ``overrides`` win where not ``None``."""
    if isinstance(read_token_index, Sequence) and not isinstance(read_token_index, str):
        if len(read_token_index) != len(prompts):
            raise ValueError(
                f"read_token_index has {len(read_token_index)} entries but there are "
                f"{len(prompts)} prompts; give one per prompt (or per pair)"
            )
    elif not (callable(read_token_index) or isinstance(read_token_index, int)) or isinstance(
        read_token_index, bool
    ):
        raise TypeError(
            f"read_token_index must be an int, a sequence of ints or a callable, got {read_token_index!r}"
        )
    out = []
    for i, (prompt, ids) in enumerate(zip(prompts, token_ids, strict=True)):
        override = overrides[i] if overrides is not None else None
        if override is not None:
            index = override
        elif callable(read_token_index):
            index = read_token_index(prompt, ids)
        elif isinstance(read_token_index, int):
            index = read_token_index
        else:
            index = read_token_index[i]
        out.append(resolve_read_index(index, i, len(ids)))
    return out


def check_pair_read_index(read_token_index: ReadIndex, n_pairs: int) -> None:
    """A per-pair list of read indices must have one entry per pair."""
    if isinstance(read_token_index, Sequence) and len(read_token_index) != n_pairs:
        raise ValueError(
            f"read_token_index has {len(read_token_index)} entries but there are "
            f"{n_pairs} pairs; give one per pair"
        )
