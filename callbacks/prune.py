"""Prune a (rotated) decoder layer true-sequentially once its fit has ended."""

from __future__ import annotations

import time

from lightning import Callback, LightningModule, Trainer

from drlightning.layer.prune import GROUPS, prune_layer

__all__ = ["GROUPS", "PruneLayer", "prune_layer"]


class PruneLayer(Callback):
    """On ``on_fit_end`` (after MergeRotations' ``on_train_end``): prune the datamodule's layer
    with the module's method, pattern and permutation setting (a thin shell over
    :func:`drlightning.layer.prune.prune_layer`); sets ``datamodule.layer`` and
    ``datamodule.prune_report``. For a hand-built Trainer; drlightning's layer loop calls the
    function directly (with the guard)."""

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        dm, hp = trainer.datamodule, pl_module.hparams
        start = time.perf_counter()
        dm.layer, report = prune_layer(dm.layer, dm.adapter, dm.layout, dm.inputs, hp.method,
                                       hp.pattern, hp.get("permute", False))
        dm.prune_report = {**report, "prune_seconds": time.perf_counter() - start}
