"""Merge the learned rotations into the layer's weights when rotation training ends."""

from __future__ import annotations

import time

from lightning import Callback, LightningModule, Trainer
from torch import nn

from drlightning.layer.step import merge_layer

__all__ = ["MergeRotations"]


class MergeRotations(Callback):
    """On ``on_train_end``: fuse R2 and the inner uses of R1 into the datamodule's (norm-folded)
    layer and wrap it, so it computes Q·f(Qᵀx) (a thin shell over
    :func:`drlightning.layer.step.merge_layer`, which also checks the output is unchanged).

    Part of every per-layer fit of drlightning's layer loop, and usable on a hand-built Trainer.
    After ``fit`` the caller reads ``layer`` (the wrapped layer) and ``report`` (the module's
    report with the measured ``invariance_error``); a :class:`PruneLayer` given this callback
    prunes that layer.
    """

    def __init__(self) -> None:
        self.layer: nn.Module | None = None
        self.report: dict = {}
        self.seconds = 0.0

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.layer, self.report, self.seconds = None, {}, 0.0

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        start = time.perf_counter()
        dm = trainer.datamodule
        q, r = pl_module.best_rotations()
        self.layer, error = merge_layer(dm.layer, q, r, dm.inputs, dm.adapter, dm.layout, dm.index)
        self.report = {**pl_module.report(), "invariance_error": error}
        self.seconds = time.perf_counter() - start
