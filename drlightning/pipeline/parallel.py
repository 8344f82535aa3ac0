"""Parallel mode: train every layer's rotations from one dense calibration pass, spread over ranks.

The rotation objective of layer ℓ needs only that layer's (norm-folded) weights and the Hessians of
its inputs. In the sequential protocol those inputs come from the already pruned layers before ℓ,
so layers must wait for each other; the parallel mode takes them from the *dense* model instead,
which lets each rank (a torchrun process, one GPU each) train its own subset of layers
(ℓ mod world_size = rank) at the same time. Afterwards rank 0 merges the saved rotations and prunes
the layers sequentially, as in the sequential protocol (the pruner still sees the pruned inputs).

The schedule itself is :class:`drlightning.pipeline.schedules.Parallel`.

Launch: ``torchrun --nproc_per_node N -m drlightning.cli fit --config … --run.launch.mode parallel``
(a single process with ``--run.launch.mode parallel`` also works: it trains all layers itself).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..layer.capture import LayerInputs
from ..layer.step import LayerTask, Rotations, RotationSource
from ..layer.walk import Visited, walk_layers
from ..models.adapters import ArchitectureAdapter
from ..models.shards import LayerwiseModel
from ..rotation import fold_norms
from .sequential import LayerLoop, fit_rotation
from .state import load_rotations, save_rotations


@dataclass
class Ranks:
    """This process's place in a torchrun launch (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Ranks:
        env = os.environ
        return cls(int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")),
                   int(env.get("LOCAL_RANK", "0")))

    def start(self, device: torch.device) -> torch.device:
        """Join the process group (gloo on CPU, nccl on GPU); returns this rank's device."""
        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        if self.world > 1:
            _every_rank_logs()
        if self.world > 1 and not dist.is_initialized():
            # layers train for hours: the barrier after training must not time out
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                    timeout=timedelta(days=7))
        return device

    def owns(self, index: int) -> bool:
        return index % self.world == self.rank

    def barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def stop(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def _every_rank_logs() -> None:
    """Each rank's per-layer Trainers are independent single-device runs: let them all log
    (Lightning otherwise silences loggers on processes whose launch RANK is not 0)."""
    from lightning.fabric.utilities import rank_zero as fabric_rank_zero
    from lightning.pytorch.utilities import rank_zero as pl_rank_zero

    for mod in (pl_rank_zero, fabric_rank_zero):
        mod.rank_zero_only.rank = 0


class RotationStore:
    """``state/rotations/layer_XX.safetensors``: one layer's trained (Q, R2) and its report."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)

    def path(self, index: int) -> Path:
        return self.dir / f"layer_{index:02d}.safetensors"

    def has(self, index: int) -> bool:
        return self.path(index).is_file()

    def save(self, index: int, q: torch.Tensor, r: torch.Tensor, report: dict) -> None:
        save_rotations(self.path(index), q, r, report, index)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        path = self.path(index)
        if not path.is_file():
            raise FileNotFoundError(f"no trained rotations for layer {index} in {self.dir} "
                                    "(did every rank of the parallel run finish?)")
        return load_rotations(path, index)


def train_rotations(model: nn.Module, adapter: ArchitectureAdapter, windows: torch.Tensor,
                    loop: LayerLoop, store: RotationStore, ranks: Ranks,
                    layerwise: LayerwiseModel | None = None) -> list[int]:
    """Train the rotations of this rank's layers on dense-model inputs; returns the layers trained.

    Layers whose rotations are already in ``store`` (an earlier, interrupted run) are skipped. The
    model is not modified: one walk over copies of its layers (with ``layerwise``, each loaded
    from the shards and released again), each norm-folded, up to the last layer to train.
    """
    n_layers = len(adapter.decoder_layers(model))
    todo = [i for i in range(n_layers) if ranks.owns(i) and not store.has(i)]
    if not todo:
        return []
    spec = loop.prune_spec(model, adapter)

    def work(index: int, layer: nn.Module, inputs: LayerInputs) -> Visited:
        fold_norms(layer, adapter)
        if index not in todo:
            return Visited(layer, None, {})
        q, r, report = fit_rotation(LayerTask(index, layer, inputs, spec), loop)
        store.save(index, q, r, {**report, "rank": ranks.rank})
        return Visited(layer, None, report)

    walk = replace(loop.walk, desc=f"rotations (rank {ranks.rank}/{ranks.world})")
    for _ in walk_layers(model, adapter, windows, work, walk, layerwise=layerwise,
                         in_place=False, stop=todo[-1] + 1):
        pass
    return todo


def stored(store: RotationStore) -> RotationSource:
    """The rotation source of the merge phase: each layer's (Q, R2) as trained and saved."""
    return lambda task: Rotations(*store.load(task.index))
