"""Prune a (rotated) decoder layer true-sequentially once its fit has ended."""

from __future__ import annotations

import time

import torch
from lightning import Callback, LightningModule, Trainer
from torch import nn

from drlightning.capture import LayerInputs, collect_hessians
from drlightning.models.adapters import INPUT_OF, ArchitectureAdapter
from drlightning.pruning import NO_PRUNING, prune_weight

GROUPS: tuple[tuple[str, ...], ...] = (("q", "k", "v"), ("o",), ("gate", "up"), ("down",))
"""True-sequential order: statistics are re-collected on the partially pruned layer per group."""


@torch.no_grad()
def prune_layer(
    layer: nn.Module,
    adapter: ArchitectureAdapter,
    inputs: LayerInputs,
    method: str,
    pattern: str,
) -> dict[str, float]:
    """Prune all seven linears of ``layer`` in place; returns the sparsity reached per role.

    ``pattern == "none"`` leaves every weight as it is (sparsity 0).
    """
    if pattern == NO_PRUNING:
        return {role: 0.0 for group in GROUPS for role in group}
    sparsity = {}
    for group in GROUPS:
        key = INPUT_OF[group[0]]
        hessian = None
        if method != "magnitude":
            hessian = collect_hessians(layer, adapter, inputs, (key,))[key]
        for role in group:
            lin = adapter.linear(layer, role)
            new, mask = prune_weight(lin.weight.data, hessian, method, pattern)
            lin.weight.data.copy_(new)
            sparsity[role] = mask.float().mean().item()
        del hessian  # free this group's Hessian before the next one is collected
    return sparsity


class PruneLayer(Callback):
    """On ``on_fit_end`` (after MergeRotations' ``on_train_end``): prune the layer in place."""

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        prune_datamodule(trainer.datamodule, pl_module.hparams.method, pl_module.hparams.pattern)


def prune_datamodule(dm, method: str, pattern: str) -> None:
    """Prune ``dm.layer`` in place on ``dm.inputs``; sets ``dm.prune_report``."""
    start = time.perf_counter()
    dm.prune_report = {"sparsity": prune_layer(dm.layer, dm.adapter, dm.inputs, method, pattern),
                       "prune_seconds": time.perf_counter() - start}
