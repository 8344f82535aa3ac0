"""Merge the learned rotations into the layer's weights when rotation training ends."""

from __future__ import annotations

from lightning import Callback, LightningModule, Trainer
from torch import nn

from drlightning.layer.step import merge_layer

__all__ = ["MergeRotations"]


class MergeRotations(Callback):
    """On ``on_train_end``: fuse R2 and the inner uses of R1 into the datamodule's (norm-folded)
    layer and wrap it, so it computes Q·f(Qᵀx) (a thin shell over
    :func:`drlightning.layer.step.merge_layer`, which also checks the output is unchanged).

    For a hand-built Trainer; drlightning's own layer loop calls the function directly. The
    results stay on the callback: ``layer`` (the wrapped layer) and ``report`` (the module's
    report with the measured ``invariance_error``). Runs before :class:`PruneLayer`
    (``on_fit_end``), which picks the merged layer up from here.
    """

    def __init__(self) -> None:
        self.layer: nn.Module | None = None
        self.report: dict = {}

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        dm = trainer.datamodule
        q, r = pl_module.best_rotations()
        self.layer, error = merge_layer(dm.layer, q, r, dm.inputs, dm.adapter, dm.layout, dm.index)
        self.report = {**pl_module.report(), "invariance_error": error}
