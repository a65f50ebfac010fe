"""Steering vectors as llama.cpp control-vector GGUF files, and single-layer ``.npy`` files.

A llama.cpp control vector (what ``llama-cli --control-vector`` loads and repeng's
``ControlVector.export_gguf`` writes) is a GGUF file with ``general.architecture =
"controlvector"``, the keys ``controlvector.model_hint`` (a string) and
``controlvector.layer_count`` (the number of direction tensors), and one 1-D float32 tensor
``direction.<n>`` per layer.

Layer convention: ``direction.<l>`` is ``blocks.<l>.hook_resid_post`` (the output of block ``l``,
0-based), and there is no ``direction.0``. Checked in the ggml-org/llama.cpp sources:

* ``common/common.cpp``, ``common_control_vector_load_one``: ``direction.<n>`` is read as
  ``layer_idx = n``; ``n == 0`` is refused ("invalid (zero) direction tensor layer index"), as are
  tensors that are not F32 or not 1-D; the values go to offset ``n_embd * (n - 1)`` of the buffer.
* ``src/llama-adapter.cpp``, ``llama_adapter_cvec::init`` / ``::apply``: ``tensors[0]`` is always
  null ("there's never a tensor for layer 0") and ``tensors[il]`` for ``il = 1 .. n_layer - 1``
  gets the values at offset ``n_embd * (il - 1)``, so ``tensors[n]`` holds ``direction.<n>``.
* ``src/models/llama.cpp`` (the Llama graph, ``llama_model_llama::graph``): inside ``for (int il
  = 0; il < n_layer; ++il)``, after the feed-forward residual add, ``cur = build_cvec(cur, il)``
  (``cvec->apply_to(ctx0, cur, il)``, ``llm_graph_context::build_cvec`` in
  ``src/llama-graph.cpp``), and the result is named ``l_out``, the block's output and the next
  block's input: TransformerLens's ``blocks.<il>.hook_resid_post``.

repeng agrees (``repeng/extract.py``): ``read_representations`` reads direction ``layer`` from
``hidden_states[layer + 1]``, the output of decoder layer ``layer``, ``export_gguf`` writes it as
``direction.<layer>``, and ``repeng/control.py`` adds it to that layer's output. (llama.cpp's own
``tools/cvector-generator`` names the vector it reads from block ``il``'s ``l_out``
``direction.<il + 1>`` in ``mean.hpp`` / ``pca.hpp``, one block later than where it reads it;
tlsteer follows the loader.)

So only ``resid_post`` directions at layers >= 1 can be exported. llama.cpp applies the layers in
``--control-vector-layer-range`` (default ``1 .. n_layer``, set in ``common_init_from_params``) and
silently skips ``direction.<n>`` with ``n >= n_layer``. The file also keeps tlsteer's provenance as
JSON under ``tlsteer.metadata``, a key that llama.cpp and repeng do not read.

llama.cpp parses the layer with ``std::stoi``, so ``direction.01`` and ``direction.1`` are both layer
1, and it adds every tensor of a layer into the same buffer slot: such a file is refused here rather
than read as one of the two. Files store float32: a direction whose values overflow float32 is
refused before anything is written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tlsteer._types import HOOK_POINTS, hook_name, is_int, parse_hook_name, validate_hook_point
from tlsteer.errors import format_options
from tlsteer.hooks import check_direction

__all__ = [
    "CONTROL_VECTOR_ARCH",
    "METADATA_KEY",
    "float32_direction",
    "read_control_vector",
    "read_numpy_direction",
    "write_control_vector",
    "write_numpy_direction",
]

CONTROL_VECTOR_ARCH = "controlvector"
"""The ``general.architecture`` of a llama.cpp control-vector GGUF file."""

METADATA_KEY = "tlsteer.metadata"
"""GGUF key holding tlsteer's :class:`~tlsteer.vector.VectorMetadata` as JSON (ignored by llama.cpp)."""

_DIRECTION = re.compile(r"^direction\.([0-9]+)$")  # ASCII digits only: std::stoi refuses others


