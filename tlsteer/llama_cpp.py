"""llama.cpp in the same process, steered by a control vector: does an exported vector act as in tlsteer?

:meth:`~tlsteer.vector.SteeringVector.to_gguf` writes llama.cpp's control-vector format. This
module runs a GGUF model in llama.cpp itself, applies such a file the way ``llama-cli
--control-vector-scaled FILE STRENGTH`` does, and compares the next-token logits and greedy
continuations with tlsteer steering the TransformerLens model (:func:`compare_with_llama_cpp`).

The binding is ``ctypes`` over llama.cpp's C API (``include/llama.h``) in a shared library:
``library=``, else ``$TLSTEER_LLAMA_CPP_LIB`` (a ``libllama.so`` of your own build, say), else the
extension module of the ``xllamacpp`` wheel (``pip install xllamacpp``, a prebuilt CPU llama.cpp
with no dependencies), which exports the whole C API. Parameter structs come from
``llama_*_default_params()`` and go back unread; only ``n_ctx``, the first field of
``llama_context_params``, is set, and the context is checked to have it.

Two things llama.cpp does that the comparison has to match:

* ``common_control_vector_load`` (``common/common.cpp``) reads ``direction.<n>`` into a flat buffer at
  offset ``n_embd * (n - 1)``, times the strength, summed over files; :func:`control_vector_data`
  does the same. ``llama-cli`` then applies layers ``1 .. n_layer`` to every position.
* ``llama_set_adapter_cvec`` copies only the layers its buffer covers and keeps the others from the
  previous call, so a shorter buffer after a longer one leaves stale directions behind;
  :meth:`LlamaCpp.set_control_vector` therefore always passes a buffer for every layer.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

__all__ = [
    "INSTALL_HINT",
    "LIBRARY_ENV",
    "LlamaCpp",
    "LlamaCppComparison",
    "compare_with_llama_cpp",
    "control_vector_data",
    "find_llama_library",
    "greedy_divergences",
    "write_f32_gguf",
    "write_llama_gguf",
]

LIBRARY_ENV = "TLSTEER_LLAMA_CPP_LIB"
"""Environment variable naming a shared library that exports llama.cpp's C API."""

INSTALL_HINT = "pip install xllamacpp"
"""How to get a prebuilt llama.cpp that this module can load."""


class _ByValue(ctypes.Structure):
    """Room for any llama.cpp struct passed or returned by value (all are far smaller than 2 KiB).

    Structs this size travel through memory on every common ABI (a hidden pointer for returns,
    a copy for arguments), so a larger stand-in carries the real struct's bytes unchanged.
    """

    _fields_ = [("words", ctypes.c_uint32 * 512)]


_LOG_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_QUIET = _LOG_CALLBACK(lambda *_: None)
_P, _I32 = ctypes.c_void_p, ctypes.c_int32
_SIGNATURES = {  # the C functions used: argument types, result type
    "llama_log_set": ([_LOG_CALLBACK, _P], None),
    "llama_backend_init": ([], None),
    "llama_model_default_params": ([], _ByValue),
    "llama_context_default_params": ([], _ByValue),
    "llama_model_load_from_file": ([ctypes.c_char_p, _ByValue], _P),
    "llama_init_from_model": ([_P, _ByValue], _P),
    "llama_model_free": ([_P], None),
    "llama_free": ([_P], None),
    "llama_model_n_embd": ([_P], _I32),
    "llama_model_n_layer": ([_P], _I32),
    "llama_model_get_vocab": ([_P], _P),
    "llama_vocab_n_tokens": ([_P], _I32),
    "llama_n_ctx": ([_P], ctypes.c_uint32),
    "llama_set_n_threads": ([_P, _I32, _I32], None),
    "llama_batch_get_one": ([ctypes.POINTER(_I32), _I32], _ByValue),
    "llama_decode": ([_P, _ByValue], _I32),
    "llama_get_logits_ith": ([_P, _I32], ctypes.POINTER(ctypes.c_float)),
    "llama_get_memory": ([_P], _P),
    "llama_memory_clear": ([_P, ctypes.c_bool], None),
    "llama_set_adapter_cvec": ([_P, ctypes.POINTER(ctypes.c_float), ctypes.c_size_t, _I32, _I32, _I32], _I32),
}


