"""Check tlsteer's guarantees on your own model: :func:`check_invariants`.

tlsteer's test suite proves its KV-cache, batching and hook-removal guarantees on the models it
tests. A new architecture (another positional scheme, another attention implementation, a model
with its own hooks) deserves the same check, run by the user on the model, the vector and the
prompts at hand. Each check compares two ways of computing the same logits and reports the largest
absolute difference against a tolerance:

``kv_cache``
    Every step's logits of greedy steered generation with the KV cache (one prompt at a time)
    against one uncached forward pass over the prompt and the generated tokens, steered at the same
    absolute positions.
``batch``
    The same prompts generated together in one left-padded batch against one at a time.
``multiplier_zero``
    A vector at multiplier 0 against no steering at all (vectors only; an edit has no multiplier).
``hooks_normal_exit``, ``hooks_exception``, ``hooks_generation_error``
    Hooks left on the model after a steering block exits normally, after the block raises, and
    after an error raised inside a steered generation; each also compares the model's unsteered
    logits afterwards with those before (a leftover hook changes them).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from tlsteer._types import is_int
from tlsteer.data import chat_prompt
from tlsteer.decode import generate_tokens
from tlsteer.hooks import DirectionEdit
from tlsteer.positions import Positions
from tlsteer.steering import Steering, as_steering
from tlsteer.tokens import tokenize_prompts

__all__ = ["InvariantCheck", "InvariantReport", "check_invariants"]

DEFAULT_PROMPTS = (
    "The weather today is",
    "Here is a short story about a dragon who learned to cook:",
    "Q: What is the capital of France?\nA:",
    "I think that",
)


@dataclass(frozen=True)
class InvariantCheck:
    """One check: its name, the largest absolute difference, the tolerance and the verdict.

    ``passed`` is ``None`` for a check that does not apply (``detail`` says why).
    """

    name: str
    max_abs_diff: float | None
    tolerance: float | None
    passed: bool | None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "max_abs_diff": self.max_abs_diff,
            "tolerance": self.tolerance,
            "passed": self.passed,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class InvariantReport:
    """What :func:`check_invariants` returns; ``str(report)`` is a table, ``passed`` the verdict."""

    checks: tuple[InvariantCheck, ...]
    model_name: str
    n_prompts: int
    max_new_tokens: int

    @property
    def passed(self) -> bool:
        """Every check that applies passed."""
        return all(c.passed is not False for c in self.checks)

    def __getitem__(self, name: str) -> InvariantCheck:
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(f"no check {name!r}; checks: {[c.name for c in self.checks]}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "n_prompts": self.n_prompts,
            "max_new_tokens": self.max_new_tokens,
            "passed": self.passed,
            "checks": [c.to_dict() for c in self.checks],
        }

    def __str__(self) -> str:
        head = (
            f"tlsteer invariants on {self.model_name or 'model'} "
            f"({self.n_prompts} prompts, {self.max_new_tokens} new tokens)"
        )
        rows = [head, f"{'check':<24} {'max |diff|':>11} {'tolerance':>10}  result  detail"]
        for c in self.checks:
            diff = "-" if c.max_abs_diff is None else f"{c.max_abs_diff:.3g}"
            tol = "-" if c.tolerance is None else f"{c.tolerance:.3g}"
            verdict = {True: "pass", False: "FAIL", None: "n/a"}[c.passed]
            rows.append(f"{c.name:<24} {diff:>11} {tol:>10}  {verdict:<6}  {c.detail}")
        rows.append("all passed" if self.passed else "SOME CHECKS FAILED")
        return "\n".join(rows)


class _ProbeError(RuntimeError):
    """Raised on purpose inside a steering block or a generation to test hook removal."""


@dataclass(eq=False)
class _RaiseOnCall:
    """A hook that raises on its ``at``-th call (in the middle of a cached generation)."""

    at: int
    calls: int = 0

    def __call__(self, act: Tensor, hook: Any) -> None:  # noqa: ARG002
        self.calls += 1
        if self.calls >= self.at:
            raise _ProbeError("raised on purpose inside a steered generation")


def _hook_count(model: HookedTransformer) -> int:
    """Hooks on every module of ``model`` (PyTorch's registries, where TransformerLens's end up)."""
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
    )


def _default_tolerance(model: HookedTransformer) -> float:
    return 1e-3 if model.cfg.dtype == torch.float32 else 5e-2


def _at_zero(steering: Steering) -> Steering | None:
    """The same steering with every direction times 0, or ``None`` when an edit is not a direction."""
    if not all(isinstance(edit, DirectionEdit) for _, edit in steering.edits):
        return None
    zeroed = tuple(
        (name, DirectionEdit(edit.direction * 0.0, edit.operator))
        for name, edit in steering.edits
        if isinstance(edit, DirectionEdit)
    )
    return Steering(zeroed, steering.positions, steering.prefix, steering.model_name)


def _first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _compare_runs(a: Any, b: Any, i: int) -> tuple[float, str]:
    """Max |diff| of row ``i``'s step logits up to and including the first differing token."""
    first = _first_difference(a.new_tokens[i], b.new_tokens[i])
    n = len(a.new_tokens[i]) if first is None else first + 1
    n = min(n, len(a.step_logits[i]), len(b.step_logits[i]))
    diff = float((a.step_logits[i][:n] - b.step_logits[i][:n]).abs().max())
    note = "" if first is None else f"prompt {i}: tokens differ from step {first}"
    return diff, note