def write_control_vector(directions: Any, path: Any, model_hint: Any = "", metadata_json: Any = None) -> None:
    """Write ``{hook_name: direction}`` as a llama.cpp control-vector GGUF file (float32).

    Args:
        directions: ``blocks.<l>.hook_resid_post`` names (``l >= 1``) to 1-D finite float tensors
            of one size; each is written as float32 ``direction.<l>``.
        path: The file to write; its folder must exist.
        model_hint: The ``controlvector.model_hint`` string (llama.cpp writes the model's
            architecture, e.g. ``"llama"``).
        metadata_json: Optional tlsteer provenance, stored under :data:`METADATA_KEY`.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     write_control_vector({"blocks.2.hook_resid_post": torch.ones(3)}, f"{tmp}/v.gguf", "llama")
        ...     read_control_vector(f"{tmp}/v.gguf")[0]
        {'blocks.2.hook_resid_post': tensor([1., 1., 1.])}
    """
    import gguf

    arrays = _export_arrays(directions)
    if not isinstance(model_hint, str):
        raise TypeError(f"model_hint must be a string (e.g. 'llama'), got {model_hint!r}")
    if metadata_json is not None and not isinstance(metadata_json, str):
        raise TypeError(f"metadata_json must be a JSON string or None, got {type(metadata_json).__name__}")
    path = _output_path(path)
    writer = gguf.GGUFWriter(str(path), CONTROL_VECTOR_ARCH)
    writer.add_string(f"{CONTROL_VECTOR_ARCH}.model_hint", model_hint)
    # llama.cpp's cvector-generator writes this key as int32, the number of direction tensors
    writer.add_int32(f"{CONTROL_VECTOR_ARCH}.layer_count", len(arrays))
    if metadata_json is not None:
        writer.add_string(METADATA_KEY, metadata_json)
    for layer, array in arrays.items():
        writer.add_tensor(f"direction.{layer}", array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def read_control_vector(
    path: Any, hook_point: Any = "resid_post"
) -> tuple[dict[str, Tensor], str, str | None]:
    """Read a llama.cpp control-vector GGUF file: directions, model hint and tlsteer metadata.

    Args:
        path: A GGUF file with ``general.architecture = "controlvector"``.
        hook_point: The hook point to key the directions at; ``direction.<l>`` becomes
            ``blocks.<l>.hook_<hook_point>``. Only ``resid_post`` is where llama.cpp adds them.

    Returns:
        ``(directions, model_hint, metadata_json)``: float32 CPU tensors keyed by hook name in
        layer order, the ``controlvector.model_hint`` string (``""`` when absent), and the JSON
        under :data:`METADATA_KEY` (``None`` for files tlsteer did not write).

    Example:
        >>> read_control_vector("happy.gguf")  # doctest: +SKIP
        ({'blocks.1.hook_resid_post': tensor([...]), ...}, 'llama', None)
    """
    import gguf

    point = _hook_point(hook_point)
    path = _input_path(path, "control vector")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:  # the reader raises assorted types for files that are not GGUF
        raise ValueError(f"{str(path)!r} is not a readable GGUF file (corrupt or truncated?): {err}") from err
    arch = _string_field(reader, "general.architecture", path)
    if arch != CONTROL_VECTOR_ARCH:
        raise ValueError(
            f"{str(path)!r} is a GGUF file but not a llama.cpp control vector: general.architecture is "
            f"{arch!r}, expected {CONTROL_VECTOR_ARCH!r}"
        )
    hint = _string_field(reader, f"{CONTROL_VECTOR_ARCH}.model_hint", path) or ""
    metadata_json = _string_field(reader, METADATA_KEY, path)
    found: dict[int, Tensor] = {}
    names: dict[int, str] = {}
    for tensor in reader.tensors:
        layer = _direction_layer(tensor.name, path)
        if layer in names:
            raise ValueError(
                f"{str(path)!r}: tensors {names[layer]!r} and {tensor.name!r} are both layer {layer} "
                "(llama.cpp would add them together); a control vector needs one 'direction.<layer>' "
                f"tensor per layer, e.g. only 'direction.{layer}'"
            )
        names[layer] = tensor.name
        if tensor.tensor_type != gguf.GGMLQuantizationType.F32 or len(tensor.shape) != 1:
            raise ValueError(
                f"{str(path)!r}: tensor {tensor.name!r} must be a 1-D F32 tensor (as llama.cpp requires), "
                f"got type {tensor.tensor_type.name} with shape {tuple(int(n) for n in tensor.shape)}"
            )
        direction = torch.from_numpy(np.array(tensor.data, dtype=np.float32, copy=True).reshape(-1))
        check_direction(f"{path.name}:{tensor.name}", direction)
        found[layer] = direction
    if not found:
        raise ValueError(f"{str(path)!r} holds no direction tensors ('direction.<layer>')")
    sizes = {f"direction.{layer}": d.shape[0] for layer, d in found.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"{str(path)!r}: direction tensors have different sizes: {sizes}")
    directions = {hook_name(layer, point): found[layer] for layer in sorted(found)}
    return directions, hint, metadata_json


def read_numpy_direction(path: Any, layer: Any, hook_point: Any = "resid_post") -> dict[str, Tensor]:
    """Read a ``[d_model]`` float ``.npy`` array as ``{blocks.<layer>.hook_<hook_point>: direction}``.

    The counterpart of :meth:`~tlsteer.vector.SteeringVector.to_numpy_file`. float16, float32 and
    float64 arrays are accepted and returned as float32; other dtypes, other shapes and non-finite
    values are refused with the reason.

    Args:
        path: A ``.npy`` file holding one 1-D float array (not ``.npz``, not pickled objects).
        layer: The block index the direction belongs to, an int >= 0.
        hook_point: The hook point inside the block (``resid_post`` by default).

    Returns:
        A one-entry ``{hook_name: float32 CPU tensor}`` dict.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     np.save(f"{tmp}/v.npy", np.array([0.5, -1.0], dtype=np.float16))
        ...     read_numpy_direction(f"{tmp}/v.npy", layer=4)
        {'blocks.4.hook_resid_post': tensor([ 0.5000, -1.0000])}
    """
    if not is_int(layer):
        raise TypeError(f"layer must be an int >= 0 (the block index), got {layer!r}")
    if layer < 0:
        raise ValueError(f"layer must be an int >= 0 (the block index), got {layer}")
    point = _hook_point(hook_point)
    path = _input_path(path, ".npy direction")
    shape, dtype = _npy_header(path)
    if dtype.kind != "f" or dtype.itemsize not in (2, 4, 8) or dtype.shape:
        raise TypeError(
            f"{str(path)!r} holds a {dtype} array; a direction must be float16, float32 or float64"
        )
    if len(shape) != 1 or shape[0] == 0:
        raise ValueError(
            f"{str(path)!r} holds an array of shape {tuple(shape)}; expected a non-empty 1-D [d_model] "
            "array (one layer's direction; squeeze a [1, d_model] array before saving)"
        )
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as err:
        raise ValueError(f"{str(path)!r} is a truncated or corrupt .npy file: {err}") from err
    bad = ~np.isfinite(array)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{str(path)!r} has {int(bad.sum())} non-finite values (first at index {first}: "
            f"{array[first]}); a direction needs finite values"
        )
    largest = float(np.abs(array).max())
    if largest > float(np.finfo(np.float32).max):
        raise ValueError(f"{str(path)!r} has values beyond the float32 range (largest |x| = {largest:g})")
    converted = np.ascontiguousarray(array, dtype=np.float32)
    return {hook_name(int(layer), point): torch.from_numpy(converted)}


def write_numpy_direction(direction: Any, path: Any, name: str = "direction") -> None:
    """Write one direction as a plain ``[d_model]`` float32 ``.npy`` file, at exactly ``path``.

    The counterpart of :func:`read_numpy_direction` (``np.save`` would add ``.npy`` to a name
    without it; this does not).

    Args:
        direction: A 1-D finite floating tensor whose values fit in float32.
        path: The file to write; its folder must exist.
        name: What to call the direction in an error (e.g. its hook name).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     write_numpy_direction(torch.tensor([0.5, -1.0]), f"{tmp}/v.npy")
        ...     read_numpy_direction(f"{tmp}/v.npy", layer=2)
        {'blocks.2.hook_resid_post': tensor([ 0.5000, -1.0000])}
    """
    array = float32_direction(name, direction).numpy()
    path = _output_path(path)
    with path.open("wb") as f:
        np.save(f, array, allow_pickle=False)


def float32_direction(name: str, direction: Any) -> Tensor:
    """``direction`` as a contiguous float32 CPU tensor, as files store it; refuses what float32 cannot hold.

    Args:
        name: What to call the direction in an error (usually its hook name).
        direction: A 1-D finite floating tensor.

    Returns:
        A float32 CPU tensor (a copy unless it already was one).

    Example:
        >>> float32_direction("blocks.1.hook_resid_post", torch.tensor([1.0, 2.0], dtype=torch.float64))
        tensor([1., 2.])
    """
    check_direction(name, direction)
    converted = direction.detach().to(device="cpu", dtype=torch.float32).contiguous()
    if not bool(torch.isfinite(converted).all()):
        largest = float(direction.detach().abs().max())
        raise ValueError(
            f"direction at {name!r} has values beyond the float32 range (largest |x| = {largest:g}, "
            f"float32 holds up to {float(np.finfo(np.float32).max):g}); files store float32, so "
            "scale the vector down before writing it"
        )
    return converted


def _export_arrays(directions: Any) -> dict[int, np.ndarray]:
    """``{layer: float32 array}`` for llama.cpp, refusing what its format cannot hold."""
    if not isinstance(directions, Mapping) or not directions:
        raise ValueError(f"need a non-empty {{hook_name: direction}} mapping, got {directions!r}")
    for name in directions:
        if not isinstance(name, str):
            raise TypeError(f"hook names must be strings, got {name!r}")
    points = {name: parse_hook_name(name) for name in directions}
    bad = [name for name, (_, point) in points.items() if point != "resid_post"]
    if bad:
        raise ValueError(
            f"cannot export hook {bad[0]!r} to a llama.cpp control vector (not exportable: {bad}): "
            "llama.cpp adds a control vector to each block's output, so only "
            "'blocks.<layer>.hook_resid_post' hooks with layer >= 1 are valid"
        )
    arrays: dict[int, np.ndarray] = {}
    for name, direction in directions.items():
        layer = points[name][0]
        if layer == 0:
            raise ValueError(
                f"cannot export hook {name!r}: llama.cpp has no control vector for layer 0 (its loader "
                "refuses 'direction.0'); drop it first, e.g. vector.select(layers_without_0)"
            )
        arrays[layer] = float32_direction(name, direction).numpy()
    sizes = {layer: a.shape[0] for layer, a in arrays.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"directions have different sizes: {sizes}")
    return dict(sorted(arrays.items()))


def _output_path(path: Any) -> Path:
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a str or pathlib.Path, got {type(path).__name__}")
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot save to {str(path)!r}: folder {str(path.parent)!r} does not exist")
    return path


def _hook_point(point: Any) -> str:
    if not isinstance(point, str):
        raise TypeError(f"hook_point must be a string, one of {format_options(HOOK_POINTS)}; got {point!r}")
    return validate_hook_point(point)


def _input_path(path: Any, what: str) -> Path:
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a str or pathlib.Path, got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{what} path {str(path)!r} is a folder; expected a file")
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {str(path)!r} does not exist")
    return path


def _string_field(reader: Any, key: str, path: Path) -> str | None:
    """A string-valued GGUF key, ``None`` when absent; another type is an error."""
    import gguf

    field = reader.fields.get(key)
    if field is None:
        return None
    if not field.types or field.types[0] != gguf.GGUFValueType.STRING or not field.data:
        raise ValueError(f"{str(path)!r}: GGUF key {key!r} must be a string")
    return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")


def _direction_layer(name: str, path: Path) -> int:
    match = _DIRECTION.match(name)
    if match is None:
        raise ValueError(
            f"{str(path)!r}: tensor {name!r} is not a control-vector direction; expected "
            "'direction.<layer>' tensors only (llama.cpp refuses other names)"
        )
    layer = int(match.group(1))
    if layer == 0:
        raise ValueError(
            f"{str(path)!r}: tensor 'direction.0' is invalid; llama.cpp control vectors start at layer 1"
        )
    return layer


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype from a ``.npy`` header, read before loading any data."""
    fmt = np.lib.format
    with path.open("rb") as f:
        try:
            version = fmt.read_magic(f)
        except ValueError as err:
            raise ValueError(
                f"{str(path)!r} is not a .npy file (an .npz archive or another format?): {err}"
            ) from err
        try:
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(f)
            else:
                shape, _, dtype = fmt.read_array_header_2_0(f)
        except ValueError as err:
            raise ValueError(f"{str(path)!r} has an unreadable .npy header: {err}") from err
    return tuple(shape), dtype
