"""Merge the learned rotations into the layer's weights when rotation training ends."""

from __future__ import annotations

import torch
from lightning import Callback, LightningModule, Trainer

from drlightning.rotation import RotatedLayer, merge_rotations, rotation_storage_dtype


class MergeRotations(Callback):
    """On ``on_train_end``: fuse R2 and the inner uses of R1 (float32 math) and wrap the layer.

    After this the datamodule's ``layer`` computes Q·f(Qᵀx) with f the merged layer, and
    ``datamodule.rotation`` holds Q (entry Qᵀ, exit Q). Runs before pruning (``on_fit_end``).
    """

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        dm = trainer.datamodule
        q, r = pl_module.best_rotations()
        layer = dm.layer
        weight = dm.adapter.linear(layer, "q").weight
        q = q.detach().to(weight.device, rotation_storage_dtype(weight.dtype))
        r = r.detach().to(weight.device, rotation_storage_dtype(weight.dtype))
        merge_rotations(layer, dm.adapter, dm.layout, q, r)
        dm.layer = RotatedLayer(layer, q)
        dm.rotation = q
        dm.rotation_report = pl_module.report()
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
