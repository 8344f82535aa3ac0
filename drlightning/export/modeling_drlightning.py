"""Modelling code of a drlightning output: a standard causal LM plus merged boundary rotations.

This file is self-contained (torch + transformers only). drlightning copies it next to every saved
model and registers it through ``auto_map``, so
``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`` works without drlightning.

The decoder layers' weights already hold the merged rotations; what remains is one d×d matrix per
layer boundary, applied to the residual stream (row vectors) as ``h ← h · M_b``:
``M_0 = Q_0`` (entry of the first rotated layer), ``M_b = Q_{b-1}ᵀ·Q_b`` between layers and
``M_L = Q_{L-1}ᵀ`` before the final norm. Boundaries without a matrix are the identity.
Loading is strict: a missing, unexpected or mis-shaped tensor is an error.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import torch
from torch import nn
from transformers import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

BASE_MODEL_TYPE = "llama"  # rewritten by drlightning when the file is saved next to a model
MODELING_FILE = "modeling_drlightning.py"
DRL_FIELDS = ("drl_boundaries", "drl_rotation_dtype", "drl_layers_path", "drl_final_norm_path")
ROTATION_DTYPES = {"float32": torch.float32, "float64": torch.float64,
                   "bfloat16": torch.bfloat16, "float16": torch.float16}


class BoundaryRotations(nn.Module):
    """The boundary matrices as buffers ``m{b}``; they keep their dtype under ``.to(dtype)``."""

    def __init__(self, boundaries: list[int], hidden: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.boundaries = list(boundaries)
        self.rotation_dtype = dtype
        for b in self.boundaries:
            self.register_buffer(f"m{b}", torch.eye(hidden, dtype=dtype), persistent=True)

    def matrix(self, b: int) -> torch.Tensor:
        """The matrix applied at boundary ``b``."""
        return getattr(self, f"m{b}")

    def _apply(self, fn, recurse=True):
        # Follow device moves but never change the stored precision of the rotations.
        for name, buf in self._buffers.items():
            if buf is not None:
                target = fn(torch.empty(0, dtype=buf.dtype, device=buf.device)).device
                self._buffers[name] = buf.to(target)
        return self


def rotate_rows(hidden: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``hidden · matrix`` computed in the matrix's dtype, returned in the hidden dtype."""
    return (hidden.to(matrix.dtype) @ matrix).to(hidden.dtype)


def _pre_hook(module, args, kwargs, *, owner: BoundaryRotations, b: int):
    matrix = owner.matrix(b)
    if args:
        return (rotate_rows(args[0], matrix), *args[1:]), kwargs
    kwargs["hidden_states"] = rotate_rows(kwargs["hidden_states"], matrix)
    return args, kwargs


