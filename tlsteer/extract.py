"""Reading activations of prompts and of contrast data: thin entry points over the reading engine.

:func:`read_activations` reads one activation per prompt at each requested hook;
:func:`extract_activations` does it for the positive and negative sides of contrast data and
returns a :class:`~tlsteer.contrast.ContrastActivations`. Both plan with
:func:`tlsteer.reading.plan_reads` and read with :func:`tlsteer.reading.read_all` (left-padded
batches sorted by length, or prefix sharing for pairs), so a batched read equals a one-by-one read.
"""

from __future__ import annotations

from collections.abc import Sequence

from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from tlsteer._types import (
    check_batch_size,
    hook_name,
    parse_hook_name,
    resolve_layers,
    validate_hook_name,
    validate_hook_point,
)
from tlsteer.contrast import ContrastActivations
from tlsteer.data import ContrastPair, ContrastSet, as_contrast_data
from tlsteer.read import Read, as_read
from tlsteer.reading import as_contrast, plan_reads, read_all

__all__ = ["extract_activations", "read_activations"]


def read_activations(
    model: HookedTransformer,
    prompts: Sequence[str],
    hooks: Sequence[str],
    *,
    read: Read | None = None,
    batch_size: int = 8,
    show_progress: bool = False,
    desc: str = "reading activations",
) -> dict[str, Float[Tensor, "n d_model"]]:
    """One activation per prompt at each hook: at a position, or the mean over a span.

    Args:
        model: A ``HookedTransformer`` with a tokenizer.
        prompts: Formatted prompt strings (tokenized with :func:`tlsteer.data.tokenize`).
        hooks: Full hook names such as ``"blocks.10.hook_resid_post"``.
        read: Where to read (default :meth:`Read.last <tlsteer.Read.last>`);
            :meth:`Read.mean <tlsteer.Read.mean>` averages over a span of tokens.
        batch_size: Prompts per forward pass.
        show_progress: Show a tqdm progress bar.
        desc: The progress bar's label.

    Returns:
        ``{hook: [len(prompts), d_model]}`` in the order of ``prompts``, float32 on the CPU.
    """
    batch_size = check_batch_size(batch_size)
    read = as_read(read, Read.last())
    if isinstance(prompts, str) or not prompts:
        raise ValueError(f"no prompts to read; give a non-empty list of strings, got {prompts!r}")
    for name in hooks:
        validate_hook_name(model, name)
        parse_hook_name(name)
    plan = plan_reads(model, list(prompts), read)
    return read_all(model, plan, hooks, batch_size=batch_size, show_progress=show_progress, desc=desc)


def extract_activations(
    model: HookedTransformer,
    samples: Sequence[ContrastPair | tuple[str, str]] | ContrastSet,
    layers: int | Sequence[int] | None = None,
    *,
    hook: str = "resid_post",
    read: Read | None = None,
    batch_size: int = 8,
    show_progress: bool = False,
    share_prefix: bool = True,
) -> ContrastActivations:
    """Activations of the positive and negative prompts of contrast data.

    Args:
        model: A ``HookedTransformer`` with a tokenizer.
        samples: Contrast pairs, ``(positive, negative)`` tuples, or a :class:`ContrastSet`.
        layers: Layer indices (negative counts from the end); ``None`` means all layers.
        hook: The hook point inside each block: ``resid_post`` (default), ``resid_pre``,
            ``resid_mid``, ``attn_out`` or ``mlp_out``.
        read: Where to read (default :meth:`Read.answer <tlsteer.Read.answer>`: a pair's own read
            position, the answer letter of a CAA item, else the last token).
        batch_size: Rows per forward over full-length prompts (with ``share_prefix``, the
            prefixes of ``batch_size`` pairs; their short suffixes run after in one forward).
        show_progress: Show a tqdm progress bar.
        share_prefix: For pairs, run each pair's common prefix once (up to where its first read
            span begins) and only the differing suffixes after it (:mod:`tlsteer.prefix`);
            ``False`` reads every prompt in full. Both give the same activations up to float
            error. A ContrastSet is always read in full.

    Returns:
        A :class:`~tlsteer.contrast.ContrastActivations` (float32, CPU), paired for pairs.

    Example:
        >>> acts = extract_activations(model, [("I love it", "I hate it")], layers=[3])  # doctest: +SKIP
        >>> acts.positive["blocks.3.hook_resid_post"].shape  # doctest: +SKIP
        torch.Size([1, 576])
    """
    data = as_contrast_data(samples)
    read = as_read(read, Read.answer())
    validate_hook_point(hook)
    hooks = [hook_name(layer, hook) for layer in resolve_layers(model, layers)]
    batch_size = check_batch_size(batch_size)
    plan = plan_reads(model, data, read)  # positives first, then negatives, with their spans
    rows = read_all(
        model,
        plan,
        hooks,
        batch_size=batch_size,
        share_prefix=share_prefix,
        show_progress=show_progress,
        desc="set" if isinstance(data, ContrastSet) else "pairs",
    )
    return as_contrast(plan, rows)
