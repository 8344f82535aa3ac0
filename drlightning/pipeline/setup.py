"""Checks of a run before it starts: option checks, fingerprint, pattern check, device."""

from __future__ import annotations

import os

import torch

from ..eval.checks import check_eval_fields
from ..export.finish import ROTATION_DTYPES
from ..lightning.rotation_settings import RotationSettings
from ..models.adapters import ROLES
from ..pruning import NO_PRUNING, parse_pattern
from .options import RunOptions
from .state import LATER_DEFAULTS

LAUNCH_MODES = ("sequential", "parallel")
"""``run.launch.mode``: rotations learned layer after layer, or all first over torchrun ranks."""


def check_options(opts: RunOptions, settings: RotationSettings, held_out: int = 0) -> None:
    """Refuse run options that are invalid on their own or with the rotation settings."""
    check_eval_fields(opts.eval)
    if opts.export.rotation_dtype not in ROTATION_DTYPES:
        raise ValueError(f"run.export.rotation_dtype={opts.export.rotation_dtype!r}; allowed: "
                         f"{', '.join(map(repr, ROTATION_DTYPES))}")
    if opts.launch.mode not in LAUNCH_MODES:
        raise ValueError(f"run.launch.mode={opts.launch.mode!r}; allowed: "
                         f"{', '.join(map(repr, LAUNCH_MODES))}")
    if opts.launch.mode == "parallel" and settings.steps == 0:
        raise ValueError("run.launch.mode='parallel' trains rotations; model.steps=0 (the plain "
                         "pruner) has none — use run.launch.mode='sequential'")
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and (opts.launch.mode != "parallel" or settings.r1 == "shared"):
        raise ValueError(f"this process is one of WORLD_SIZE={world} processes of a launch "
                         "(torchrun); only run.launch.mode='parallel' with a per-layer R1 splits "
                         "its work over processes — every other run is one process: start it "
                         "without torchrun, or set run.launch.mode=parallel")
    if settings.r1 == "shared" and opts.launch.mode != "sequential":
        raise ValueError("model.r1='shared' learns one rotation for all layers at once, which "
                         "run.launch.mode='parallel' does not split; use run.launch.mode='sequential'")
    if opts.monitor.picture_role not in ROLES:
        raise ValueError(f"run.monitor.picture_role={opts.monitor.picture_role!r}; allowed: "
                         f"{', '.join(ROLES)}")
    if held_out and settings.holdout > 0:
        raise ValueError(f"data.held_out={held_out} draws extra held-out windows and "
                         f"model.holdout={settings.holdout!r} holds a share of the others out: "
                         "choose one (set model.holdout=0 or data.held_out=0)")
    if settings.refit == "layer":
        need_held_out("model.refit='layer' stops early on held-out calibration windows", settings,
                      held_out)
    if settings.best_on == "held_out":
        need_held_out("model.best_on='held_out' keeps each fit's iterate on held-out windows",
                      settings, held_out)
    if settings.refit == "layer" and opts.dtype not in ("float32", "float64"):
        raise ValueError(f"model.refit='layer' trains the kept weights in the model's dtype and "
                         f"run.dtype={opts.dtype!r} rounds its small Adam steps away: use "
                         "run.dtype=float32 (or another refit)")
    check_judge(opts, settings, held_out)
    check_layerwise_options(opts)


def need_held_out(what: str, settings: RotationSettings, held_out: int) -> None:
    """Refuse ``what`` (a setting that decides on held-out windows) when none are held out."""
    if settings.holdout <= 0 and not held_out:
        raise ValueError(f"{what}; model.holdout={settings.holdout!r} and data.held_out=0 hold "
                         "none out: draw extra ones (e.g. data.held_out=4) or hold a share out "
                         "(e.g. model.holdout=0.125)")


def check_judge(opts: RunOptions, settings: RotationSettings, held_out: int = 0) -> None:
    """The model-wide judge needs held-out windows, rotations to judge and the whole model."""
    if not opts.judge:
        return
    if settings.steps == 0:
        raise ValueError("run.judge=true compares DenoiseRotator's model with the plain pruner's; "
                         "model.steps=0 is the plain pruner: set model.steps > 0 or run.judge=false")
    need_held_out("run.judge=true decides on calibration windows no fit saw", settings, held_out)
    if opts.launch.layerwise:
        raise ValueError("run.judge=true measures both finished models on the held-out windows "
                         "in memory; run.launch.layerwise=true does not hold the model: use one "
                         "or the other")
    if opts.launch.mode != "sequential":
        raise ValueError(f"run.judge=true runs in run.launch.mode='sequential' only, not "
                         f"{opts.launch.mode!r}")


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


def fingerprint(settings: RotationSettings, data, opts: RunOptions,
                extra: dict | None = None) -> dict:
    """The settings that shape the per-layer results (a resumed run must match them exactly).

    Settings added after a release are left out while at their default, so run directories made
    before them still resume.
    """
    held = settings.holdout > 0 or data.held_out > 0
    effective = {**settings.effective(), "best_on": settings.best_on_used(held)}
    shaping = {k: v for k, v in effective.items() if LATER_DEFAULTS.get(k, object()) != v}
    run = {"model": opts.model, "gguf_file": opts.gguf_file, "dtype": opts.dtype}
    if opts.launch.mode != "sequential":
        run["mode"] = opts.launch.mode
    return {"model": shaping, "data": data.protocol(), "run": run, **(extra or {})}


def check_pattern_fits(widths: dict[str, int], model_type: str, pattern: str) -> None:
    """Fail early if an N:M pattern does not tile the input width of every linear role."""
    if pattern == NO_PRUNING:
        return
    parsed = parse_pattern(pattern)
    for role, width in widths.items():
        try:
            parsed.validate(width)
        except ValueError as err:
            name = "every expert's down_proj" if role.endswith("@") else f"{role}_proj"
            raise ValueError(f"{err} ({name} of {model_type})") from None