def find_llama_library(library: str | Path | None = None) -> Path:
    """The shared library with llama.cpp's C API: ``library``, ``$TLSTEER_LLAMA_CPP_LIB``, or xllamacpp's.

    Raises:
        FileNotFoundError: A library named by argument or environment does not exist.
        ModuleNotFoundError: Nothing names one and ``xllamacpp`` is not installed (the message
            says how to install it).
    """
    named = library if library is not None else os.environ.get(LIBRARY_ENV) or None
    if named is not None:
        path = Path(named).expanduser()
        if not path.is_file():
            source = "library" if library is not None else f"${LIBRARY_ENV}"
            raise FileNotFoundError(f"llama.cpp library {str(path)!r} (from {source}) does not exist")
        return path
    spec = importlib.util.find_spec("xllamacpp")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            found = sorted(Path(folder).glob("xllamacpp.*.so"))
            if found:
                return found[0]
    raise ModuleNotFoundError(
        f"llama.cpp is not available: no library given, ${LIBRARY_ENV} is unset and the xllamacpp "
        f"package is not installed; install it with: {INSTALL_HINT}"
    )


def control_vector_data(files: Sequence[tuple[str | Path, float]], n_embd: int) -> np.ndarray:
    """The flat float32 buffer llama.cpp builds from control-vector files (``common_control_vector_load``).

    ``direction.<n>`` of each file, times its strength, is added at ``[n_embd * (n - 1), n_embd * n)``
    (layer 1 first, no layer 0); the buffer is as long as the highest layer needs.

    Args:
        files: ``(path, strength)`` pairs, as ``--control-vector-scaled`` takes them.
        n_embd: The model's residual width; every direction must have it.

    Example:
        >>> import tempfile
        >>> from tlsteer.vector import SteeringVector
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     SteeringVector({"blocks.2.hook_resid_post": torch.ones(3)}).to_gguf(f"{tmp}/v.gguf")
        ...     control_vector_data([(f"{tmp}/v.gguf", 2.0)], n_embd=3)
        array([0., 0., 0., 2., 2., 2.], dtype=float32)
    """
    import gguf

    data = np.zeros(0, dtype=np.float32)
    for path, strength in files:
        reader = gguf.GGUFReader(str(path))
        for tensor in reader.tensors:
            prefix, _, index = tensor.name.partition(".")
            if prefix != "direction" or not index.isdigit() or int(index) == 0:
                raise ValueError(
                    f"{str(path)!r}: llama.cpp refuses tensor {tensor.name!r} (want direction.<n>, n >= 1)"
                )
            if tensor.tensor_type != gguf.GGMLQuantizationType.F32 or tensor.n_elements != n_embd:
                raise ValueError(
                    f"{str(path)!r}: {tensor.name} must be F32 with {n_embd} values (the model's n_embd), "
                    f"got {tensor.tensor_type.name} with {tensor.n_elements}"
                )
            layer = int(index)
            if data.size < n_embd * layer:
                data = np.concatenate([data, np.zeros(n_embd * layer - data.size, dtype=np.float32)])
            direction = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
            data[n_embd * (layer - 1) : n_embd * layer] += direction * np.float32(strength)
    return data