def _verdict(name: str, diff: float, tol: float, notes: list[str], extra: str = "") -> InvariantCheck:
    passed = math.isfinite(diff) and diff <= tol
    detail = "; ".join([n for n in [extra, *notes] if n])
    return InvariantCheck(name, diff, tol, passed, detail)


def _uncached_logits(
    model: HookedTransformer, steering: Steering, prompt: list[int], new: Sequence[int]
) -> Tensor:
    """Logits that chose each new token, from one forward pass without a cache."""
    tokens = torch.tensor([prompt + list(new[:-1])], device=model.cfg.device)
    if steering.positions.mode == "last":  # the prompt's last token(s) and every generated one
        steering = steering.at(Positions.start_at(len(prompt) - steering.positions.back))
    hooks = steering.hooks(model, check_model=False)
    # TransformerLens types fwd_hooks as an invariant list[tuple[str | Callable, Callable]]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):  # pyright: ignore[reportArgumentType]
        logits = model(tokens)[0]
    return logits[len(prompt) - 1 :].float().cpu()


def _kv_check(model, steering, ids, single, tol) -> InvariantCheck:
    diff, notes = 0.0, []
    for i, prompt in enumerate(ids):
        ref = _uncached_logits(model, steering, prompt, single.new_tokens[i])
        got = single.step_logits[i]
        diff = max(diff, float((got - ref[: len(got)]).abs().max()))
        chosen = ref[: len(got)].argmax(-1).tolist()
        first = _first_difference(chosen, list(single.new_tokens[i]))
        if first is not None:
            notes.append(f"prompt {i}: uncached argmax differs at step {first}")
    return _verdict("kv_cache", diff, tol, notes, "cached generation vs one uncached forward")


def _hooks_checks(model, steering, ids, texts, tol) -> list[InvariantCheck]:
    first = torch.tensor([ids[0]], device=model.cfg.device)
    with torch.no_grad():
        clean = model(first).float()
    before = _hook_count(model)

    def after(name: str, detail: str) -> InvariantCheck:
        with torch.no_grad():
            diff = float((model(first).float() - clean).abs().max())
        left = _hook_count(model) - before
        passed = left == 0 and diff <= tol
        return InvariantCheck(name, diff, tol, passed, f"{detail}; {left} hooks left (unsteered logits diff)")

    with torch.no_grad(), steering.apply(model, check_model=False):
        model(first)
    results = [after("hooks_normal_exit", "steering block exited normally")]
    try:
        with torch.no_grad(), steering.apply(model, check_model=False):
            model(first)
            raise _ProbeError("raised on purpose inside a steering block")
    except _ProbeError:
        pass
    results.append(after("hooks_exception", "steering block raised"))
    probe = _RaiseOnCall(at=3)  # the prompt pass, then the second cached step
    raised = False
    try:
        with model.hooks(fwd_hooks=[("hook_embed", probe)]):
            generate_tokens(
                model, [texts[0]], steering, max_new_tokens=4, stop_at_eos=False, check_model=False
            )
    except _ProbeError:
        raised = True
    check = after("hooks_generation_error", "error raised inside a steered generation")
    if not raised:
        check = InvariantCheck(check.name, check.max_abs_diff, tol, False, "the probe error was not raised")
    results.append(check)
    return results


