"""The SteeringVector value type: directions keyed by hook name, metadata, algebra, files.

A :class:`SteeringVector` is immutable: arithmetic, ``.to()`` and ``.normalized()`` return new
vectors. Files are safetensors, one tensor per hook, with the metadata as JSON in the header.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from tlsteer._types import hook_name, parse_hook_name

Operator = Callable[[Tensor, Tensor], Tensor]

__all__ = ["SteeringVector", "VectorMetadata"]

_FORMAT = "tlsteer.SteeringVector/1"


def _version() -> str:
    from tlsteer import __version__

    return __version__


@dataclass(frozen=True)
class VectorMetadata:
    """Where a vector came from. Unknown fields are an error, not ``None``."""

    model_name: str = ""
    d_model: int = 0
    hook_point: str = "resid_post"
    layers: tuple[int, ...] = ()
    read_index: str = ""
    aggregator: str = ""
    n_pairs: int = 0
    data_hash: str = ""
    tlsteer_version: str = field(default_factory=_version)
    note: str = ""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> VectorMetadata:
        raw = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown metadata fields {unknown}; known: {sorted(known)}")
        raw["layers"] = tuple(raw.get("layers", ()))
        return cls(**raw)


@dataclass(frozen=True)
class SteeringVector:
    """Steering directions keyed by full TransformerLens hook name, plus metadata.

    Example:
        >>> v = SteeringVector({"blocks.3.hook_resid_post": torch.ones(4)})
        >>> (2 * v)["blocks.3.hook_resid_post"]
        tensor([2., 2., 2., 2.])
    """

    directions: Mapping[str, Float[Tensor, " d_model"]]
    metadata: VectorMetadata = field(default_factory=VectorMetadata)

    def __post_init__(self) -> None:
        if not self.directions:
            raise ValueError("a SteeringVector needs at least one direction")
        dims = set()
        clean = {}
        for name, direction in self.directions.items():
            parse_hook_name(name)
            if not isinstance(direction, Tensor) or direction.ndim != 1:
                raise ValueError(
                    f"direction at {name!r} must be a 1-D tensor [d_model], got "
                    f"{getattr(direction, 'shape', type(direction))}"
                )
            dims.add(direction.shape[0])
            clean[name] = direction.detach()
        if len(dims) != 1:
            raise ValueError(f"directions have different sizes {sorted(dims)}")
        object.__setattr__(
            self,
            "directions",
            MappingProxyType(dict(sorted(clean.items(), key=lambda kv: parse_hook_name(kv[0])))),
        )

    # -- access ---------------------------------------------------------------------------
    @property
    def d_model(self) -> int:
        return next(iter(self.directions.values())).shape[0]

    @property
    def layers(self) -> list[int]:
        return [parse_hook_name(name)[0] for name in self.directions]

    @property
    def hooks(self) -> list[str]:
        return list(self.directions)

    def __getitem__(self, key: int | str) -> Tensor:
        """A direction by hook name, or by layer when the vector has one hook point per layer."""
        if isinstance(key, int):
            matches = [n for n in self.directions if parse_hook_name(n)[0] == key]
            if len(matches) != 1:
                raise KeyError(
                    f"layer {key} matches {len(matches)} hooks of this vector; layers: {self.layers}"
                )
            key = matches[0]
        if key not in self.directions:
            raise KeyError(f"hook {key!r} not in this vector; hooks: {self.hooks}")
        return self.directions[key]

    def norms(self) -> dict[str, float]:
        return {name: float(d.norm()) for name, d in self.directions.items()}

    # -- algebra --------------------------------------------------------------------------
    def _map(self, fn: Any, note: str) -> SteeringVector:
        directions = {name: fn(d) for name, d in self.directions.items()}
        return SteeringVector(directions, dataclasses.replace(self.metadata, note=note))

    def __add__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, 1.0, "+")

    def __sub__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, -1.0, "-")

    def _combine(self, other: Any, sign: float, op: str) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        if other.d_model != self.d_model:
            raise ValueError(f"cannot combine vectors with d_model {self.d_model} and {other.d_model}")
        out = dict(self.directions)
        for name, d in other.directions.items():
            out[name] = out[name] + sign * d if name in out else sign * d
        note = f"({self.metadata.note or 'a'}) {op} ({other.metadata.note or 'b'})"
        return SteeringVector(out, dataclasses.replace(self.metadata, note=note))

    def __mul__(self, scalar: float | int) -> SteeringVector:
        if isinstance(scalar, bool) or not isinstance(scalar, (int, float)) or not math.isfinite(scalar):
            return NotImplemented
        return self._map(lambda d: d * scalar, f"{scalar} * ({self.metadata.note or 'v'})")

    __rmul__ = __mul__

    def __truediv__(self, scalar: float | int) -> SteeringVector:
        if isinstance(scalar, bool) or not isinstance(scalar, (int, float)):
            return NotImplemented
        if scalar == 0 or not math.isfinite(scalar):
            raise ValueError(f"cannot divide a vector by {scalar}")
        return self * (1.0 / scalar)

    def __neg__(self) -> SteeringVector:
        return self * -1.0

    def to(self, *args: Any, **kwargs: Any) -> SteeringVector:
        """Move or cast every direction, like ``Tensor.to``."""
        return SteeringVector({n: d.to(*args, **kwargs) for n, d in self.directions.items()}, self.metadata)

    def normalized(self) -> SteeringVector:
        """Every direction scaled to unit norm."""
        for name, d in self.directions.items():
            if d.norm() == 0:
                raise ValueError(f"direction at {name!r} is zero and cannot be normalised")
        return self._map(lambda d: d / d.norm(), f"normalized({self.metadata.note or 'v'})")

    def select(self, layers: list[int]) -> SteeringVector:
        """Only the directions at these layers."""
        kept = {n: d for n, d in self.directions.items() if parse_hook_name(n)[0] in layers}
        if not kept:
            raise KeyError(f"none of layers {layers} in this vector; layers: {self.layers}")
        return SteeringVector(kept, self.metadata)

    # -- steering -------------------------------------------------------------------------
    def apply(
        self,
        model: HookedTransformer,
        multiplier: float | int = 1.0,
        min_token_index: int = 0,
        token_positions: list[int] | None = None,
        operator: Operator | None = None,
        last_token_only: bool = False,
    ) -> Any:
        """Context manager that steers ``model`` with this vector (see :func:`apply_steering`)."""
        from tlsteer.hooks import apply_steering

        return apply_steering(
            model, [(self, multiplier)], min_token_index, token_positions, last_token_only, operator
        )

    def patch(
        self,
        model: HookedTransformer,
        multiplier: float | int = 1.0,
        min_token_index: int = 0,
        token_positions: list[int] | None = None,
        operator: Operator | None = None,
        last_token_only: bool = False,
    ) -> Any:
        """Add the steering hooks until ``handle.remove()`` (see :func:`patch_steering`)."""
        from tlsteer.hooks import patch_steering

        return patch_steering(
            model, [(self, multiplier)], min_token_index, token_positions, last_token_only, operator
        )

    # -- files ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write a safetensors file with the directions (float32, CPU) and the metadata."""
        from safetensors.torch import save_file

        tensors = {n: d.detach().float().cpu().contiguous() for n, d in self.directions.items()}
        save_file(tensors, str(path), metadata={"format": _FORMAT, "metadata": self.metadata.to_json()})

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> SteeringVector:
        """Read a file written by :meth:`save`; a corrupt or foreign file raises ``ValueError``."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"steering vector file {str(path)!r} does not exist")
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                header = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
        except Exception as err:  # safetensors raises its own error types for bad files
            raise ValueError(
                f"{str(path)!r} is not a readable safetensors steering vector (corrupt or truncated?): {err}"
            ) from err
        if header.get("format") != _FORMAT:
            raise ValueError(
                f"{str(path)!r} is a safetensors file but not a tlsteer vector (format "
                f"{header.get('format')!r}, expected {_FORMAT!r})"
            )
        return cls(tensors, VectorMetadata.from_json(header["metadata"]))

    def to_numpy_file(self, layer: int, path: str | Path) -> None:
        """Save one layer's direction as a plain ``[d_model]`` float32 ``.npy`` file."""
        direction = self[layer] if isinstance(layer, int) else self[hook_name(layer)]
        np.save(str(path), direction.detach().float().cpu().numpy())

    def __repr__(self) -> str:
        norms = ", ".join(f"{n}: {v:.3g}" for n, v in list(self.norms().items())[:4])
        more = ", ..." if len(self.directions) > 4 else ""
        model = self.metadata.model_name
        return f"SteeringVector(d_model={self.d_model}, norms={{{norms}{more}}}, model={model!r})"
