"""The Trainer of each layer's rotation training, made from the config's ``trainer:`` template."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from lightning import Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from ..lightning.rotation_settings import RotationSettings
from .options import RunOptions

TRAINER_DEFAULTS = {
    "accelerator": "auto",
    "devices": 1,
    "precision": "32-true",
    "logger": False,
    "enable_checkpointing": False,
    "enable_model_summary": False,
    "log_every_n_steps": 1,  # per-step objective curves in TensorBoard, step 0 included
    "enable_progress_bar": False,
}
"""The template of each layer's Trainer before the config's ``trainer:`` section."""

BAD_PRECISIONS = ("bf16-true", "16-true", "bf16", "16", "half", "transformer-engine")


def check_precision(precision) -> None:
    """Refuse precisions that would cast the frozen weights/Hessians of the objective to 16 bits."""
    if str(precision) in BAD_PRECISIONS:
        raise ValueError(f"trainer.precision={precision!r} is not allowed for rotation training "
                         "(it casts frozen weights and Hessians to 16 bits); use 32-true or bf16-mixed")


def check_logger(logger) -> None:
    """``trainer.logger``: true/false/unset leave drlightning's own logging (each layer's fit in its
    own TensorBoard run, ``run.monitor.tensorboard``); a logger object is refused, not dropped."""
    if logger is None or isinstance(logger, bool):
        return
    loggers = logger if isinstance(logger, list | tuple) else [logger]
    names = ", ".join(type(one).__name__ for one in loggers)
    raise ValueError(f"trainer.logger={names}: each layer's rotation training logs to a TensorBoard "
                     "run of its own (run.monitor.tensorboard: <output_dir>/tensorboard/layer_XX, "
                     "plus a per-layer summary); other Lightning loggers are not supported yet — "
                     "remove trainer.logger (run.monitor.tensorboard=false turns logging off)")


class LayerLogger(TensorBoardLogger):
    """A layer fit's TensorBoard run: its own curves only — no placeholder ``hp_metric`` (-1) and
    no ``epoch`` scalar (each fit is one pass over the frozen weights, never an epoch count)."""

    def __init__(self, save_dir: str, name: str, version: str) -> None:
        super().__init__(save_dir, name=name, version=version, default_hp_metric=False)

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        super().log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step)


def default_trainer_factory(opts: RunOptions, run_dir: Path, base: dict | None = None,
                            callbacks: list | None = None) -> Callable[..., Trainer]:
    """A fresh Trainer per layer (rotation training only) with a per-layer logger.

    ``callbacks`` are the user's callbacks, on every Trainer; ``make(index, settings, callbacks)``
    adds the layer loop's own (the merge and prune callbacks of a per-layer fit). Under a
    multi-process launch (torchrun) with CUDA each rank trains on its own GPU (``LOCAL_RANK``).
    Each Trainer clips the gradient norm at the settings' ``grad_clip``; a template with another
    ``gradient_clip_val`` (or clipping by value) is refused
    (:meth:`RotationSettings.trainer_clipping`).
    """
    base = dict(base or {})
    user = list(callbacks or [])

    def make(index: int | str, settings: RotationSettings, callbacks: tuple = ()) -> Trainer:
        kwargs = {**TRAINER_DEFAULTS, "enable_progress_bar": opts.monitor.progress, **base}
        kwargs["max_steps"] = settings.steps
        kwargs.update(settings.trainer_clipping(base))
        kwargs["callbacks"] = [*user, *callbacks]
        check_precision(kwargs["precision"])
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if (world > 1 and kwargs["devices"] == 1 and torch.cuda.is_available()
                and str(kwargs["accelerator"]) in ("auto", "gpu", "cuda")):
            kwargs["devices"] = [int(os.environ.get("LOCAL_RANK", "0"))]
        if opts.monitor.tensorboard:
            kwargs["logger"] = LayerLogger(str(run_dir), "tensorboard",
                                           index if isinstance(index, str) else f"layer_{index:02d}")
        return Trainer(**kwargs)

    return make