class LlamaCpp:
    """A GGUF model in llama.cpp (CPU), one sequence at a time, with an optional control vector.

    Example:
        >>> from tlsteer.models import embedded_model_path
        >>> with LlamaCpp(embedded_model_path()) as llama:  # doctest: +SKIP
        ...     plain = llama.logits([1, 9690, 198])
        ...     with llama.control_vector("happy.gguf", strength=8.0):
        ...         steered = llama.logits([1, 9690, 198])
    """

    def __init__(
        self,
        model_path: str | Path,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        library: str | Path | None = None,
    ) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"GGUF model {str(path)!r} does not exist")
        for name, value in (("n_ctx", n_ctx), ("n_threads", 1 if n_threads is None else n_threads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if n_threads is None:
            affinity = getattr(os, "sched_getaffinity", None)
            n_threads = len(affinity(0)) if affinity is not None else os.cpu_count() or 1
        self.library = find_llama_library(library)
        self._lib = lib = _load(self.library)
        self._handles: dict[str, Any] = {"ctx": None, "model": None}
        self._finalizer = weakref.finalize(self, _free, lib, self._handles)
        lib.llama_log_set(_QUIET, None)  # llama.cpp logs to stderr by default; tlsteer never prints
        lib.llama_backend_init()
        model = lib.llama_model_load_from_file(str(path).encode(), lib.llama_model_default_params())
        if not model:
            raise ValueError(f"llama.cpp could not load {str(path)!r} (not a GGUF model it supports?)")
        self._handles["model"] = model
        params = lib.llama_context_default_params()
        params.words[0] = n_ctx  # llama_context_params.n_ctx; checked below
        self._handles["ctx"] = self._ctx = lib.llama_init_from_model(model, params)
        self.n_ctx = int(lib.llama_n_ctx(self._ctx)) if self._ctx else 0
        if self.n_ctx < n_ctx:
            self.close()
            raise RuntimeError(
                f"llama.cpp made a context of {self.n_ctx} tokens for {str(path)!r}, not {n_ctx}"
            )
        lib.llama_set_n_threads(self._ctx, n_threads, n_threads)
        self.n_embd = int(lib.llama_model_n_embd(model))
        self.n_layer = int(lib.llama_model_n_layer(model))
        self.n_vocab = int(lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(model)))

    def __enter__(self) -> LlamaCpp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Free the context and the model (also done on leaving a ``with`` block, or when collected)."""
        self._finalizer()
        self._ctx = None

    def logits(self, tokens: Sequence[int]) -> Float[Tensor, " d_vocab"]:
        """Next-token logits after ``tokens`` (a fresh sequence, no BOS added), float32 on the CPU."""
        return self._decode(self._check_tokens(tokens, 0), fresh=True)

    def greedy(self, tokens: Sequence[int], max_new_tokens: int) -> list[int]:
        """``max_new_tokens`` greedy tokens after ``tokens``, one at a time through the KV cache."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
        logits = self._decode(self._check_tokens(tokens, max_new_tokens), fresh=True)
        new = []
        for step in range(max_new_tokens):
            new.append(int(logits.argmax()))
            if step + 1 < max_new_tokens:
                logits = self._decode(new[-1:], fresh=False)
        return new

    def set_control_vector(self, files: Any, strength: float = 1.0) -> None:
        """Steer with control-vector files from now on, at every position; ``None`` stops steering.

        Args:
            files: A ``.gguf`` path (scaled by ``strength``), a list of ``(path, strength)`` pairs
                (as repeated ``--control-vector-scaled``), or ``None``.
            strength: The multiplier for a single path.
        """
        if self._ctx is None:
            raise RuntimeError("this LlamaCpp is closed")
        if files is None:
            if self._lib.llama_set_adapter_cvec(self._ctx, None, 0, self.n_embd, -1, -1) != 0:
                raise RuntimeError("llama.cpp refused to clear the control vector")
            return
        pairs = [(files, float(strength))] if isinstance(files, (str, Path)) else list(files)
        data = control_vector_data(pairs, self.n_embd)
        if data.size > self.n_embd * (self.n_layer - 1):
            raise ValueError(
                f"the control vector reaches layer {data.size // self.n_embd} but the model's layers are "
                f"0 .. {self.n_layer - 1} (llama.cpp would skip it)"
            )
        full = np.zeros(self.n_embd * (self.n_layer - 1), dtype=np.float32)  # every layer: see module doc
        full[: data.size] = data
        pointer = full.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        if self._lib.llama_set_adapter_cvec(self._ctx, pointer, full.size, self.n_embd, 1, self.n_layer) != 0:
            raise RuntimeError("llama.cpp refused the control vector (n_embd mismatch?)")

    @contextlib.contextmanager
    def control_vector(self, files: Any, strength: float = 1.0) -> Iterator[LlamaCpp]:
        """:meth:`set_control_vector` inside a ``with`` block; unsteered again on exit."""
        self.set_control_vector(files, strength)
        try:
            yield self
        finally:
            self.set_control_vector(None)

    def _check_tokens(self, tokens: Sequence[int], room: int) -> list[int]:
        if self._ctx is None:
            raise RuntimeError("this LlamaCpp is closed")
        ids = [int(t) for t in tokens]
        if not ids:
            raise ValueError("tokens must be a non-empty list of token ids")
        bad = [t for t in ids if not 0 <= t < self.n_vocab]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside the vocabulary (0 .. {self.n_vocab - 1})")
        if len(ids) + room > self.n_ctx:
            raise ValueError(f"{len(ids)} tokens plus {room} new ones exceed the context of {self.n_ctx}")
        return ids

    def _decode(self, ids: list[int], fresh: bool) -> Tensor:
        lib = self._lib
        if fresh:
            lib.llama_memory_clear(lib.llama_get_memory(self._ctx), True)
        array = (ctypes.c_int32 * len(ids))(*ids)
        status = lib.llama_decode(self._ctx, lib.llama_batch_get_one(array, len(ids)))
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status} on {len(ids)} tokens")
        row = lib.llama_get_logits_ith(self._ctx, -1)
        return torch.from_numpy(np.ctypeslib.as_array(row, shape=(self.n_vocab,)).copy())


