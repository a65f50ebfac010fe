"""Open-ended generation, steered beside unsteered, with the settings recorded.

:func:`compare_generations` generates a continuation of each prompt at each multiplier (0 is the
unsteered baseline) with :func:`tlsteer.generate_tokens`, steering from the last prompt token
onward, with a fixed seed per generation (its own ``torch.Generator``, never the global RNG) so
sampled runs can be repeated. :class:`GenerationReport` prints as plain text side by side, or
writes HTML and JSON.
"""

from __future__ import annotations

import dataclasses
import html
import json
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field

from transformer_lens import HookedTransformer

from tlsteer.decode import generate_tokens
from tlsteer.operators import check_multiplier
from tlsteer.positions import Positions
from tlsteer.vector import SteeringVector

__all__ = ["Generation", "GenerationReport", "GenerationSettings", "compare_generations"]


@dataclass(frozen=True)
class GenerationSettings:
    """How every continuation of a report was generated."""

    max_new_tokens: int = 40
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float | None = None
    seed: int = 0
    chat: bool = True
    stop_at_eos: bool = True
    top_k: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


@dataclass(frozen=True)
class Generation:
    prompt: str
    multiplier: float
    text: str
    prompt_tokens: tuple[int, ...] = field(repr=False)
    new_tokens: tuple[int, ...] = field(repr=False)


@dataclass(frozen=True)
class GenerationReport:
    """Continuations per prompt and multiplier, and the settings and vector that made them."""

    generations: tuple[Generation, ...]
    multipliers: tuple[float, ...]
    settings: GenerationSettings
    vector_hooks: tuple[str, ...]

    def by_prompt(self) -> dict[str, list[Generation]]:
        out: dict[str, list[Generation]] = {}
        for g in self.generations:
            out.setdefault(g.prompt, []).append(g)
        return out

    def to_text(self, width: int = 36) -> str:
        """Side-by-side columns, one per multiplier."""
        lines = [f"settings: {dataclasses.asdict(self.settings)}; hooks: {list(self.vector_hooks)}"]
        for prompt, gens in self.by_prompt().items():
            lines += ["", f"PROMPT: {prompt}"]
            cols = [textwrap.wrap(g.text.replace("\n", " "), width) or [""] for g in gens]
            lines.append("  ".join(f"{'x' + format(g.multiplier, 'g'):<{width}}" for g in gens))
            lines.append("  ".join("-" * width for _ in gens))
            for i in range(max(len(c) for c in cols)):
                lines.append("  ".join(f"{(c[i] if i < len(c) else ''):<{width}}" for c in cols))
        return "\n".join(lines)

    def to_html(self) -> str:
        """A table per prompt, one column per multiplier."""
        head = "".join(f"<th>x{m:g}</th>" for m in self.multipliers)
        parts = [
            "<html><body>",
            f"<p>settings: {html.escape(str(dataclasses.asdict(self.settings)))}; hooks: "
            f"{html.escape(str(list(self.vector_hooks)))}</p>",
        ]
        for prompt, gens in self.by_prompt().items():
            cells = "".join(f"<td>{html.escape(g.text)}</td>" for g in gens)
            parts.append(
                f"<h3>{html.escape(prompt)}</h3><table border='1'><tr>{head}</tr><tr>{cells}</tr></table>"
            )
        parts.append("</body></html>")
        return "\n".join(parts)

    def to_json(self) -> str:
        return json.dumps(
            {
                "settings": dataclasses.asdict(self.settings),
                "vector_hooks": list(self.vector_hooks),
                "multipliers": list(self.multipliers),
                "generations": [
                    {"prompt": g.prompt, "multiplier": g.multiplier, "text": g.text} for g in self.generations
                ],
            },
            indent=1,
        )


def compare_generations(
    model: HookedTransformer,
    prompts: Sequence[str],
    vector: SteeringVector,
    multipliers: Sequence[float | int] = (-4.0, 0.0, 4.0),
    settings: GenerationSettings | None = None,
    *,
    positions: Positions | None = None,
    batch_size: int = 16,
    check_model: bool = True,
) -> GenerationReport:
    """Generate each prompt at each multiplier, steering from the last prompt token onward.

    Generation runs through :func:`tlsteer.generate_tokens` (batched, KV-cached), one call per
    multiplier. Steering starts at each prompt's own last token (``positions``, default
    ``Positions.last()``) and stays on every generated token. Multiplier 0 runs with no hooks at
    all. Sampling draws from a ``torch.Generator`` seeded with ``settings.seed`` for every
    continuation, so each continuation can be repeated on its own; the global torch RNG is left
    untouched.

    Args:
        model: A ``HookedTransformer`` with a tokenizer.
        prompts: User messages (formatted with the chat template when ``settings.chat``) or raw
            text.
        vector: The steering vector.
        multipliers: One column per multiplier; 0 is the unsteered baseline.
        settings: Generation settings.
        positions: Where to steer (default: the last prompt token and every generated one).
        batch_size: Rows per batch of :func:`tlsteer.generate_tokens`.
        check_model: Refuse a vector made for another model.

    Example:
        >>> report = compare_generations(model, ["Tell me about it."], vec, [-8, 0, 8])  # doctest: +SKIP
        >>> print(report.to_text())  # doctest: +SKIP
    """
    settings = settings or GenerationSettings()
    if isinstance(prompts, str) or not prompts:
        raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    mults = [check_multiplier(m) for m in multipliers]
    if not mults:
        raise ValueError("multipliers is empty; give at least one (0 is the unsteered baseline)")
    where = Positions.last() if positions is None else positions
    vector.steering(1.0, positions=where).check(model, check_model=check_model)  # before generating
    made: dict[tuple[int, int], Generation] = {}
    for j, m in enumerate(mults):
        out = generate_tokens(
            model,
            list(prompts),
            vector.steering(m, positions=where) if m != 0 else None,
            max_new_tokens=settings.max_new_tokens,
            do_sample=settings.do_sample,
            temperature=settings.temperature,
            top_k=settings.top_k,
            top_p=settings.top_p,
            seed=settings.seed,
            chat=settings.chat,
            check_model=check_model,
            stop_at_eos=settings.stop_at_eos,
            batch_size=batch_size,
        )
        for i, prompt in enumerate(prompts):
            made[i, j] = Generation(
                prompt=prompt,
                multiplier=m,
                text=out.texts[i],
                prompt_tokens=out.prompt_tokens[i],
                new_tokens=out.new_tokens[i],
            )
    gens = tuple(made[i, j] for i in range(len(prompts)) for j in range(len(mults)))
    return GenerationReport(gens, tuple(mults), settings, tuple(vector.hooks))
