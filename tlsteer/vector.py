"""The SteeringVector value type: directions keyed by hook name, provenance, algebra, files.

A :class:`SteeringVector` is an immutable value: it owns copies of its directions, compares by
value (``==`` is exact, :meth:`~SteeringVector.allclose` is approximate), hashes by value, is not
iterable, and its arithmetic returns new vectors. Facts that follow from the directions (hooks,
layers, ``d_model``) are read off them, never stored twice. Files are safetensors, one tensor per
hook, with the provenance as JSON in the header.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from tlsteer._types import HOOK_POINTS, is_int, parse_hook_name
from tlsteer._version import __version__
from tlsteer.errors import format_options
from tlsteer.gguf_vectors import (
    METADATA_KEY,
    float32_direction,
    read_control_vector,
    read_numpy_direction,
    write_control_vector,
    write_numpy_direction,
)
from tlsteer.hooks import SteeringHandle, check_direction
from tlsteer.operators import Operator, check_multiplier
from tlsteer.positions import Positions
from tlsteer.steering import Steering

__all__ = ["SteeringVector", "VectorMetadata"]

_FORMAT = "tlsteer.SteeringVector/1"
_DERIVED = ("d_model", "hook_point", "layers")  # written by tlsteer 0.1 files; checked, not kept


@dataclass(frozen=True)
class VectorMetadata:
    """Where a vector came from. Unknown fields are an error, not ``None``.

    Facts about the directions themselves (``d_model``, hooks, layers) live on the vector.
    Every field is a string except ``n_pairs`` (an int >= 0); other types are refused.

    Attributes:
        model_name: The TransformerLens model the vector was made for (``model.cfg.model_name``);
            steering refuses another model unless asked not to check. Empty when unknown.
        model_hint: The architecture a llama.cpp or repeng control-vector file names in
            ``controlvector.model_hint`` (e.g. ``"llama"``). Kept for the record and written back
            by :meth:`SteeringVector.to_gguf`; never compared with a model.
    """

    model_name: str = ""
    read_index: str = ""
    aggregator: str = ""
    n_pairs: int = 0
    data_hash: str = ""
    tlsteer_version: str = __version__
    note: str = ""
    model_hint: str = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            problem = _field_problem(f.name, getattr(self, f.name))
            if problem is not None:
                wrong_type = not is_int(self.n_pairs) if f.name == "n_pairs" else True
                raise (TypeError if wrong_type else ValueError)(f"VectorMetadata {problem}")
        object.__setattr__(self, "n_pairs", int(self.n_pairs))  # a NumPy int becomes a JSON-able int

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str, source: str = "metadata") -> tuple[VectorMetadata, dict[str, Any]]:
        """The metadata, and the derived fields an older file also stored (to check).

        Args:
            text: A JSON object of metadata fields, as :meth:`to_json` writes it.
            source: Where the text came from, named in errors (e.g. the file and its key).

        Raises:
            ValueError: The text is not a JSON object, has unknown fields, or a field has the wrong
                type; the message names ``source``, the field, its value and what is valid.

        Example:
            >>> VectorMetadata.from_json('{"model_name": "gpt2", "n_pairs": 3}')[0].n_pairs
            3
        """
        known = [f.name for f in dataclasses.fields(cls)]
        try:
            raw = json.loads(text)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"{source} is not JSON ({err}): {_clip(text)}; expected a JSON object with fields from "
                f"{known}"
            ) from err
        if not isinstance(raw, dict):
            raise ValueError(
                f"{source} is a JSON {type(raw).__name__} ({_clip(raw)}), not an object; expected "
                f"{{field: value}} with fields from {known}"
            )
        derived = {k: raw.pop(k) for k in _DERIVED if k in raw}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ValueError(f"{source}: unknown metadata fields {unknown}; known: {sorted(known)}")
        for key, value in derived.items():
            _check_derived_type(key, value, source)
        for key, value in raw.items():
            problem = _field_problem(key, value)
            if problem is not None:
                raise ValueError(f"{source}: {problem}")
        return cls(**raw), derived


def _field_problem(name: str, value: Any) -> str | None:
    """What is wrong with a metadata field's value, or ``None``: n_pairs is an int >= 0, the rest strings."""
    if name == "n_pairs":
        if is_int(value) and value >= 0:
            return None
        return (
            f"field 'n_pairs' must be an int >= 0 (the number of pairs), got {_clip(value)} "
            f"({type(value).__name__})"
        )
    if isinstance(value, str):
        return None
    return f"field {name!r} must be a string, got {_clip(value)} ({type(value).__name__})"