def _free(lib: Any, handles: dict[str, Any]) -> None:
    if handles["ctx"]:
        lib.llama_free(handles["ctx"])
    if handles["model"]:
        lib.llama_model_free(handles["model"])
    handles["ctx"] = handles["model"] = None


def _load(path: Path) -> Any:
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as err:
        raise OSError(f"cannot load llama.cpp library {str(path)!r}: {err}") from err
    missing = [name for name in _SIGNATURES if not hasattr(lib, name)]
    if missing:
        raise OSError(
            f"{str(path)!r} does not export llama.cpp's C API as this module needs it (missing {missing}); "
            f"an older or newer llama.cpp? A current one: {INSTALL_HINT}"
        )
    for name, (args, result) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, result
    return lib


def _refuse(what: str, model: HookedTransformer) -> NoReturn:
    raise ValueError(
        f"write_llama_gguf writes Llama-architecture models only; {model.cfg.model_name!r} has {what}"
    )


def write_llama_gguf(model: HookedTransformer, target: str | Path, quantization: str = "F32") -> Path:
    """Write a Llama-architecture ``HookedTransformer`` as a GGUF model llama.cpp runs.

    For models that exist only as TransformerLens weights, such as
    :func:`tlsteer.models.tiny_model` (``"llama"``): RMS norms, rotary positions over whole heads,
    a gated MLP and no biases. The query and key rows are permuted into llama.cpp's rotary layout
    (as ``convert_hf_to_gguf.py`` does). Token ids go to llama.cpp as tlsteer tokenizes them; the
    vocabulary is stored so that the file loads, never to tokenize.

    Args:
        model: The model.
        target: The file to write.
        quantization: ``"F32"`` (the weights as they are) or ``"Q4_1"`` (every matrix quantised,
            as in the embedded model's file; rows must be multiples of 32 values).

    Example:
        >>> write_llama_gguf(tiny_model("llama"), "tiny.gguf")  # doctest: +SKIP
    """
    import einops
    import gguf

    from tlsteer.tokens import model_tokenizer

    kinds = {"F32": gguf.LlamaFileType.ALL_F32, "Q4_1": gguf.LlamaFileType.MOSTLY_Q4_1}
    if quantization not in kinds:
        raise ValueError(f"quantization must be one of {list(kinds)}, got {quantization!r}")
    cfg = model.cfg
    checks = {
        "normalization_type": (cfg.normalization_type, "RMS"),
        "positional_embedding_type": (cfg.positional_embedding_type, "rotary"),
        "gated_mlp": (cfg.gated_mlp, True),
        "final_rms": (cfg.final_rms, True),
        "rotary_dim": (cfg.rotary_dim, cfg.d_head),
    }
    for name, (value, wanted) in checks.items():
        if value != wanted:
            _refuse(f"{name}={value!r} (needs {wanted!r})", model)
    biases = [
        n
        for n, p in model.named_parameters()
        if n.rsplit(".", 1)[-1].lstrip("_").startswith("b_") and p.any()
    ]
    if biases:
        _refuse(f"nonzero biases ({biases[0]!r})", model)
    if cfg.d_mlp is None or cfg.rotary_dim is None:  # a gated MLP has d_mlp; rotary_dim is checked above
        _refuse(f"d_mlp={cfg.d_mlp!r} and rotary_dim={cfg.rotary_dim!r}", model)
    n_kv = cfg.n_key_value_heads or cfg.n_heads

    def rotary_rows(w: Tensor, n_head: int) -> Tensor:
        """Rotate-half rows (TransformerLens, transformers) to llama.cpp's interleaved pairs."""
        if cfg.rotary_adjacent_pairs:
            return w
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    def put(name: str, t: Tensor) -> None:
        data = np.ascontiguousarray(t.detach().float().cpu().numpy())
        if quantization == "F32" or data.ndim < 2:  # norms stay float32, as in llama.cpp's own files
            writer.add_tensor(name, data)
            return
        if data.shape[-1] % 32:
            raise ValueError(f"{name} has rows of {data.shape[-1]} values; Q4_1 needs a multiple of 32")
        kind = gguf.GGMLQuantizationType.Q4_1
        writer.add_tensor(name, gguf.quants.quantize(data, kind), raw_dtype=kind)

    writer = gguf.GGUFWriter(str(target), "llama")
    writer.add_name(cfg.model_name or "tlsteer model")
    writer.add_context_length(cfg.n_ctx)
    writer.add_embedding_length(cfg.d_model)
    writer.add_block_count(cfg.n_layers)
    writer.add_feed_forward_length(cfg.d_mlp)
    writer.add_head_count(cfg.n_heads)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(cfg.rotary_dim)
    writer.add_rope_freq_base(float(cfg.rotary_base))
    writer.add_layer_norm_rms_eps(float(cfg.eps))
    writer.add_file_type(kinds[quantization])
    tok = model_tokenizer(model)
    vocab = [str(tok.convert_ids_to_tokens(i)) for i in range(cfg.d_vocab)]
    special = set(getattr(tok, "all_special_ids", ()))
    writer.add_tokenizer_model("llama")
    writer.add_token_list(vocab)
    writer.add_token_scores([0.0] * len(vocab))
    writer.add_token_types([3 if i in special else 1 for i in range(len(vocab))])  # 3: control
    for add, token_id in (
        (writer.add_bos_token_id, tok.bos_token_id),
        (writer.add_eos_token_id, tok.eos_token_id),
        (writer.add_pad_token_id, tok.pad_token_id),
    ):
        if isinstance(token_id, int):  # an id, or None when unset (transformers types it loosely)
            add(token_id)
    writer.add_add_bos_token(False)
    put("token_embd.weight", model.W_E)
    for i, block in enumerate(model.blocks):
        attn = block.attn
        tensors = {
            "attn_norm": block.ln1.w,
            "attn_q": rotary_rows(einops.rearrange(attn.W_Q, "n m h -> (n h) m"), cfg.n_heads),
            "attn_k": rotary_rows(
                einops.rearrange(attn.W_K[:: cfg.n_heads // n_kv], "n m h -> (n h) m"), n_kv
            ),
            "attn_v": einops.rearrange(attn.W_V[:: cfg.n_heads // n_kv], "n m h -> (n h) m"),
            "attn_output": einops.rearrange(attn.W_O, "n h m -> m (n h)"),
            "ffn_norm": block.ln2.w,
            "ffn_gate": block.mlp.W_gate.T,
            "ffn_up": block.mlp.W_in.T,
            "ffn_down": block.mlp.W_out.T,
        }
        for name, tensor in tensors.items():
            put(f"blk.{i}.{name}.weight", tensor)
    # torch types a submodule's attribute as Tensor | Module; ln_final.w is the RMS norm's weight
    put("output_norm.weight", model.ln_final.w)  # pyright: ignore[reportArgumentType]
    put("output.weight", model.W_U.T)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(target)


def write_f32_gguf(source: str | Path, target: str | Path) -> Path:
    """Copy a GGUF model with every tensor dequantised to float32 (as tlsteer's weights are).

    llama.cpp runs a quantised model with quantised weights and 8-bit activations; the copy runs the
    weights ``load_model`` gives TransformerLens, which isolates how the vector is applied.
    """
    import gguf

    reader = gguf.GGUFReader(str(source))
    writer = gguf.GGUFWriter(str(target), reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        kind = field.types[0]
        value = int(gguf.LlamaFileType.ALL_F32) if key == "general.file_type" else field.contents()
        writer.add_key_value(
            key, value, kind, sub_type=field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        )
    for tensor in reader.tensors:
        weights = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        writer.add_tensor(tensor.name, np.ascontiguousarray(weights, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(target)


@dataclass(frozen=True)
class LlamaCppComparison:
    """Per prompt: steered minus unsteered last-position logits (``changes_*``), their Pearson r,
    the same for the two unsteered runs, and the steered greedy continuations."""

    multiplier: float
    correlations: tuple[float, ...]
    changes_tlsteer: Float[Tensor, "prompt d_vocab"]
    changes_llama: Float[Tensor, "prompt d_vocab"]
    unsteered_correlations: tuple[float, ...]
    unsteered_max_abs_diff: float
    greedy_tlsteer: tuple[tuple[int, ...], ...]
    greedy_llama: tuple[tuple[int, ...], ...]

    @property
    def greedy_same(self) -> tuple[bool, ...]:
        return tuple(a == b for a, b in zip(self.greedy_tlsteer, self.greedy_llama, strict=True))


def compare_with_llama_cpp(
    model: HookedTransformer,
    llama: LlamaCpp,
    vector: Any,
    multiplier: float,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 20,
    llama_vector: Any = None,
) -> LlamaCppComparison:
    """Steer ``model`` with tlsteer and ``llama`` with the exported vector; compare on the same tokens.

    tlsteer adds ``multiplier * vector`` at every position (``min_token_index=0``), as llama.cpp
    does; llama.cpp reads the vector from the file :meth:`~tlsteer.vector.SteeringVector.to_gguf`
    writes, at strength ``multiplier``. Token ids come from ``model``'s tokenizer for both.

    Args:
        model: The TransformerLens model whose weights ``llama`` holds.
        llama: The same model in llama.cpp.
        vector: A :class:`~tlsteer.vector.SteeringVector` of ``resid_post`` directions, layers >= 1.
        multiplier: The strength for both.
        prompts: Full prompt texts (already chat-formatted where wanted).
        max_new_tokens: Greedy tokens to compare per prompt (0: no greedy comparison).
        llama_vector: What llama.cpp runs instead of ``vector`` (a control, e.g. one layer off).
    """
    from tlsteer.decode import generate_tokens
    from tlsteer.tokens import tokenize

    ids = [tokenize(model, prompt) for prompt in prompts]

    def last(i: list[int]) -> Tensor:
        return model(torch.tensor([i], device=model.cfg.device))[0, -1].float().cpu()

    with torch.no_grad():
        plain = torch.stack([last(i) for i in ids])
        with vector.steering(multiplier).apply(model):
            steered = torch.stack([last(i) for i in ids])
    ours = (
        generate_tokens(
            model,
            list(prompts),
            vector.steering(multiplier),
            max_new_tokens=max_new_tokens,
            stop_at_eos=False,
        )
        if max_new_tokens
        else None
    )
    llama_plain = torch.stack([llama.logits(i) for i in ids])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vector.gguf"
        (vector if llama_vector is None else llama_vector).to_gguf(path)
        with llama.control_vector(path, multiplier):
            llama_steered = torch.stack([llama.logits(i) for i in ids])
            theirs = [tuple(llama.greedy(i, max_new_tokens)) for i in ids] if max_new_tokens else []
    ours_change, theirs_change = steered - plain, llama_steered - llama_plain
    return LlamaCppComparison(
        multiplier=float(multiplier),
        correlations=_row_correlations(ours_change, theirs_change),
        changes_tlsteer=ours_change,
        changes_llama=theirs_change,
        unsteered_correlations=_row_correlations(plain, llama_plain),
        unsteered_max_abs_diff=float((plain - llama_plain).abs().max()),
        greedy_tlsteer=tuple(tuple(t) for t in ours.new_tokens) if ours is not None else (),
        greedy_llama=tuple(theirs),
    )


def _row_correlations(a: Tensor, b: Tensor) -> tuple[float, ...]:
    a = a.double() - a.double().mean(dim=1, keepdim=True)
    b = b.double() - b.double().mean(dim=1, keepdim=True)
    r = (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1))
    return tuple(float(x) for x in r)


def greedy_divergences(
    model: HookedTransformer,
    vector: Any,
    multiplier: float,
    prompts: Sequence[str],
    comparison: LlamaCppComparison,
) -> list[dict[str, Any]]:
    """Where each differing greedy continuation of a comparison first differs, and how close
    tlsteer's top two tokens were there.

    Per prompt whose continuations differ: its index, the first differing step, the gap between
    tlsteer's two largest logits at that step, and whether llama.cpp took tlsteer's runner-up (a
    near tie broken the other way, not a different steering).

    Example:
        >>> c = compare_with_llama_cpp(model, llama, vec, 8.0, prompts)  # doctest: +SKIP
        >>> greedy_divergences(model, vec, 8.0, prompts, c)  # doctest: +SKIP
    """
    from tlsteer.decode import generate_tokens

    out = []
    pairs = zip(comparison.greedy_tlsteer, comparison.greedy_llama, strict=True)
    for k, (ours, theirs) in enumerate(pairs):
        if ours == theirs:
            continue
        step = next(i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b)
        again = generate_tokens(
            model,
            [prompts[k]],
            vector.steering(multiplier),
            max_new_tokens=step + 1,
            stop_at_eos=False,
            keep_logits=True,
        )
        assert again.step_logits is not None  # keep_logits=True keeps them
        top = again.step_logits[0][step].topk(2)
        out.append(
            {
                "prompt": k,
                "step": step,
                "tlsteer_top2_gap": round(float(top.values[0] - top.values[1]), 5),
                "llama_took_tlsteer_runner_up": theirs[step] == int(top.indices[1]),
            }
        )
    return out
