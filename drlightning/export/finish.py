"""Finish a rotated model for saving, in memory: merge each layer boundary's two rotations into
one matrix (per-layer R1), or drop the identical rotations and absorb the shared Q into the
embeddings and lm_head (shared R1: a standard checkpoint). Each step checks the logits on a probe
window. The layer-by-layer export does the same shard by shard (:mod:`.sharded`)."""

from __future__ import annotations

import torch
from torch import nn

from ..layer.step import INVARIANCE_TOLERANCE
from ..models.adapters import ArchitectureAdapter
from ..models.loading import DTYPES
from ..rotation import RotatedLayer, rotation_storage_dtype
from ..rotation.orthogonal import in_precision
from ..rotation.shared import absorb_ends
from .boundaries import install_boundaries, merge_error

ROTATION_DTYPES = ("auto", "model", *DTYPES)
"""``run.export.rotation_dtype``: at least float32, the model's dtype, or a dtype name."""


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of the model's weights."""
    return next(model.parameters()).dtype


def boundary_dtype(setting: str, weights: torch.dtype) -> str:
    """Name of the dtype the merged boundary rotations are stored in, for ``setting``
    (``run.export.rotation_dtype``) and a model whose weights are ``weights``."""
    if setting == "auto":
        return str(rotation_storage_dtype(weights)).removeprefix("torch.")
    if setting == "model":
        return str(weights).removeprefix("torch.")
    return setting


def merge_tolerance(weights: torch.dtype, rotation_dtype: str) -> float:
    """Largest relative logit change allowed by the boundary merge (the coarser dtype's)."""
    return max(INVARIANCE_TOLERANCE.get(weights, 1e-2),
               INVARIANCE_TOLERANCE.get(DTYPES[rotation_dtype], 1e-2))


@torch.no_grad()
def finalize_rotations(model: nn.Module, adapter: ArchitectureAdapter, probe: torch.Tensor,
                       rotation_dtype: str) -> dict:
    """Merge each layer's exit and the next layer's entry rotation into one boundary matrix.

    Self-check: the logits on ``probe`` (one calibration window) must not move by more than the
    merge tolerance of the coarser of the model and rotation dtypes.
    """
    probe = probe.to(next(model.parameters()).device)
    before = model(probe, use_cache=False).logits
    fields = install_boundaries(model, adapter, rotation_dtype)
    after = model(probe, use_cache=False).logits
    rel = merge_error(before, after, merge_tolerance(model_dtype(model), rotation_dtype))
    return {**fields, "boundary_merge_error": rel}


@torch.no_grad()
def to_standard(model: nn.Module, adapter: ArchitectureAdapter, q: torch.Tensor,
                probe: torch.Tensor) -> dict:
    """Drop every layer's (identical) entry/exit rotation and absorb Q into the embeddings and
    lm_head; the logits on ``probe`` must stay within float tolerance. Returns export fields."""
    device = next(model.parameters()).device
    q, probe = q.to(device), probe.to(device)
    layers = adapter.decoder_layers(model)
    before = model(probe, use_cache=False).logits.double()
    q = in_precision(q, rotation_storage_dtype(model_dtype(model)))  # as the layers merged it
    for i, layer in enumerate(layers):
        if not isinstance(layer, RotatedLayer) or not torch.equal(
                layer.rotation.cpu(), q.cpu().to(layer.rotation.dtype)):
            raise RuntimeError(f"layer {i} does not carry the shared rotation; cannot export a "
                               "standard checkpoint")
        layers[i] = layer.inner
    fields = absorb_ends(model, adapter, q)
    after = model(probe, use_cache=False).logits.double()
    rel = ((after - before).norm() / before.norm()).item()
    return {"r1": "shared", **fields, "standard_merge_error": rel}
