"""Prune a (rotated) decoder layer true-sequentially once its fit has ended."""

from __future__ import annotations

import time

from lightning import Callback, LightningModule, Trainer
from torch import nn

from drlightning.layer.prune import GROUPS, PruneSpec, prune_layer

from .merge import MergeRotations

__all__ = ["GROUPS", "PruneLayer", "PruneSpec", "prune_layer"]


class PruneLayer(Callback):
    """On ``on_fit_end`` (after :class:`MergeRotations`' ``on_train_end``): prune the layer with
    the module's method, pattern and permutation setting (a thin shell over
    :func:`drlightning.layer.prune.prune_layer`, no guard). The layer is the one a
    ``MergeRotations`` on the same Trainer merged, else the datamodule's own (unrotated) layer.

    For a hand-built Trainer; drlightning's layer loop calls the function directly (with the
    guard). The results stay on the callback: ``layer`` (pruned) and ``report`` (sparsity per role,
    permutation decisions, ``prune_seconds``).
    """

    def __init__(self) -> None:
        self.layer: nn.Module | None = None
        self.report: dict = {}

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        dm, hp = trainer.datamodule, pl_module.hparams
        merged = [c.layer for c in trainer.callbacks
                  if isinstance(c, MergeRotations) and c.layer is not None]
        spec = PruneSpec(dm.adapter, dm.layout, hp.method, hp.pattern, hp.get("permute", False))
        start = time.perf_counter()
        self.layer, report = prune_layer(merged[-1] if merged else dm.layer, dm.inputs, spec)
        self.report = {**report, "prune_seconds": time.perf_counter() - start}
