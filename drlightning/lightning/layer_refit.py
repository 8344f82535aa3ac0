"""The whole-layer refit (``model.refit: layer``): a pruned decoder layer's kept weights trained
to reproduce the dense layer's outputs, with every mask fixed and early stopping on held-out
windows.

The "dataset" of one refit is the layer's calibration inputs and the dense layer's outputs on
them: the fitted windows train, the held-out windows (``data.held_out`` / ``model.holdout``)
only judge. Each step is one batch of fitted windows; after each pass over them the relative
error on the held-out windows is measured, the weights with the lowest one so far are kept, and
the fit stops once it has not improved for ``patience`` passes. The weights before any step count
as a candidate too, so a refit never raises the held-out error it is judged on. Pruned entries
stay exactly zero: their gradients are masked and the weights are re-masked after every step.
"""

from __future__ import annotations

import math
import time
import warnings

import torch
from lightning import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..layer.capture import LayerInputs
from ..models.adapters import ArchitectureAdapter

MONITOR = "refit/held_out_error"
"""What early stopping and the kept iterate look at (logged once per pass over the fitted windows)."""


class _Pairs(Dataset):
    """Batch i: (the layer's input hidden states, its call kwargs, the dense layer's outputs)."""

    def __init__(self, inputs: LayerInputs, targets: LayerInputs) -> None:
        self.inputs, self.targets = inputs, targets

    def __len__(self) -> int:
        return len(self.inputs.hidden)

    def __getitem__(self, i: int) -> tuple:
        return self.inputs.hidden[i], self.inputs.kwargs[i], self.targets.hidden[i]


class LayerRefitData(LightningDataModule):
    """One layer's inputs and dense outputs: fitted windows to train on, held-out ones to judge."""

    def __init__(self, inputs: LayerInputs, dense_out: LayerInputs) -> None:
        super().__init__()
        if not inputs.held:
            raise ValueError("the layer refit stops early on held-out windows and these inputs "
                             "have none (data.held_out or model.holdout)")
        self.inputs, self.dense_out = inputs, dense_out

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Pairs(self.inputs.fitted(), self.dense_out.fitted()), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Pairs(self.inputs.held_out(), self.dense_out.held_out()), batch_size=None)


def masked_weights(layer: nn.Module, adapter: ArchitectureAdapter) -> dict[str, nn.Parameter]:
    """The parameters holding the layer's pruned linears, by parameter name: a role's own weight,
    or the fused parameter its rows are a view of (fused q/k/v, an MoE block's 3-D experts)."""
    named = {id(p): (n, p) for n, p in layer.named_parameters()}
    out: dict[str, nn.Parameter] = {}
    for role in adapter.roles(layer):
        weight = adapter.linear(layer, role).weight
        base = weight if id(weight) in named else weight._base
        if id(base) not in named:
            raise ValueError(f"the {role} weight of this layer is not a parameter or a view of one: "
                             "the layer refit cannot train it")
        name, param = named[id(base)]
        out[name] = param
    return out


class LayerRefitModule(LightningModule):
    """Train ``weights`` (the pruned linears of ``layer``) with Adam at ``lr`` so the layer's
    output on the fitted windows approaches the dense layer's; relative squared error
    ‖f(X) − dense(X)‖² / ‖dense(X) − X‖² per batch. Only these weights train; zeros stay zero.

    After ``trainer.validate`` (the starting point) and ``trainer.fit``, ``best_state`` holds the
    weights with the lowest held-out error seen, ``curve`` the held-out error per pass."""

    def __init__(self, layer: nn.Module, weights: dict[str, nn.Parameter], lr: float) -> None:
        super().__init__()
        self.layer, self.lr = layer, lr
        self.weights = dict(weights)  # the layer's own parameters (a plain dict: not registered twice)
        self.masks = {role: w.detach() != 0 for role, w in weights.items()}
        self.best_error = math.inf
        self.best_state: dict[str, torch.Tensor] = {}
        self.curve: list[float] = []
        self._num = self._den = 0.0

    def _squared_errors(self, batch: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, kwargs, target = batch
        out = self.layer(hidden, **kwargs)
        out = out[0] if isinstance(out, tuple) else out
        return (out - target).float().square().sum(), (target - hidden).float().square().sum()

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        num, den = self._squared_errors(batch)
        loss = num / den.clamp_min(torch.finfo(torch.float32).tiny)
        self.log("refit/train_error", loss.detach().sqrt(), on_step=True, prog_bar=False)
        return loss

    def on_after_backward(self) -> None:
        for role, w in self.weights.items():
            if w.grad is not None:
                w.grad.mul_(self.masks[role])

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        with torch.no_grad():  # exact zeros whatever the optimiser did
            for role, w in self.weights.items():
                w.mul_(self.masks[role])

    def on_validation_epoch_start(self) -> None:
        self._num = self._den = 0.0

    def validation_step(self, batch: tuple, batch_idx: int) -> None:
        num, den = self._squared_errors(batch)
        self._num += float(num)
        self._den += float(den)

    def on_validation_epoch_end(self) -> None:
        error = math.sqrt(self._num / self._den) if self._den > 0 else math.nan
        self.curve.append(error)
        self.log(MONITOR, error)
        if error < self.best_error:
            self.best_error = error
            self.best_state = {r: w.detach().clone() for r, w in self.weights.items()}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(list(self.weights.values()), lr=self.lr)


def refit_layer(layer: nn.Module, adapter: ArchitectureAdapter, inputs: LayerInputs,
                dense_out: LayerInputs, steps: int, lr: float,
                patience: int = 3) -> tuple[nn.Module, dict]:
    """Refit a pruned ``layer`` in place (see the module docstring); returns (layer, report).
    Without held-out windows nothing is trained and the report says so (the pruner's weights
    stay). ``steps`` caps the optimiser steps; ``patience`` passes without a lower held-out error
    end the fit."""
    if not inputs.held:
        return layer, {"method": "layer", "skipped": "no held-out calibration windows to stop "
                                                      "on: the pruner's weights are kept"}
    start = time.perf_counter()
    device = next(layer.parameters()).device
    flags = {p: p.requires_grad for p in layer.parameters()}
    weights = masked_weights(layer, adapter)
    for p in layer.parameters():
        p.requires_grad_(False)
    for w in weights.values():
        w.requires_grad_(True)
    module = LayerRefitModule(layer, weights, lr)
    data = LayerRefitData(inputs, dense_out)
    trainer = Trainer(accelerator="cpu" if device.type == "cpu" else "gpu",
                      devices=1 if device.type == "cpu" else [device.index or 0],
                      max_steps=steps, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, check_val_every_n_epoch=1,
                      callbacks=[EarlyStopping(MONITOR, patience=patience, mode="min",
                                               check_finite=True)])
    with torch.enable_grad(), warnings.catch_warnings():
        # the layer stays in eval mode on purpose (no dropout): Lightning's warning about it is noise
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode")
        trainer.validate(module, datamodule=data, verbose=False)
        trainer.fit(module, datamodule=data)
    layer.to(device)  # Lightning's teardown may have moved it
    with torch.no_grad():
        for name, w in weights.items():
            w.copy_(module.best_state[name].to(w.device))
    for p, flag in flags.items():
        p.requires_grad_(flag)
    curve = module.curve
    return layer, {"method": "layer", "steps": int(trainer.global_step), "lr": lr,
                   "held_out_error_before": curve[0], "held_out_error_after": module.best_error,
                   "kept_pass": curve.index(module.best_error), "curve": curve,
                   "seconds": time.perf_counter() - start}
