"""The steering methods that the feature-vs-CAA comparison puts side by side, all built from one contrast.

:class:`~tlsteer.experiments.contrasts.ContrastReps` holds the activations of the positive and the
negative examples at a feature dictionary's hook (one row per example: a CAA answer letter, a
class example's mean over its reply) and their codes under the dictionary (an SAE or any
:class:`~tlsteer.dictionary.FeatureDictionary`). :func:`build_methods` turns them into named
:class:`Method`\\ s, each of which maps a strength to a :class:`Steering` (vectors, edits, or a
prompt prefix):

- ``caa``: the raw difference of means (paired, or of class means);
- ``mean_centred``: the positive class mean minus the mean of all class means (class sets only);
- ``feature_full``: the feature-space difference of means, decoded through the dictionary's one
  decoding path (:meth:`FeatureVector.to_steering_vector <tlsteer.sae.FeatureVector.to_steering_vector>`);
- ``feature_top<k>``: the same after dropping first-token features and features denser than
  ``max_density`` on neutral text, keeping the ``k`` largest (one method per ``k``);
- ``feature_output``: of the ``n_candidates`` (40) largest positive filtered features, the
  ``k_output`` with the best output score (:func:`tlsteer.sae.selection.output_scores`), decoded.
  The score is the probability-mass variant (``definition="mass"``) on 4 prompts at strength 1.0,
  not the rank score of Arad et al. (2025). ``benchmarks/output_scores.py`` measured theirs
  (``definition="rank"``) on the embedded model on 16 prompts at the strength these methods are
  calibrated to (0.33 of the residual norm): at layer 6, 1 of 154 speaking-style candidates
  scores above 0.01 (the median is about 1e-6), at layer 12 2 of 151; no random live feature
  does. Their top 8 shares 3 or 4 features per class with the 8 this method picked at layer 6, and
  the feature ``single_feature`` picked ranks 3rd to 38th of 40 under their score. So on this
  model and SAE the candidates are not output features in their sense, at either layer, and this
  method cannot test their 2-3x gain;
- ``single_feature``: the decoder row of the best of those;
- ``clamp``: those features clamped to ``strength`` times their typical activation (their mean
  when active on neutral text), and the ``k_output`` largest negative filtered features clamped
  to 0, with the reconstruction error kept (:func:`tlsteer.sae.steering.feature_edit`);
- ``caa_proj_top<k>``: the CAA vector projected onto the span of the same ``k`` decoder rows as
  ``feature_top<k>`` (least squares); it separates "the SAE's basis" from "sparsity";
- ``caa_encoded``: the CAA vector encoded by the dictionary and decoded. This is not a feature
  method: an encoder reads activations, not differences of activations (Mayne et al., 2024), so a
  difference vector fed to it is off its distribution and comes back as a nearly unrelated
  direction (cosine -0.25 to 0.40 with CAA in the committed runs): read it as a second random
  control, not as "what the SAE keeps of CAA" (``feature_full`` is that);
- ``random``: seeded random directions (a control); with ``n_random`` > 1, one method per draw
  (``random.0``, ``random.1``, ...), which a task spreads over its units (a distribution of
  directions, not one draw);
- ``prompting``: an instruction before the prompt (no strength; the reference to beat).
- ``codes_add`` (with a :class:`~tlsteer.codebook.Codebook` and the contrast's code reps): the
  ``n_codes`` codes whose firing rate rises most from negative to positive, their rows
  (``vectors / k``) weighted by that rise, added as one direction (the activation, the codebook's
  error term included, kept: comparable with feature steering);
- ``codes_bottleneck``: the paper's way: the codebook spliced in at its hook with the ``n_forced``
  codes that rise most forced on (:func:`tlsteer.codebook.bottleneck_steering`); codes are on or
  off, so it has no strength and is reported at the KL it reaches, as prompting is.

Vector methods are unit-norm directions; strength is in units of ``scale`` (the mean residual norm
at the hook). Clamp strength is in units of each feature's typical activation. A prompt prefix goes
before the prompt as ``f"{prefix}\\n\\n{prompt}"`` (:meth:`tlsteer.Steering.instruct`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from tlsteer._types import is_int
from tlsteer.codebook.codebook import Codebook
from tlsteer.codebook.steering import bottleneck_steering
from tlsteer.errors import format_options
from tlsteer.experiments.contrasts import ContrastReps
from tlsteer.operators import check_multiplier
from tlsteer.sae.adapter import as_feature_dictionary
from tlsteer.sae.features import FeatureVector
from tlsteer.sae.formulas import encode_steering_vector
from tlsteer.sae.selection import FeatureStats, output_scores
from tlsteer.sae.steering import feature_edit
from tlsteer.steering import Steering
from tlsteer.vector import SteeringVector, VectorMetadata

__all__ = ["METHODS", "ContrastReps", "Method", "build_methods", "method_family"]

METHODS: tuple[str, ...] = (
    "caa",
    "mean_centred",
    "feature_full",
    "feature_topk",
    "feature_output",
    "single_feature",
    "clamp",
    "caa_projected",
    "caa_encoded",
    "random",
    "prompting",
    "codes_add",
    "codes_bottleneck",
)
"""Method families; ``feature_topk`` and ``caa_projected`` expand to one method per ``k``
(``feature_top<k>``, ``caa_proj_top<k>``); ``random`` to ``n_random`` draws (``random.<j>``) when
more than one is asked for."""
CODE_METHODS: tuple[str, ...] = ("codes_add", "codes_bottleneck")
"""The method families that steer by codebook codes (they need a codebook)."""


def method_family(name: str) -> tuple[str, int | None]:
    """``("random", 3)`` for the draw ``"random.3"``; ``(name, None)`` for any other method."""
    family, dot, draw = name.partition(".")
    if dot and draw.isdigit():
        return family, int(draw)
    return name, None


@dataclass(frozen=True)
class Method:
    """A named way to steer; :meth:`at` gives its :class:`~tlsteer.Steering` at a strength.

    The steering acts at every position; each task moves it where its protocol steers
    (``steering.at(question_end(model))`` for A/B items, ``Positions.last()`` for generation).
    """

    name: str
    kind: str
    """``"vector"`` (strength x ``scale`` on a unit direction), ``"clamp"``, ``"prompt"`` or ``"fixed"``."""
    direction: SteeringVector | None = None
    features: tuple[int, ...] = ()
    off_features: tuple[int, ...] = ()
    typical: Tensor | None = field(default=None, repr=False)
    prefix: str | None = None
    scale: float = 1.0
    sae: Any = field(default=None, repr=False)
    """The SAE or :class:`~tlsteer.dictionary.FeatureDictionary` a ``"clamp"`` method edits."""
    hook_name: str = ""
    cosine: float | None = None
    """The cosine of the method's direction with CAA's (``None`` without a direction or a CAA)."""
    fixed: Steering | None = field(default=None, repr=False)
    """The steering of a ``"fixed"`` method (no strength: a codebook bottleneck with codes forced on)."""

    @property
    def has_strength(self) -> bool:
        return self.kind not in ("prompt", "fixed")

    def at(self, strength: Any) -> Steering:
        if self.kind == "prompt":
            return Steering.from_prompt(self.prefix or "")
        if self.kind == "fixed":
            if self.fixed is None:
                raise ValueError(f"method {self.name!r} of kind 'fixed' has no steering")
            return self.fixed
        s = float(check_multiplier(strength))
        if self.kind == "vector":
            if self.direction is None:
                raise ValueError(f"method {self.name!r} of kind 'vector' has no direction")
            return Steering.from_vector(self.direction, s * self.scale)
        if self.typical is None or self.sae is None:
            raise ValueError(
                f"method {self.name!r} of kind {self.kind!r} needs typical values and an SAE or dictionary"
            )
        values = [s * float(v) for v in self.typical] + [0.0] * len(self.off_features)
        edit = feature_edit(
            self.sae,
            list(self.features) + list(self.off_features),
            "clamp",
            values=values,
            hook_name=self.hook_name,
        )
        return Steering.from_edits([(self.hook_name, edit)])


def _unit(direction: Tensor, hook: str, note: str) -> SteeringVector:
    size = float(direction.norm())
    if not size > 0:
        raise ValueError(f"{note}: the direction is zero; the contrast carries no difference here")
    return SteeringVector({hook: (direction / size).float().cpu()}, VectorMetadata(note=note))


def _decoded(vector: FeatureVector, dictionary: object) -> Tensor:
    """The vector decoded through the one decoding path (:meth:`FeatureVector.to_steering_vector`)."""
    return vector.to_steering_vector(dictionary)[vector.hook_name]


def build_methods(
    model: HookedTransformer,
    dictionary: object,
    hook_name: str,
    reps: ContrastReps,
    scale: float,
    stats: FeatureStats,
    *,
    instruction: str | None = None,
    methods: Sequence[str] | None = None,
    ks: Sequence[int] = (8, 32),
    k_output: int = 8,
    n_candidates: int = 40,
    max_density: float = 0.1,
    score_prompts: Sequence[str] | None = None,
    seed: int = 0,
    n_random: int = 1,
    codebook: Codebook | None = None,
    code_reps: ContrastReps | None = None,
    n_codes: int = 8,
    n_forced: int | None = None,
) -> dict[str, Method]:
    """Every requested method built from ``reps`` (see the module docstring).

    Args:
        model, dictionary, hook_name: The model, an SAE or a
            :class:`~tlsteer.dictionary.FeatureDictionary` that fits it, and where it reads.
        reps: The contrast's activations and codes.
        scale: The mean residual norm at the hook (vector strengths are in its units).
        stats: :func:`~tlsteer.sae.feature_stats` on neutral text (density, first-token features,
            typical activation).
        instruction: The prompt prefix of ``prompting`` (required if it is requested).
        methods: Method families from :data:`METHODS` (default: all of them, less ``codes_add``
            and ``codes_bottleneck`` when no ``codebook`` is given).
        ks, k_output, n_candidates, max_density: Feature selection: the ``k`` of each top-k
            method; how many features the output score keeps of the ``n_candidates`` largest
            positive ones; the density above which a feature is dropped.
        score_prompts: Prompts for the output scores (default: those of ``output_scores``).
        seed: Seeds the random directions (draw ``j`` uses ``seed + j``).
        n_random: Random directions: 1 gives the method ``random``; more give ``random.<j>``.
        codebook, code_reps: For ``codes_add`` and ``codes_bottleneck``: a codebook at
            ``hook_name`` and the same contrast read through it (its code firing rates).
        n_codes, n_forced: The codes ``codes_add`` adds; the codes ``codes_bottleneck`` forces
            on (default: half the codebook's ``k``).

    Every vector method's :attr:`Method.cosine` is its cosine with the CAA direction.
    """
    if methods is None:
        methods = tuple(m for m in METHODS if codebook is not None or m not in CODE_METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method {unknown[0]!r}; valid: {format_options(METHODS)}")
    if "prompting" in methods and not (isinstance(instruction, str) and instruction.strip()):
        raise ValueError("the prompting method needs a non-empty instruction")
    if "feature_topk" in methods and (
        isinstance(ks, (str, bytes)) or not ks or any(not is_int(k) or k < 1 for k in ks)
    ):
        raise ValueError(f"feature_topk needs ks, a non-empty list of ints >= 1, got {ks!r}")
    if "caa_projected" in methods and (
        isinstance(ks, (str, bytes)) or not ks or any(not is_int(k) or k < 1 for k in ks)
    ):
        raise ValueError(f"caa_projected needs ks, a non-empty list of ints >= 1, got {ks!r}")
    if not is_int(n_random) or n_random < 1:
        raise ValueError(f"n_random must be an int >= 1, got {n_random!r}")
    if "mean_centred" in methods and reps.class_means is None:
        raise ValueError("mean_centred needs class means (a class set); drop it for contrast pairs")
    scale = float(check_multiplier(scale))
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    found = as_feature_dictionary(dictionary, hook_name)
    out: dict[str, Method] = {}

    raw = reps.raw_difference()
    raw_unit = raw.float() / raw.float().norm()

    def vector(name: str, direction: Tensor) -> None:
        unit = _unit(direction, hook_name, name)
        cosine = float(unit[hook_name].to(raw_unit.device) @ raw_unit)
        out[name] = Method(name, "vector", unit, scale=scale, hook_name=hook_name, cosine=cosine)

    diff = reps.feature_difference()
    needs_filter = {"feature_topk", "feature_output", "single_feature", "clamp", "caa_projected"} & set(
        methods
    )
    if needs_filter or "feature_full" in methods:
        full = FeatureVector.from_dictionary(found, diff, note="feature difference")
    if needs_filter:  # FeatureVector's own selections: density (dead features too), first-token features
        filtered = (
            full.max_density(max_density, stats.density)
            .drop(stats.dead())
            .drop_first_token_features(stats.first_token_features())
        )
    if "caa" in methods:
        vector("caa", raw)
    if "mean_centred" in methods and reps.class_means is not None:  # checked above
        vector("mean_centred", reps.raw_pos.float().mean(0) - reps.class_means.float().mean(0))
    if "feature_full" in methods:
        vector("feature_full", _decoded(full, found))
    if "feature_topk" in methods:
        for k in ks:
            vector(f"feature_top{k}", _decoded(filtered.top_k(int(k)), found))
    if "caa_projected" in methods:
        for k in ks:
            ids = torch.tensor(sorted(filtered.top_k(int(k)).features), dtype=torch.long)
            rows = found.decoder_rows(ids).float().to(raw.device)  # [k, d_model]
            coef = torch.linalg.lstsq(rows.T, raw.float()[:, None]).solution  # [k, 1]
            vector(f"caa_proj_top{k}", (rows.T @ coef)[:, 0])
    needs_scores = {"feature_output", "single_feature", "clamp"} & set(methods)
    if needs_scores:
        positive = filtered.sign("positive").top_k(n_candidates)
        scores = output_scores(model, found, positive, prompts=score_prompts, hook_name=hook_name)
        best = positive.by_output_score(scores, k=k_output)
        chosen = sorted(best.features, key=lambda f: -float(scores[f]))
        if "feature_output" in methods:
            vector("feature_output", _decoded(best, found))
        if "single_feature" in methods:
            one = torch.zeros(found.width).index_put((torch.tensor([chosen[0]]),), torch.tensor(1.0))
            vector("single_feature", _decoded(FeatureVector.from_dictionary(found, one), found))
        if "clamp" in methods:
            values = filtered.as_tensor()
            negative = [int(f) for f in (-values).topk(min(k_output, found.width)).indices if values[f] < 0]
            typical = stats.mean_active[chosen].clone()
            typical[typical <= 0] = float(diff[chosen].abs().max())
            out["clamp"] = Method(
                "clamp",
                "clamp",
                features=tuple(chosen),
                off_features=tuple(negative),
                typical=typical,
                sae=found,
                hook_name=hook_name,
            )
    if "caa_encoded" in methods:
        raw_vector = SteeringVector({hook_name: raw.float()})
        vector(
            "caa_encoded",
            encode_steering_vector(found, raw_vector, hook_name).to_steering_vector(found)[hook_name],
        )
    if "random" in methods:
        for j in range(int(n_random)):
            gen = torch.Generator().manual_seed(seed + j)
            vector("random" if n_random == 1 else f"random.{j}", torch.randn(raw.shape[0], generator=gen))
    if "prompting" in methods:
        out["prompting"] = Method("prompting", "prompt", prefix=instruction, hook_name=hook_name)
    if {"codes_add", "codes_bottleneck"} & set(methods):
        book, rise = _code_contrast(codebook, code_reps, hook_name)
        if "codes_add" in methods:
            top = _top_rising(rise, int(n_codes), "codes_add")
            vector("codes_add", book.decode_change(rise[top], top))
        if "codes_bottleneck" in methods:
            forced = _top_rising(
                rise, max(1, book.k // 2) if n_forced is None else int(n_forced), "codes_bottleneck"
            )
            out["codes_bottleneck"] = Method(
                "codes_bottleneck",
                "fixed",
                features=tuple(int(c) for c in forced),
                hook_name=hook_name,
                fixed=bottleneck_steering(book, forced.tolist()),
            )
    return out


def _code_contrast(codebook: Any, code_reps: Any, hook_name: str) -> tuple[Codebook, Tensor]:
    """The codebook and each code's rise in firing rate (positive minus negative) of the contrast."""
    if not isinstance(codebook, Codebook) or not isinstance(code_reps, ContrastReps):
        raise ValueError(
            "codes_add and codes_bottleneck need codebook= (a tlsteer.codebook.Codebook) and code_reps= "
            f"(the contrast read through it), got {type(codebook).__name__} and {type(code_reps).__name__}"
        )
    if codebook.hook_name != hook_name or code_reps.hook_name != hook_name:
        raise ValueError(
            f"the codebook reads {codebook.hook_name!r} and its reps {code_reps.hook_name!r}; the "
            f"methods steer at {hook_name!r}: give a codebook at the same hook"
        )
    rise = code_reps.feature_difference().float()
    if rise.shape != (codebook.n_codes,):
        raise ValueError(
            f"code_reps hold {tuple(rise.shape)} features, not the codebook's {codebook.n_codes} codes"
        )
    return codebook, rise


def _top_rising(rise: Tensor, n: int, name: str) -> Tensor:
    if n < 1:
        raise ValueError(f"{name} needs at least one code, got {n}")
    values, ids = rise.topk(min(n, rise.numel()))
    ids = ids[values > 0]
    if ids.numel() == 0:
        raise ValueError(f"{name}: no code fires more often on the positive side than on the negative")
    return ids
