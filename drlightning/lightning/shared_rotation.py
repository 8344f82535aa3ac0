"""Shared R1 the Lightning way: the model's layers are the dataset, one module learns Q for the
whole residual stream and every layer's R2 by minimising the summed per-layer objective.

Each item of :class:`LayersDataModule` is one layer's frozen tensors (weights and Hessian-derived
matrices, as in per-layer mode), so Lightning moves them to the device with the batch and, under
DDP, hands each rank its share of the layers; Q's gradient is then all-reduced by the strategy.
A batch holds every layer (full batch, the default) or a random subset (``layers_per_step``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from lightning import LightningDataModule, LightningModule
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..models.adapters import HeadLayout
from ..rotation import orthogonality_error, qr_orthogonal
from ..rotation.best_iterate import IterateTracker
from ..rotation.objective import FrozenLayer, ObjectiveSpec, identity_scale, layer_objective


@dataclass
class LayerItem:
    """One layer as a training example: its index, frozen tensors, pruned-mass divisors (divided
    by the measured role weights where they apply) and those measured group errors; with
    ``best_on: held_out`` also the frozen tensors from the held-out windows' Hessians (the same
    weight tensors) and their divisors, on which the kept iterate is chosen."""

    index: int
    frozen: FrozenLayer
    scale: dict[str, float] | None = None
    group_errors: dict[str, float] | None = None
    held: FrozenLayer | None = None
    held_scale: dict[str, float] | None = None


def layer_item(index: int, frozen: FrozenLayer, layout: HeadLayout, spec: ObjectiveSpec,
               held: FrozenLayer | None = None) -> LayerItem:
    """A layer item; for pruned_mass its divisors are the parts at the identity (as per layer),
    on the fitted and (given ``held``) on the held-out windows."""
    mass = spec.objective == "pruned_mass"
    scale = identity_scale(frozen, layout, spec) if mass else None
    held_scale = identity_scale(held, layout, spec) if mass and held is not None else None
    return LayerItem(index, frozen, scale, held=held, held_scale=held_scale)


def summed_objective(items: list[LayerItem], q: torch.Tensor, r: torch.Tensor, layout: HeadLayout,
                     spec: ObjectiveSpec, held: bool = False) -> torch.Tensor:
    """Σ over ``items`` of the per-layer objective at Q and each layer's R2 (``r[item.index]``);
    ``held``: on the held-out windows' frozen tensors instead of the fitted ones."""
    return torch.stack([layer_objective(q, r[item.index], item.held if held else item.frozen,
                                        layout, spec, item.held_scale if held else item.scale)[0]
                        for item in items]).sum()


class _Layers(Dataset):
    def __init__(self, items: list[LayerItem]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> LayerItem:
        return self.items[i]


def _as_list(batch: list[LayerItem]) -> list[LayerItem]:
    return list(batch)


class _RankShare(DistributedSampler):
    """Layers ℓ with ℓ mod world = rank, without the padding DistributedSampler adds (a repeated
    layer would count twice in the summed objective)."""

    def __iter__(self):
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))


class LayersDataModule(LightningDataModule):
    """The layers of a model as a dataset (see the module docstring)."""

    def __init__(self, items: list[LayerItem], layers_per_step: int | None = None, seed: int = 0) -> None:
        super().__init__()
        if not items:
            raise ValueError("no layers to learn a shared rotation from")
        if layers_per_step is not None and not 1 <= layers_per_step <= len(items):
            raise ValueError(f"layers_per_step={layers_per_step} must be between 1 and the number "
                             f"of layers ({len(items)}), or None for all of them")
        self.items = items
        self.layers_per_step = layers_per_step
        self.seed = seed

    def train_dataloader(self) -> DataLoader:
        """Every layer per step (or ``layers_per_step`` random ones); under DDP each rank its
        share of them (Lightning keeps a DistributedSampler it is given)."""
        subset, layers = self.layers_per_step is not None, _Layers(self.items)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            world = dist.get_world_size()
            if subset or world > len(layers):  # every rank must take one step per epoch
                raise ValueError(f"with {world} processes the shared rotation needs every layer "
                                 f"per step (layers_per_step=None) and at least {world} layers")
            sampler = _RankShare(layers, shuffle=False)
            return DataLoader(layers, batch_size=len(sampler), sampler=sampler, collate_fn=_as_list)
        return DataLoader(layers, batch_size=self.layers_per_step or len(self.items),
                          shuffle=subset, collate_fn=_as_list,
                          generator=torch.Generator().manual_seed(self.seed) if subset else None)