def check_invariants(
    model: HookedTransformer,
    steering: Steering,
    prompts: Sequence[str] = DEFAULT_PROMPTS,
    *,
    max_new_tokens: int = 8,
    chat: bool = False,
    tolerance: float | None = None,
    check_model: bool = True,
) -> InvariantReport:
    """Check tlsteer's guarantees on ``model`` with ``steering`` and ``prompts`` (see the module doc).

    Args:
        model: Any ``HookedTransformer`` with a tokenizer.
        steering: A :class:`~tlsteer.Steering` with edits (``vec.steering(4.0, positions=...)``,
            or a feature edit); its positions are the ones checked. A prompt prefix goes before
            every prompt.
        prompts: A few prompts, best of different lengths (the batch check then pads).
        max_new_tokens: Greedy steps per prompt.
        chat: Put each prompt in the model's chat template first.
        tolerance: Largest absolute logit difference that passes (default 1e-3 for float32
            models, 5e-2 otherwise). The hook checks also need zero hooks left.
        check_model: Refuse a steering made for another model (``False`` checks anyway).

    Returns:
        An :class:`InvariantReport`; ``print(report)`` shows the table, ``report.passed`` the verdict.
        The multiplier-0 check runs when every edit is a direction (else it reports n/a).

    Example:
        >>> steering = vec.steering(4.0, positions=tlsteer.Positions.last())  # doctest: +SKIP
        >>> report = tlsteer.check_invariants(model, steering, ["Hello", "The cat"])  # doctest: +SKIP
        >>> print(report)  # doctest: +SKIP
    """
    if not isinstance(model, HookedTransformer):
        raise TypeError(f"model must be a HookedTransformer, got {type(model).__name__}")
    steering = as_steering(steering)
    if not steering.edits:
        raise ValueError(
            f"{steering!r} has no edits, so there are no hooks to check; give a vector's steering "
            "(vec.steering(4.0)) or a feature edit"
        )
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
        raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    if not is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if not isinstance(chat, bool):
        raise TypeError(f"chat must be True or False, got {chat!r}")
    if tolerance is None:
        tol = _default_tolerance(model)
    elif (
        isinstance(tolerance, bool)
        or not isinstance(tolerance, numbers.Real)
        or not math.isfinite(tolerance)
        or tolerance < 0
    ):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    else:
        tol = float(tolerance)
    steering.check(model, check_model=check_model)  # validate everything up front
    texts = [steering.instruct(p) for p in prompts]
    texts = [chat_prompt(model, t) if chat else t for t in texts]
    steering = steering.without_prefix()
    ids = tokenize_prompts(model, texts, room=max_new_tokens)
    run = {"max_new_tokens": max_new_tokens, "keep_logits": True, "stop_at_eos": False, "check_model": False}

    single = generate_tokens(model, texts, steering, batch_size=1, **run)
    checks = [_kv_check(model, steering, ids, single, tol)]

    batched = generate_tokens(model, texts, steering, batch_size=len(texts), **run)
    diff, notes = 0.0, []
    for i in range(len(texts)):
        d, note = _compare_runs(batched, single, i)
        diff, notes = max(diff, d), [*notes, note] if note else notes
    widths = sorted({len(i) for i in ids})
    pad = (
        f"lengths {widths[0]}..{widths[-1]} tokens"
        if len(widths) > 1
        else "all prompts one length: no padding"
    )
    checks.append(_verdict("batch", diff, tol, notes, f"one left-padded batch vs one at a time ({pad})"))

    zeroed = _at_zero(steering)
    if zeroed is not None:
        zero = generate_tokens(model, texts, zeroed, batch_size=len(texts), **run)
        plain = generate_tokens(model, texts, batch_size=len(texts), **run)
        diff, notes = 0.0, []
        for i in range(len(texts)):
            d, note = _compare_runs(zero, plain, i)
            diff, notes = max(diff, d), [*notes, note] if note else notes
        checks.append(_verdict("multiplier_zero", diff, tol, notes, "multiplier 0 vs unsteered"))
    else:
        checks.append(InvariantCheck("multiplier_zero", None, None, None, "an edit has no multiplier"))

    checks.extend(_hooks_checks(model, steering, ids, texts, tol))
    return InvariantReport(tuple(checks), str(model.cfg.model_name), len(texts), int(max_new_tokens))
