"""Prune a (rotated) decoder layer true-sequentially once its fit has ended."""

from __future__ import annotations

from lightning import Callback, LightningModule, Trainer
from torch import nn

from drlightning.layer.capture import LayerInputs, run_layer
from drlightning.layer.prune import GROUPS, PruneSpec, prune_layer
from drlightning.layer.step import prune_candidates

from .merge import MergeRotations

__all__ = ["GROUPS", "PruneLayer", "PruneSpec", "prune_layer"]


class PruneLayer(Callback):
    """On ``on_fit_end`` (after ``merge``'s ``on_train_end``): prune the layer ``merge`` merged —
    or, without one, the datamodule's own (unrotated) layer — together with the datamodule's
    ``others`` (the guard's candidates), and keep the one the guard picks (a thin shell over
    :func:`drlightning.layer.step.prune_candidates`, true-sequential per group of linears).

    The datamodule's ``spec`` says how (else the module's settings: method, pattern,
    permutations, guard); its ``dense_out`` are the dense outputs the pruning error is measured
    against (measured here at the start of the fit, before any merge, when the datamodule has
    none). Part of every per-layer fit of drlightning's layer loop, and usable on a hand-built
    Trainer. After ``fit`` the caller reads ``layer`` (the kept, pruned layer), ``report`` (its
    sparsity per role, permutations, pruning errors, ``guard``, ``prune_seconds``) and ``outputs``
    (the kept layer's outputs: the next layer's inputs).
    """

    def __init__(self, merge: MergeRotations | None = None) -> None:
        self.merge = merge
        self.layer: nn.Module | None = None
        self.report: dict = {}
        self.outputs: LayerInputs | None = None
        self._dense_out: LayerInputs | None = None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.merge is None and any(isinstance(c, MergeRotations) for c in trainer.callbacks):
            raise ValueError("PruneLayer() prunes the datamodule's unrotated layer, but this Trainer "
                             "also merges rotations: pass the merge callback, PruneLayer(merge), to "
                             "prune the layer it merged")
        dm = trainer.datamodule
        self.layer, self.report, self.outputs = None, {}, None
        self._dense_out = dm.dense_out if dm.dense_out is not None else run_layer(dm.layer, dm.inputs)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        dm = trainer.datamodule
        spec = dm.spec or pl_module.rotation.prune_spec(dm.adapter, dm.layout)
        merged = self.merge.layer if self.merge is not None else None
        candidates = {"rotated": merged} if merged is not None else {"unrotated": dm.layer}
        candidates.update(dm.others)
        self.layer, self.report, self.outputs = prune_candidates(candidates, dm.inputs,
                                                                 self._dense_out, spec)
        self._dense_out = None