class SharedRotationModule(LightningModule):
    """Q (hidden × hidden) shared by all layers and R2 (n_kv_heads × hd × hd) per layer."""

    def __init__(self, layout: HeadLayout, n_layers: int, spec: ObjectiveSpec, lr: float = 0.01,
                 q_init: torch.Tensor | None = None) -> None:
        """``q_init``: an orthogonal starting point for Q (the identity when None)."""
        super().__init__()
        self.save_hyperparameters(ignore=["layout", "spec", "q_init"])
        self.layout, self.spec = layout, spec
        start = torch.eye(layout.hidden) if q_init is None else q_init.detach().float().clone()
        if start.shape != (layout.hidden, layout.hidden) or orthogonality_error(start) > 1e-4:
            raise ValueError(f"q_init must be an orthogonal {layout.hidden} × {layout.hidden} "
                             f"matrix; got shape {tuple(start.shape)}")
        self.A = nn.Parameter(start)
        self.B = nn.Parameter(torch.eye(layout.head_dim).repeat(n_layers, layout.n_kv_heads, 1, 1))
        self.track = IterateTracker()
        """The kept iterate (fitted or summed held-out objective) and the curves it was chosen on."""

    def rotations(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Current Q and every layer's R2 (n_layers × n_kv_heads × hd × hd), float32."""
        return qr_orthogonal(self.A).float(), qr_orthogonal(self.B).float()

    def summed_loss(self, batch: list[LayerItem]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Σ over the batch's layers of the per-layer objective at the current (Q, R2), and them."""
        q, r = self.rotations()
        return summed_objective(batch, q, r, self.layout, self.spec), q, r

    @torch.no_grad()
    def held_loss(self, batch: list[LayerItem], q: torch.Tensor, r: torch.Tensor) -> float | None:
        """The summed objective on the held-out windows' tensors (over every process), or None
        when the items carry none (the iterate is then kept on the fitted objective)."""
        if not batch or batch[0].held is None:
            return None
        value = summed_objective(batch, q.detach(), r.detach(), self.layout, self.spec, held=True)
        return float(self.trainer.strategy.reduce(value, reduce_op="sum"))

    def training_step(self, batch: list[LayerItem], batch_idx: int) -> torch.Tensor:
        loss, q, r = self.summed_loss(batch)
        total = self.trainer.strategy.reduce(loss.detach(), reduce_op="sum")
        if self.datamodule_is_full_batch():
            self.track.offer(float(total), q, r, self.global_step, self.held_loss(batch, q, r))
        self.log(f"shared/{self.spec.objective}", total, prog_bar=True)
        if self.track.held_curve:
            self.log(f"shared/{self.spec.objective}_held_out", self.track.held_curve[-1])
        return loss * self.trainer.world_size  # DDP averages gradients: this gives the sum's

    @torch.no_grad()
    def on_train_end(self) -> None:
        """The final iterate (after the last update) is a candidate too (one process)."""
        dm = self.trainer.datamodule
        if self.datamodule_is_full_batch() and self.trainer.world_size == 1 and dm is not None:
            batch = self.trainer.strategy.batch_to_device(list(dm.items))
            loss, q, r = self.summed_loss(batch)
            self.track.offer(float(loss), q, r, self.global_step, self.held_loss(batch, q, r))

    def datamodule_is_full_batch(self) -> bool:
        dm = getattr(self.trainer, "datamodule", None)
        return dm is None or getattr(dm, "layers_per_step", None) is None

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam([self.A, self.B], lr=self.hparams.lr)

    @torch.no_grad()
    def best_rotations(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Best full-batch iterate (Q, R2 per layer); the current one with random layer subsets,
        whose losses are not comparable across steps."""
        if self.track.best is None or not self.datamodule_is_full_batch():
            return self.rotations()
        return self.track.best

    def report(self) -> dict:
        """Numbers for results.json: the summed objective before and at its best."""
        q, r = self.best_rotations()
        orth = max(orthogonality_error(q), orthogonality_error(r))
        if self.track.best is None:  # random layer subsets: losses not comparable, none kept
            return {"objective": self.spec.objective, "initial_loss": self.track.initial_loss,
                    "best_loss": None, "best_step": None, "orthogonality_error": orth}
        return {"objective": self.spec.objective, **self.track.report(), "orthogonality_error": orth}
