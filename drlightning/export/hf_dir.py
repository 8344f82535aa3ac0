"""Save a (rotated, pruned) model as a Hugging Face directory and load such directories strictly."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..atomic import write_dir_atomically
from . import modeling_drlightning as mdl

MODELING_FILE = "modeling_drlightning.py"


def _modeling_source(base_model_type: str) -> str:
    text = Path(mdl.__file__).read_text(encoding="utf-8")
    line = 'BASE_MODEL_TYPE = "llama"'
    assert line in text, "modelling file template changed"
    return text.replace(line, f"BASE_MODEL_TYPE = {base_model_type!r}", 1)


def _rewrite_config(directory: Path, drl_fields: dict, base_model_type: str) -> None:
    path = directory / "config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg.pop("quantization_config", None)
    if drl_fields:
        module = MODELING_FILE.removesuffix(".py")
        cfg.update(drl_fields)
        cfg["base_model_type"] = base_model_type
        cfg["model_type"] = f"drlightning_{base_model_type}"
        cfg["architectures"] = ["DRLightningForCausalLM"]
        cfg["auto_map"] = {"AutoConfig": f"{module}.DRLightningConfig",
                           "AutoModelForCausalLM": f"{module}.DRLightningForCausalLM"}
        (directory / MODELING_FILE).write_text(_modeling_source(base_model_type), encoding="utf-8")
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def finish_dir(directory: Path, model: nn.Module, tokenizer, drl_fields: dict) -> None:
    """Tokenizer files and the config (with the drlightning fields and modelling file if rotated)."""
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    base = getattr(model.config, "base_model_type", None) or model.config.model_type
    _rewrite_config(directory, drl_fields, base)


def save_model_dir(model: nn.Module, tokenizer, path: Path, drl_fields: dict) -> Path:
    """Write ``model`` (+ tokenizer, generation config) to ``path`` as safetensors, atomically."""

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        finish_dir(tmp, model, tokenizer, drl_fields)

    return write_dir_atomically(path, write)


def register_auto_classes(base_model_type: str) -> tuple[type, type]:
    """Register the drlightning classes over ``base_model_type`` with transformers' Auto classes
    (so in-process tools such as lm-eval's HFLM can load saved directories without remote code)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg_cls, model_cls = mdl.build_classes(base_model_type)
    try:
        AutoConfig.register(cfg_cls.model_type, cfg_cls, exist_ok=True)
        AutoModelForCausalLM.register(cfg_cls, model_cls, exist_ok=True)
    except TypeError:  # older signatures without exist_ok
        pass
    return cfg_cls, model_cls


def load_pretrained(path: str | Path, dtype: str | torch.dtype | None = None,
                    device: str | torch.device | None = None, with_tokenizer: bool = False):
    """Load a drlightning output (or any local safetensors causal LM) strictly, no remote code.

    Returns the model in eval mode (and ``(model, tokenizer)`` with ``with_tokenizer=True``).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..models.loading import DTYPES

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} holds no config.json (expected a saved model directory)")
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r} is not one of {sorted(DTYPES)}")
        dtype = DTYPES[dtype]
    cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    kwargs = {"use_safetensors": True, "dtype": dtype or "auto"}
    if dtype == torch.float64 and (cfg.get("num_local_experts") or cfg.get("num_experts")):
        kwargs["experts_implementation"] = "eager"  # grouped_mm has no float64 kernel
    if str(cfg.get("model_type", "")).startswith("drlightning_"):
        _, model_cls = register_auto_classes(cfg["base_model_type"])
        model = model_cls.from_pretrained(path, **kwargs)
    else:
        model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True, **kwargs)
        mdl.check_loading_info(info)
    if device is not None:
        model.to(device)
    model.eval()
    if with_tokenizer:
        return model, AutoTokenizer.from_pretrained(path)
    return model
