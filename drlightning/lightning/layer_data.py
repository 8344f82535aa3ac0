"""The per-layer LightningDataModule: a decoder layer's frozen weights, Hessians and inputs.

Rotation training needs no batches: the objective is a deterministic function of frozen weights and
Hessians. The dataloader therefore yields one step index per optimisation step, and the frozen
tensors reach the LightningModule once (as non-persistent buffers) in ``configure_model``.
"""

from __future__ import annotations

import torch
from lightning import LightningDataModule
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..layer.capture import LayerInputs
from ..layer.prune import PruneSpec
from ..models.adapters import ArchitectureAdapter, HeadLayout


class _Steps(Dataset):
    """``n`` full-batch optimisation steps; item i is just the step index."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class LayerDataModule(LightningDataModule):
    """One decoder layer as a 'dataset': frozen weights, Hessians, calibration inputs (and, with
    ``model.role_weights: measured``, how much each linear's pruning costs the layer).

    What the merge and prune callbacks need besides: ``dense_out`` (the dense layer's outputs on
    the inputs; a :class:`~drlightning.callbacks.PruneLayer` measures them before the merge when
    None), ``others`` (the guard's other candidates, e.g. the unrotated layer), ``spec`` (how
    the layer is pruned; None: from the module's settings) and ``held_hessians`` (the held-out
    windows' Hessians: the best iterate is kept on them).
    """

    def __init__(
        self,
        index: int,
        layer: nn.Module,
        adapter: ArchitectureAdapter,
        layout: HeadLayout,
        inputs: LayerInputs,
        hessians: dict[str, torch.Tensor] | None,
        steps: int,
        role_weights: dict[str, float] | None = None,
        *,
        dense_out: LayerInputs | None = None,
        others: dict[str, nn.Module] | None = None,
        spec: PruneSpec | None = None,
        held_hessians: dict[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.index = index
        self.layer = layer
        self.adapter = adapter
        self.layout = layout
        self.inputs = inputs
        self.hessians = hessians
        self.steps = steps
        self.role_weights = role_weights
        """Per-role weights of the pruned-mass objective (None: every linear counts the same)."""
        self.dense_out = dense_out
        self.others = dict(others or {})
        self.spec = spec
        self.held_hessians = held_hessians
        """The held-out windows' Hessians: the module keeps the iterate whose objective is lowest
        on them (None: the lowest on the fitted windows)."""

    def frozen_weights(self) -> dict[str, torch.Tensor]:
        """Float32 copies of the layer's linear weights (the seven, or an MoE layer's q, k, v, o and
        every expert's gate/up/down; after norm folding); copies, so merging and pruning the layer
        in place later does not change them."""
        return {r: self.adapter.linear(self.layer, r).weight.detach().to(torch.float32, copy=True)
                for r in self.adapter.roles(self.layer)}

    def take_hessians(self) -> dict[str, torch.Tensor] | None:
        """The layer's Hessians, handed over once: the datamodule lets go of them, so the
        objective's reduced copies (M, M_o blocks) are all that stays in memory."""
        hessians, self.hessians = self.hessians, None
        return hessians

    def take_held_hessians(self) -> dict[str, torch.Tensor] | None:
        """The held-out windows' Hessians, handed over once (as :meth:`take_hessians`)."""
        hessians, self.held_hessians = self.held_hessians, None
        return hessians

    def tokens_per_sequence(self) -> int:
        """Tokens per calibration window (the authors' Hessians are averaged per window)."""
        return int(self.inputs.hidden[0].shape[1]) if self.inputs.hidden else 1

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Steps(self.steps), batch_size=None, shuffle=False)
