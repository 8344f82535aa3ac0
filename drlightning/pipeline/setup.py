"""Checks and finishing steps of a run: option checks, fingerprint, pattern check, boundary merge."""

from __future__ import annotations

import torch

from ..export import install_boundaries
from ..export.boundaries import merge_error
from ..layer.step import INVARIANCE_TOLERANCE
from ..models.adapters import ROLES
from ..models.loading import DTYPES
from ..pruning import NO_PRUNING, parse_pattern
from ..rotation import rotation_storage_dtype
from .options import RunOptions
from .parallel import SCHEDULES
from .state import LATER_DEFAULTS


def check_options(opts: RunOptions, module) -> None:
    """Refuse run options that are invalid on their own or with the rotation settings."""
    if opts.export.rotation_dtype not in ("auto", "model", *DTYPES):
        raise ValueError(f"run.export.rotation_dtype={opts.export.rotation_dtype!r}; allowed: "
                         f"'auto', 'model', {', '.join(map(repr, DTYPES))}")
    if opts.launch.mode not in SCHEDULES:
        raise ValueError(f"run.launch.mode={opts.launch.mode!r}; allowed: "
                         f"{', '.join(map(repr, SCHEDULES))}")
    if opts.launch.mode == "parallel" and module.hparams.steps == 0:
        raise ValueError("run.launch.mode='parallel' trains rotations; model.steps=0 (the plain "
                         "pruner) has none — use run.launch.mode='sequential'")
    if module.hparams.get("r1", "per_layer") == "shared" and opts.launch.mode != "sequential":
        raise ValueError("model.r1='shared' learns one rotation for all layers at once, which "
                         "run.launch.mode='parallel' does not split; use run.launch.mode='sequential'")
    if opts.monitor.picture_role not in ROLES:
        raise ValueError(f"run.monitor.picture_role={opts.monitor.picture_role!r}; allowed: "
                         f"{', '.join(ROLES)}")
    check_layerwise_options(opts)


def check_layerwise_options(opts: RunOptions) -> None:
    """Refuse settings that need the whole model in memory."""
    if not opts.launch.layerwise:
        return
    if opts.eval.zero_shot:
        raise ValueError(f"run.eval.zero_shot={opts.eval.zero_shot!r} needs the whole model in "
                         "memory, which run.launch.layerwise=true avoids; leave zero_shot empty "
                         "and run `drlightning eval` on the saved model where it fits")
    if not opts.export.save:
        raise ValueError("run.launch.layerwise=true writes the model shard by shard and evaluates "
                         "the saved shards; run.export.save must be true")


def resolve_device(name: str) -> torch.device:
    """``auto`` → the first CUDA device if present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def fingerprint(module, data, opts,
                extra: dict | None = None) -> dict:
    """The settings that shape the per-layer results (a resumed run must match them exactly).

    Settings added after a release are left out while at their default, so run directories made
    before them still resume.
    """
    settings = {k: v for k, v in module.effective_settings().items()
                if LATER_DEFAULTS.get(k, object()) != v}
    run = {"model": opts.model, "gguf_file": opts.gguf_file, "dtype": opts.dtype}
    if opts.launch.mode != "sequential":
        run["mode"] = opts.launch.mode
    return {"model": settings, "data": data.protocol(), "run": run, **(extra or {})}


def check_pattern_fits(widths: dict[str, int], model_type: str, pattern: str) -> None:
    """Fail early if an N:M pattern does not tile the input width of every linear role."""
    if pattern == NO_PRUNING:
        return
    parsed = parse_pattern(pattern)
    for role in ROLES:
        try:
            parsed.validate(widths[role])
        except ValueError as err:
            raise ValueError(f"{err} ({role}_proj of {model_type})") from None


def boundary_dtype(opts, model_dtype: torch.dtype) -> str:
    """Name of the dtype the merged boundary rotations are stored in ("auto": at least float32)."""
    if opts.export.rotation_dtype == "auto":
        return str(rotation_storage_dtype(model_dtype)).removeprefix("torch.")
    if opts.export.rotation_dtype == "model":
        return str(model_dtype).removeprefix("torch.")
    return opts.export.rotation_dtype


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
