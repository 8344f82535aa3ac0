"""Checks and finishing steps of a run: fingerprint, early pattern check, boundary merge."""

from __future__ import annotations

import torch

from ..export import install_boundaries
from ..export.boundaries import merge_error
from ..layer.step import INVARIANCE_TOLERANCE
from ..models.adapters import ROLES
from ..models.loading import DTYPES
from ..pruning import NO_PRUNING, parse_pattern
from ..rotation import rotation_storage_dtype

LATER_DEFAULTS = {"r1_blocks": 1, "low_memory": False, "objective": "entropy",
                  "rotation_score": "pruner", "permute": False, "guard": False}
"""RotationModule settings added later, with the value that reproduces the earlier behaviour."""


def fingerprint(module, data, opts,
                extra: dict | None = None) -> dict:
    """The settings that shape the per-layer results (a resumed run must match them exactly).

    Settings added after a release are left out while at their default, so run directories made
    before them still resume.
    """
    settings = {k: v for k, v in module.effective_settings().items()
                if LATER_DEFAULTS.get(k, object()) != v}
    run = {"model": opts.model, "gguf_file": opts.gguf_file, "dtype": opts.dtype}
    if getattr(opts, "mode", "sequential") != "sequential":
        run["mode"] = opts.mode
    return {"model": settings, "data": data.protocol(), "run": run, **(extra or {})}


def check_pattern_fits(model, adapter, pattern: str) -> None:
    """Fail early if an N:M pattern does not tile the inputs of every linear of the model."""
    if pattern == NO_PRUNING:
        return
    parsed = parse_pattern(pattern)
    layer = adapter.decoder_layers(model)[0]
    for role in ROLES:
        try:
            parsed.validate(adapter.linear(layer, role).in_features)
        except ValueError as err:
            raise ValueError(f"{err} ({role}_proj of {model.config.model_type})") from None


def boundary_dtype(opts, model_dtype: torch.dtype) -> str:
    """Name of the dtype the merged boundary rotations are stored in ("auto": at least float32)."""
    if opts.rotation_dtype == "auto":
        return str(rotation_storage_dtype(model_dtype)).removeprefix("torch.")
    if opts.rotation_dtype == "model":
        return str(model_dtype).removeprefix("torch.")
    return opts.rotation_dtype


@torch.no_grad()
def finalize_rotations(model, adapter, windows: torch.Tensor, rotation_dtype: str) -> dict:
    """Merge each layer's exit and the next layer's entry rotation into one boundary matrix.

    Self-check: the logits on one calibration window must not move by more than the merge
    tolerance of the coarser of the model and rotation dtypes.
    """
    device = next(model.parameters()).device
    probe = windows[:1].to(device)
    before = model(probe, use_cache=False).logits
    fields = install_boundaries(model, adapter, rotation_dtype)
    after = model(probe, use_cache=False).logits
    rel = merge_error(before, after, merge_tolerance(opts_dtype(model), rotation_dtype))
    return {**fields, "boundary_merge_error": rel}


def merge_tolerance(model_dtype: torch.dtype, rotation_dtype: str) -> float:
    """Largest relative logit change allowed by the boundary merge (the coarser dtype's)."""
    return max(INVARIANCE_TOLERANCE.get(model_dtype, 1e-2),
               INVARIANCE_TOLERANCE.get(DTYPES[rotation_dtype], 1e-2))


def opts_dtype(model) -> torch.dtype:
    """The floating dtype of the model's weights."""
    return next(model.parameters()).dtype