def _clip(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_derived_type(key: str, value: Any, source: str) -> None:
    """The type of a field a tlsteer 0.1 file stored (``d_model``, ``layers``, ``hook_point``)."""
    if key == "d_model" and not (is_int(value) and value >= 0):
        raise ValueError(
            f"{source}: field 'd_model' is {value!r} ({type(value).__name__}); expected an int >= 0 "
            "(the size of the directions)"
        )
    if key == "layers" and not (isinstance(value, list) and all(is_int(x) and x >= 0 for x in value)):
        raise ValueError(
            f"{source}: field 'layers' is {_clip(value)}; expected a list of ints >= 0 (the layers of "
            "the directions)"
        )
    if key == "hook_point" and value not in HOOK_POINTS:
        raise ValueError(
            f"{source}: field 'hook_point' is {_clip(value)}; valid: {format_options(HOOK_POINTS)}"
        )


def _check_derived(vector: SteeringVector, derived: dict[str, Any], source: str) -> None:
    """Refuse a tlsteer 0.1 file whose stored ``d_model``, ``layers`` or ``hook_point`` disagree.

    A 0.1 file whose metadata was never filled in holds the defaults ``d_model=0``, ``layers=[]``
    and ``hook_point='resid_post'``: it recorded nothing about its directions, so those defaults are
    not checked.
    """
    d_model, layers = derived.get("d_model", 0), derived.get("layers", [])
    if d_model != 0 and d_model != vector.d_model:
        raise ValueError(f"{source} says d_model={d_model} but its directions have {vector.d_model}")
    if layers and sorted(set(layers)) != vector.layers:
        raise ValueError(f"{source} says layers={layers} but its directions have {vector.layers}")
    unfilled = d_model == 0 and not layers and derived.get("hook_point") == "resid_post"
    if "hook_point" in derived and not unfilled and vector.hook_points != [derived["hook_point"]]:
        raise ValueError(
            f"{source} says hook_point={derived['hook_point']!r} but its directions are at "
            f"{format_options(vector.hook_points)} (hooks: {vector.hooks})"
        )


def _describe(vector: SteeringVector, default: str) -> str:
    return vector.metadata.note or default


@dataclass(frozen=True, eq=False)
class SteeringVector:
    """Steering directions keyed by full TransformerLens hook name, plus provenance.

    Example:
        >>> v = SteeringVector({"blocks.3.hook_resid_post": torch.ones(4)})
        >>> (2 * v)["blocks.3.hook_resid_post"]
        tensor([2., 2., 2., 2.])
        >>> v == SteeringVector({"blocks.3.hook_resid_post": torch.ones(4)})
        True
        >>> v.layers, v.d_model
        ([3], 4)
    """

    directions: Mapping[str, Float[Tensor, " d_model"]]
    metadata: VectorMetadata = field(default_factory=VectorMetadata)

    def __post_init__(self) -> None:
        if not isinstance(self.directions, Mapping) or not self.directions:
            raise ValueError(
                "a SteeringVector needs a non-empty {hook_name: direction} mapping, got "
                f"{self.directions!r}"
            )
        if not isinstance(self.metadata, VectorMetadata):
            raise TypeError(f"metadata must be a VectorMetadata, got {type(self.metadata).__name__}")
        dims = {}
        clean = {}
        for name, direction in self.directions.items():
            if not isinstance(name, str):
                raise TypeError(f"hook names must be strings, got {name!r}")
            parse_hook_name(name)
            check_direction(name, direction)
            dims[name] = direction.shape[0]
            clean[name] = direction.detach().clone()
        if len(set(dims.values())) != 1:
            raise ValueError(f"directions have different sizes: {dims}")
        ordered = dict(sorted(clean.items(), key=lambda kv: parse_hook_name(kv[0])))
        object.__setattr__(self, "directions", MappingProxyType(ordered))

    # -- access ---------------------------------------------------------------------------
    @property
    def d_model(self) -> int:
        return next(iter(self.directions.values())).shape[0]

    @property
    def layers(self) -> list[int]:
        return sorted({parse_hook_name(name)[0] for name in self.directions})

    @property
    def hooks(self) -> list[str]:
        return list(self.directions)

    @property
    def hook_points(self) -> list[str]:
        """The distinct points inside blocks (``resid_post``, ...), in hook order."""
        return list(dict.fromkeys(parse_hook_name(name)[1] for name in self.directions))

    def __getitem__(self, key: int | np.integer | str) -> Tensor:
        """A direction by hook name, or by layer when the vector has one hook point per layer."""
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            matches = [n for n in self.directions if parse_hook_name(n)[0] == int(key)]
            if len(matches) != 1:
                raise KeyError(
                    f"layer {key} matches {len(matches)} hooks of this vector; layers: {self.layers}"
                )
            key = matches[0]
        if not isinstance(key, str) or key not in self.directions:
            raise KeyError(f"hook {key!r} not in this vector; hooks: {self.hooks}")
        return self.directions[key]

    def __contains__(self, name: object) -> bool:
        return name in self.directions

    def __iter__(self) -> Any:
        raise TypeError(
            "a SteeringVector is not iterable; use vector.directions.items(), or pass "
            "[(vector, multiplier)] where a list of pairs is expected"
        )

    def __len__(self) -> int:
        return len(self.directions)

    def norms(self) -> dict[str, float]:
        return {name: float(d.norm()) for name, d in self.directions.items()}

    # -- value semantics ------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        """Exact equality: the same hooks, bit-equal directions (same dtype), the same metadata."""
        if not isinstance(other, SteeringVector):
            return NotImplemented
        return (
            self.hooks == other.hooks
            and self.metadata == other.metadata
            and all(
                torch.equal(a, other.directions[n]) and a.dtype == other.directions[n].dtype
                for n, a in self.directions.items()
            )
        )

    def __hash__(self) -> int:
        digest = hashlib.sha256(self.metadata.to_json().encode())
        for name, d in self.directions.items():
            digest.update(name.encode())
            digest.update(str(d.dtype).encode())
            digest.update(d.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return int.from_bytes(digest.digest()[:8], "little")

    def allclose(self, other: SteeringVector, rtol: float = 1e-5, atol: float = 1e-8) -> bool:
        """The same hooks and directions equal within tolerance (metadata is not compared)."""
        if not isinstance(other, SteeringVector):
            raise TypeError(f"can only compare with a SteeringVector, got {type(other).__name__}")
        return self.hooks == other.hooks and all(
            torch.allclose(a.float().cpu(), other.directions[n].float().cpu(), rtol=rtol, atol=atol)
            for n, a in self.directions.items()
        )

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
        a, b = self.metadata, other.metadata
        # a combination has no single data set; it keeps the model only if both agree
        metadata = VectorMetadata(
            model_name=a.model_name if a.model_name == b.model_name else "",
            note=f"({_describe(self, 'a')}) {op} ({_describe(other, 'b')})",
        )
        return SteeringVector(out, metadata)

    def __mul__(self, scalar: Any) -> SteeringVector:
        try:
            value = check_multiplier(scalar, "scale")
        except TypeError:
            return NotImplemented
        return self._map(lambda d: d * value, f"{value:g} * ({_describe(self, 'v')})")

    __rmul__ = __mul__

    def __truediv__(self, scalar: Any) -> SteeringVector:
        try:
            value = check_multiplier(scalar, "divisor")
        except TypeError:
            return NotImplemented
        if value == 0:
            raise ValueError("cannot divide a vector by 0")
        return self._map(lambda d: d / value, f"({_describe(self, 'v')}) / {value:g}")

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
        return self._map(lambda d: d / d.norm(), f"normalized({_describe(self, 'v')})")

    def select(self, layers: Any) -> SteeringVector:
        """Only the directions at these layers (an int or ints, NumPy's too), each of which it must have.

        Example:
            >>> v = SteeringVector({f"blocks.{n}.hook_resid_post": torch.ones(2) for n in (1, 4)})
            >>> v.select(4).layers, v.select([1, 4]).layers
            ([4], [1, 4])
        """
        if is_int(layers):
            wanted = [int(layers)]
        elif isinstance(layers, (str, bytes, Mapping)) or not isinstance(layers, Iterable):
            raise TypeError(
                f"layers must be an int or a list of ints (this vector's layers: {self.layers}), "
                f"got {layers!r} ({type(layers).__name__})"
            )
        else:
            wanted = list(layers)
            for layer in wanted:
                if not is_int(layer):
                    raise TypeError(
                        f"layers must be ints, got {layer!r} ({type(layer).__name__}) in {wanted!r}; "
                        f"this vector's layers: {self.layers}"
                    )
            wanted = [int(layer) for layer in wanted]
        if not wanted:
            raise ValueError(f"layers is empty; pass at least one of this vector's layers: {self.layers}")
        missing = [layer for layer in wanted if layer not in self.layers]
        if missing:
            raise KeyError(f"layers {missing} not in this vector; its layers: {self.layers}")
        kept = {n: d for n, d in self.directions.items() if parse_hook_name(n)[0] in wanted}
        return SteeringVector(kept, self.metadata)

    # -- steering -------------------------------------------------------------------------
    def steering(
        self,
        multiplier: Any = 1.0,
        *,
        positions: Positions | None = None,
        operator: Operator | None = None,
    ) -> Steering:
        """This vector times ``multiplier`` as a :class:`~tlsteer.Steering` (``Steering.from_vector``)."""
        return Steering.from_vector(
            self, multiplier, positions=Positions.all() if positions is None else positions, operator=operator
        )

    def apply(
        self,
        model: HookedTransformer,
        multiplier: Any = 1.0,
        *,
        min_token_index: int = 0,
        token_positions: list[int] | None = None,
        last_token_only: bool = False,
        operator: Operator | None = None,
        check_model: bool = True,
    ) -> Any:
        """Steer ``model`` with this vector inside a ``with`` block: the shortcut for
        ``vec.steering(multiplier, positions=...).apply(model)`` (see :class:`tlsteer.Steering`).

        ``min_token_index``, ``token_positions`` and ``last_token_only`` choose one
        :class:`~tlsteer.Positions` mode (every position by default).
        """
        positions = Positions.make(min_token_index, token_positions, last_token_only)
        return self.steering(multiplier, positions=positions, operator=operator).apply(
            model, check_model=check_model
        )

    def patch(
        self,
        model: HookedTransformer,
        multiplier: Any = 1.0,
        *,
        min_token_index: int = 0,
        token_positions: list[int] | None = None,
        last_token_only: bool = False,
        operator: Operator | None = None,
        check_model: bool = True,
    ) -> SteeringHandle:
        """Add the steering hooks until ``handle.remove()`` (the shortcut for ``Steering.patch``)."""
        positions = Positions.make(min_token_index, token_positions, last_token_only)
        return self.steering(multiplier, positions=positions, operator=operator).patch(
            model, check_model=check_model
        )

    # -- files ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write a safetensors file with the directions (float32, CPU) and the metadata."""
        from safetensors.torch import save_file

        path = Path(path)
        if not path.parent.is_dir():
            raise FileNotFoundError(
                f"cannot save to {str(path)!r}: folder {str(path.parent)!r} does not exist"
            )
        tensors = {n: float32_direction(n, d) for n, d in self.directions.items()}
        save_file(tensors, str(path), metadata={"format": _FORMAT, "metadata": self.metadata.to_json()})

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> SteeringVector:
        """Read a file written by :meth:`save`; a corrupt or foreign file raises ``ValueError``."""
        from safetensors import safe_open

        target = _available_device(device)
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"steering vector file {str(path)!r} does not exist")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
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
        if "metadata" not in header:
            raise ValueError(
                f"{str(path)!r} has no 'metadata' entry in its safetensors header (entries: "
                f"{sorted(header)}); a tlsteer vector file stores its VectorMetadata as JSON under 'metadata'"
            )
        source = f"{str(path)!r} metadata"
        metadata, derived = VectorMetadata.from_json(header["metadata"], source)
        try:
            for name, tensor in tensors.items():  # tlsteer's own messages, before any type checker's
                parse_hook_name(name)
                check_direction(name, tensor)
            vector = cls(tensors, metadata)
        except KeyError as err:  # a tensor name that is not a block hook
            raise ValueError(f"{str(path)!r}: {err.args[0]}") from err
        except (TypeError, ValueError) as err:
            raise ValueError(f"{str(path)!r}: {err}") from err
        _check_derived(vector, derived, source)
        return vector.to(target)

    def to_numpy_file(self, layer: int | str, path: str | Path) -> None:
        """Save one layer's direction (or one hook's) as a plain ``[d_model]`` float32 ``.npy`` file."""
        direction = self[layer]
        hook = next(name for name, d in self.directions.items() if d is direction)
        write_numpy_direction(direction, path, name=hook)

    @classmethod
    def from_numpy_file(cls, path: Any, layer: Any, hook_point: Any = "resid_post") -> SteeringVector:
        """Read a ``[d_model]`` float ``.npy`` file (e.g. from :meth:`to_numpy_file`) as one layer's vector.

        Args:
            path: The ``.npy`` file: one 1-D float16/32/64 array of finite values.
            layer: The block the direction belongs to (an int >= 0).
            hook_point: The hook point inside the block (``resid_post`` by default).

        Returns:
            A float32 vector with the single hook ``blocks.<layer>.hook_<hook_point>``.

        Example:
            >>> v = SteeringVector.from_numpy_file("honesty.npy", layer=12)  # doctest: +SKIP
        """
        return cls(read_numpy_direction(path, layer, hook_point))

    def to_gguf(self, path: Any, model_hint: Any = None) -> None:
        """Write a llama.cpp control-vector GGUF file (``llama-cli --control-vector``, repeng).

        ``blocks.<l>.hook_resid_post`` is written as the float32 tensor ``direction.<l>``; other hook
        points and layer 0 have no place in the format and are refused (see
        :mod:`tlsteer.gguf_vectors` for the layer convention and where llama.cpp defines it).

        Args:
            path: The ``.gguf`` file to write; its folder must exist.
            model_hint: ``controlvector.model_hint`` (llama.cpp writes the architecture, e.g.
                ``"llama"``); ``None`` uses ``metadata.model_name``, or ``metadata.model_hint`` when
                the model is unknown.

        Example:
            >>> import tempfile
            >>> v = SteeringVector({"blocks.3.hook_resid_post": torch.ones(4)})
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     v.to_gguf(f"{tmp}/v.gguf", model_hint="llama")
            ...     SteeringVector.from_gguf(f"{tmp}/v.gguf") == v
            True
        """
        if model_hint is None:
            model_hint = self.metadata.model_name or self.metadata.model_hint
        write_control_vector(self.directions, path, model_hint, self.metadata.to_json())

    @classmethod
    def from_gguf(cls, path: Any, hook_point: Any = "resid_post") -> SteeringVector:
        """Read a llama.cpp control-vector GGUF file (from :meth:`to_gguf`, llama.cpp or repeng).

        ``direction.<l>`` becomes ``blocks.<l>.hook_<hook_point>``; only ``resid_post`` is where
        llama.cpp adds it. Metadata written by :meth:`to_gguf` is restored. Other files (llama.cpp,
        repeng) name an architecture such as ``"llama"`` in ``controlvector.model_hint``, not a
        model: it becomes ``metadata.model_hint`` and ``metadata.model_name`` stays empty, so
        steering any model with the vector is not refused.

        Args:
            path: The ``.gguf`` file.
            hook_point: The hook point to key the directions at (``resid_post`` by default).

        Returns:
            A float32 vector on the CPU.

        Example:
            >>> v = SteeringVector.from_gguf("happy.gguf")  # doctest: +SKIP
        """
        directions, hint, metadata_json = read_control_vector(path, hook_point)
        if metadata_json is None:
            # llama.cpp and repeng write the architecture ("llama") here, not a model name: keeping it
            # as model_name would make every steering function refuse the vector for any real model
            return cls(directions, VectorMetadata(model_hint=hint))
        source = f"{str(Path(path))!r} key {METADATA_KEY!r}"
        metadata, derived = VectorMetadata.from_json(metadata_json, source)
        vector = cls(directions, metadata)
        _check_derived(vector, derived, source)
        return vector

    def __repr__(self) -> str:
        norms = ", ".join(f"{n}: {v:.3g}" for n, v in list(self.norms().items())[:4])
        more = ", ..." if len(self.directions) > 4 else ""
        model = self.metadata.model_name
        return f"SteeringVector(d_model={self.d_model}, norms={{{norms}{more}}}, model={model!r})"


def _available_device(device: torch.device | str) -> torch.device:
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {device!r} is not a torch device (e.g. 'cpu', 'cuda:0')") from err
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} is not available here: torch.cuda.is_available() is False")
    return target
