"""Save a (rotated, pruned) model as a Hugging Face directory and load such directories strictly."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..atomic import write_dir_atomically
from . import modeling_drlightning as mdl

MODELING_FILE = mdl.MODELING_FILE


def is_drlightning(model: nn.Module) -> bool:
    """Whether ``model`` is a drlightning model (boundary rotations that its own save keeps)."""
    return str(getattr(model.config, "model_type", "")).startswith("drlightning_")


def _rewrite_config(directory: Path, drl_fields: dict, base_model_type: str) -> None:
    if drl_fields:
        mdl.mark_saved_dir(directory, base_model_type, drl_fields)
        return
    path = directory / "config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    if cfg.pop("quantization_config", None) is not None:  # the weights are plain floats now
        path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def finish_dir(directory: Path, model: nn.Module, tokenizer, drl_fields: dict) -> None:
    """Tokenizer files and the config (with the drlightning fields and modelling file if rotated)."""
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    base = getattr(model.config, "base_model_type", None) or model.config.model_type
    _rewrite_config(directory, drl_fields, base)


def save_model_dir(model: nn.Module, tokenizer, path: Path, drl_fields: dict | None = None) -> Path:
    """Write ``model`` (+ tokenizer, generation config) to ``path`` as safetensors, atomically.

    A drlightning model is saved by its own ``save_pretrained`` (as ``model.save_pretrained(d)``
    saves it); ``drl_fields`` are then only checked against its config. A plain model with
    ``drl_fields`` (one whose class could not become DRLightningForCausalLM) gets them written.
    """
    drl_fields = drl_fields or {}
    if is_drlightning(model):
        differ = {k: v for k, v in drl_fields.items() if getattr(model.config, k, None) != v}
        if differ:
            raise ValueError(f"drl_fields {differ} differ from the drlightning model's own config")
        drl_fields = {}

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
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..models.loading import DTYPES, check_weight_files

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
    check_weight_files(path)  # a truncated or corrupt file: one line naming it
    try:
        if str(cfg.get("model_type", "")).startswith("drlightning_"):
            _, model_cls = register_auto_classes(cfg["base_model_type"])
            model = model_cls.from_pretrained(path, **kwargs)  # strict itself
        else:
            model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True,
                                                               **kwargs)
            mdl.check_loading_info(info, path)
    except SafetensorError as err:
        raise ValueError(f"a weight file in {path} is truncated or corrupt ({err})") from None
    if device is not None:
        model.to(device)
    model.eval()
    if with_tokenizer:
        return model, AutoTokenizer.from_pretrained(path)
    return model