def _get(root: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        root = getattr(root, part)
    return root


def install_rotations(model: nn.Module, config) -> BoundaryRotations:
    """Attach ``model.drl_rotations`` and the forward pre-hooks that apply them."""
    layers = _get(model, config.drl_layers_path)
    n = len(layers)
    bad = [b for b in config.drl_boundaries if not 0 <= b <= n]
    if bad:
        raise ValueError(f"drl_boundaries {bad} out of range 0..{n}")
    dtype = ROTATION_DTYPES[config.drl_rotation_dtype]
    owner = BoundaryRotations(config.drl_boundaries, config.hidden_size, dtype)
    model.drl_rotations = owner
    for b in owner.boundaries:
        target = layers[b] if b < n else _get(model, config.drl_final_norm_path)
        target.register_forward_pre_hook(functools.partial(_pre_hook, owner=owner, b=b),
                                         with_kwargs=True)
    return owner


def check_loading_info(info: dict, where: object = "the checkpoint") -> None:
    """One-line ValueError if ``from_pretrained(..., output_loading_info=True)`` found tensors
    missing (they would be randomly initialised), unexpected (silently dropped) or mis-shaped."""
    parts = []
    for key, what in (("missing_keys", "missing"), ("unexpected_keys", "unexpected"),
                      ("mismatched_keys", "of the wrong shape")):
        names = sorted(k if isinstance(k, str) else k[0] for k in info.get(key) or ())
        if names:
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            parts.append(f"{len(names)} tensor{'s' * (len(names) > 1)} {what} "
                         f"({', '.join(names[:3])}{more})")
    if parts:
        raise ValueError(f"the weights in {where} do not match the model's config: "
                         f"{'; '.join(parts)}; refusing to load a partly random or different model")


def share_weight_conversion(base_model_type: str, model_type: str) -> None:
    """Let ``model_type`` read and write checkpoints as ``base_model_type`` does: transformers keys
    its checkpoint conversions (e.g. Mixture-of-Experts experts saved one by one, held as 3-D
    tensors) by model type, and a drlightning model type is new to it."""
    try:
        from transformers.conversion_mapping import (
            get_checkpoint_conversion_mapping,
            register_checkpoint_conversion_mapping,
        )
    except ImportError:  # a transformers without conversions: keys are used as they are
        return
    mapping = get_checkpoint_conversion_mapping(base_model_type)
    if mapping:
        register_checkpoint_conversion_mapping(model_type, mapping, overwrite=True)


def modeling_source(base_model_type: str) -> str:
    """This file's text with ``BASE_MODEL_TYPE`` set to ``base_model_type``."""
    text = Path(__file__).read_text(encoding="utf-8")
    new, count = re.subn(r"^BASE_MODEL_TYPE = ['\"][^'\"]*['\"]", f"BASE_MODEL_TYPE = {base_model_type!r}",
                         text, count=1, flags=re.M)
    if count != 1:
        raise RuntimeError(f"{__file__} has no BASE_MODEL_TYPE line to rewrite")
    return new


def mark_saved_dir(directory, base_model_type: str, drl_fields: dict | None = None) -> None:
    """Make a saved model directory load as a drlightning model: ``config.json`` gets the
    ``drl_fields``, the drlightning model type, architecture and ``auto_map`` (and loses any
    ``quantization_config``: the weights are plain floats), and this file is written next to it."""
    directory = Path(directory)
    path = directory / "config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg.pop("quantization_config", None)
    cfg.update(drl_fields or {})
    module = MODELING_FILE.removesuffix(".py")
    cfg.update(base_model_type=base_model_type, model_type=f"drlightning_{base_model_type}",
               architectures=["DRLightningForCausalLM"],
               auto_map={"AutoConfig": f"{module}.DRLightningConfig",
                         "AutoModelForCausalLM": f"{module}.DRLightningForCausalLM"})
    (directory / MODELING_FILE).write_text(modeling_source(base_model_type), encoding="utf-8")
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")


@functools.cache
def build_classes(base_model_type: str) -> tuple[type, type]:
    """(config class, causal-LM class) of a drlightning model over ``base_model_type``."""
    base_config = CONFIG_MAPPING[base_model_type]
    base_model = MODEL_FOR_CAUSAL_LM_MAPPING[base_config]
    share_weight_conversion(base_model_type, f"drlightning_{base_model_type}")

    class DRLightningConfig(base_config):
        model_type = f"drlightning_{base_model_type}"

        def __init__(self, drl_boundaries=(), drl_rotation_dtype="float32",
                     drl_layers_path="model.layers", drl_final_norm_path="model.norm",
                     base_model_type=base_model_type, **kwargs):
            self.drl_boundaries = [int(b) for b in drl_boundaries]
            if drl_rotation_dtype not in ROTATION_DTYPES:
                raise ValueError(f"drl_rotation_dtype={drl_rotation_dtype!r}; "
                                 f"allowed: {sorted(ROTATION_DTYPES)}")
            self.drl_rotation_dtype = drl_rotation_dtype
            self.drl_layers_path = drl_layers_path
            self.drl_final_norm_path = drl_final_norm_path
            self.base_model_type = base_model_type
            super().__init__(**kwargs)

    class DRLightningForCausalLM(base_model):
        config_class = DRLightningConfig

        def __init__(self, config) -> None:
            super().__init__(config)
            install_rotations(self, config)

        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            want_info = kwargs.pop("output_loading_info", False)
            model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
            check_loading_info(info, args[0] if args else kwargs.get("pretrained_model_name_or_path"))
            return (model, info) if want_info else model

        def save_pretrained(self, save_directory, *args, **kwargs):
            """Save as transformers does, then make the directory a drlightning model (config
            fields, ``auto_map`` and this modelling file), loadable with ``trust_remote_code``."""
            if kwargs.get("push_to_hub"):
                raise ValueError("save_pretrained(push_to_hub=True) would upload before the "
                                 "modelling file is written: use model.push_to_hub(repo_id)")
            super().save_pretrained(save_directory, *args, **kwargs)
            if kwargs.get("is_main_process", args[0] if args else True):
                fields = {k: getattr(self.config, k) for k in DRL_FIELDS}
                mark_saved_dir(save_directory, self.config.base_model_type, fields)

    DRLightningConfig.__name__ = DRLightningConfig.__qualname__ = "DRLightningConfig"
    DRLightningForCausalLM.__name__ = DRLightningForCausalLM.__qualname__ = "DRLightningForCausalLM"
    return DRLightningConfig, DRLightningForCausalLM


DRLightningConfig, DRLightningForCausalLM = build_classes(BASE_MODEL_TYPE)
