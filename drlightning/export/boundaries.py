"""Turn per-layer entry/exit rotations into merged boundary matrices (pure tensor functions)."""

from __future__ import annotations

import functools
import warnings

import torch
from torch import nn

from ..models.adapters import ArchitectureAdapter
from ..rotation import RotatedLayer
from . import modeling_drlightning as mdl


def boundary_matrix(left: torch.Tensor | None, right: torch.Tensor | None) -> torch.Tensor | None:
    """M = Q_leftᵀ·Q_right (float64) between two layers; None when both sides are unrotated."""
    if left is None and right is None:
        return None
    if left is None:
        return right.double()
    if right is None:
        return left.double().T
    return left.double().T @ right.double()


def merge_error(before: torch.Tensor, after: torch.Tensor, tolerance: float) -> float:
    """Relative change of the logits made by merging the boundaries; above ``tolerance`` a bug."""
    rel = ((after.double() - before.double()).norm() / before.double().norm()).item()
    if not rel <= tolerance:
        raise RuntimeError(f"merging the boundary rotations changed the logits by {rel:.2e} "
                           f"(relative; tolerance {tolerance:.0e}); this is a bug, please report it")
    return rel


def boundary_matrices(rotations: list[torch.Tensor | None]) -> dict[int, torch.Tensor]:
    """Boundary b ∈ 0..L → M_b = Q_{b-1}ᵀ·Q_b (float64); a missing Q counts as the identity.

    Row-vector hidden states enter rotated layer ℓ as h·Q_ℓ and leave it as h·Q_ℓᵀ, so between
    layers the two merge into one matrix. Boundaries where both sides are identity are omitted.
    """
    n = len(rotations)
    mats = {b: boundary_matrix(rotations[b - 1] if b > 0 else None, rotations[b] if b < n else None)
            for b in range(n + 1)}
    return {b: m for b, m in mats.items() if m is not None}


def unwrap_rotated_layers(model: nn.Module, adapter: ArchitectureAdapter) -> list[torch.Tensor | None]:
    """Replace every RotatedLayer by its inner layer; returns each layer's Q (None if unrotated)."""
    layers = adapter.decoder_layers(model)
    rotations: list[torch.Tensor | None] = []
    for i, layer in enumerate(layers):
        if isinstance(layer, RotatedLayer):
            rotations.append(layer.rotation.detach())
            layers[i] = layer.inner
        else:
            rotations.append(None)
    return rotations


class _BoundaryConfig:
    """The drl_* fields that ``install_rotations`` reads (also written to config.json)."""

    def __init__(self, boundaries: list[int], dtype: str, hidden: int, adapter: ArchitectureAdapter):
        self.drl_boundaries = boundaries
        self.drl_rotation_dtype = dtype
        self.hidden_size = hidden
        self.drl_layers_path = adapter.layers
        self.drl_final_norm_path = adapter.final_norm

    def fields(self) -> dict:
        return {k: v for k, v in vars(self).items() if k.startswith("drl_")}


@torch.no_grad()
def install_boundaries(
    model: nn.Module, adapter: ArchitectureAdapter, rotation_dtype: str = "float32"
) -> dict:
    """Convert a model with RotatedLayer wrappers to merged-boundary form, in place.

    Returns the ``drl_*`` config fields ({} when no layer was rotated: the model is then plain).
    """
    if rotation_dtype not in mdl.ROTATION_DTYPES:
        raise ValueError(f"rotation_dtype={rotation_dtype!r}; allowed: {sorted(mdl.ROTATION_DTYPES)}")
    mats = boundary_matrices(unwrap_rotated_layers(model, adapter))
    if not mats:
        return {}
    cfg = _BoundaryConfig(sorted(mats), rotation_dtype, model.config.hidden_size, adapter)
    owner = mdl.install_rotations(model, cfg)
    device = next(model.parameters()).device
    for b, m in mats.items():
        owner.matrix(b).copy_(m.to(device))
    become_drlightning(model, cfg.fields())
    return cfg.fields()


@functools.cache
def _drlightning_subclass(model_cls: type, own: type) -> type:
    """DRLightningForCausalLM over a subclass ``own`` of its base class (keeps ``own``'s methods)."""
    return type("DRLightningForCausalLM", (model_cls, own), {"__module__": model_cls.__module__})


def become_drlightning(model: nn.Module, fields: dict) -> bool:
    """Make ``model`` (its boundary rotations installed) the drlightning model it now is, in place:
    its class becomes DRLightningForCausalLM over its own architecture and its config a
    DRLightningConfig with the ``drl_*`` ``fields``, so that ``model.save_pretrained(d)`` writes a
    directory that reloads to the same model (and plain transformers refuses it without remote
    code). Returns False (with a warning) for a class that is not transformers' own."""
    config = model.config
    base = getattr(config, "base_model_type", None) or config.model_type
    cfg_cls, model_cls = mdl.build_classes(base)
    if isinstance(model, model_cls):
        return True
    own = model_cls.__mro__[1]
    if not isinstance(model, own):
        warnings.warn(f"{type(model).__name__} is not transformers' {own.__name__}: the model keeps "
                      "its class, and its own save_pretrained does not save the boundary rotations; "
                      "save it with drlightning.export.save_model_dir", stacklevel=2)
        return False
    for key, value in fields.items():
        setattr(config, key, value)
    config.base_model_type = base
    config.__class__ = cfg_cls
    if "model_type" in vars(config):  # a config loaded from a file may hold its own copy
        config.model_type = cfg_cls.model_type
    model.__class__ = model_cls if type(model) is own else _drlightning_subclass(model_cls, type(model))
    return True
