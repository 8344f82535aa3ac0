"""Parallel mode: train every layer's rotations from one dense calibration pass, spread over ranks.

The rotation objective of layer ℓ needs only that layer's (norm-folded) weights and the Hessians of
its inputs. In the sequential protocol those inputs come from the already pruned layers before ℓ,
so layers must wait for each other; the parallel mode takes them from the *dense* model instead,
which lets each rank (a torchrun process, one GPU each) train its own subset of layers
(ℓ mod world_size = rank) at the same time. Afterwards rank 0 merges the saved rotations and prunes
the layers sequentially, as in the sequential protocol (the pruner still sees the pruned inputs).

Launch: ``torchrun --nproc_per_node N -m drlightning.cli fit --config … --run.launch.mode parallel``
(a single process with ``--run.launch.mode parallel`` also works: it trains all layers itself).
"""

from __future__ import annotations

import copy
import functools
import gc
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from ..layer.capture import (
    LayerInputs,
    capture_layer_inputs,
    run_layer,
)
from ..models.adapters import ArchitectureAdapter, HeadLayout
from ..models.shards import LayerwiseModel
from ..rotation import fold_norms
from .sequential import LayerLoop, fit_rotation, rotate_then_prune
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
        save_rotations(self.path(index), q, r, report)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        path = self.path(index)
        if not path.is_file():
            raise FileNotFoundError(f"no trained rotations for layer {index} in {self.dir} "
                                    "(did every rank of the parallel run finish?)")
        return load_rotations(path)


def train_rotations(model: nn.Module, adapter: ArchitectureAdapter, windows: torch.Tensor,
                    loop: LayerLoop, store: RotationStore, ranks: Ranks,
                    layerwise: LayerwiseModel | None = None) -> list[int]:
    """Train the rotations of this rank's layers on dense-model inputs; returns the layers trained.

    Layers whose rotations are already in ``store`` (an earlier, interrupted run) are skipped. The
    model is not modified: each layer is folded in a copy (with ``layerwise``, the layer is loaded
    from the shards, folded and released again).
    """
    layers = adapter.decoder_layers(model)
    todo = [i for i in range(len(layers)) if ranks.owns(i) and not store.has(i)]
    if not todo:
        return []
    spec = loop.template.prune_spec(adapter, HeadLayout.from_config(model.config))
    inputs: LayerInputs = capture_layer_inputs(model, adapter, windows, loop.batch_size,
                                               loop.offload)
    bar = tqdm(total=len(todo), desc=f"rotations (rank {ranks.rank}/{ranks.world})",
               disable=not loop.progress)
    for i in range(todo[-1] + 1):
        layer = layerwise.load(i) if layerwise is not None else copy.deepcopy(layers[i])
        fold_norms(layer, adapter)
        if i in todo:
            q, r, report = fit_rotation(i, layer, inputs, loop, spec)
            store.save(i, q, r, {**report, "rank": ranks.rank})
            gc.collect()  # Trainer/module/datamodule reference cycles hold the layer's tensors
            bar.update(1)
        if i < todo[-1]:
            inputs = run_layer(layer, inputs)
        if layerwise is not None:
            layerwise.release(i)
    bar.close()
    return todo


def merge_saved_step(store: RotationStore):
    """A ``layer_step`` for :func:`drlightning.pipeline.sequential.rotate_and_prune`: fold norms,
    merge the stored rotations (with the function-preserving self-check), prune (with the guard)."""
    return functools.partial(rotate_then_prune, rotations=lambda index, _layer, _x: store.load(index))


class Sequential:
    """Each layer's rotations are learned on the outputs of the pruned layers before it."""

    is_main = True

    def device(self, device: torch.device) -> torch.device:
        return device

    def prepare(self, model, adapter, windows, loop: LayerLoop, run_dir: Path,
                layerwise: LayerwiseModel | None = None):
        """Nothing ahead of the layer loop: it fits each layer's rotations itself."""
        return None

    q = None
    """The shared residual rotation (only the shared-R1 schedule has one)."""

    def report(self, run_dir: Path) -> dict:
        """Export fields of the schedule (none: the placement merges the boundary rotations)."""
        return {}

    def stop(self) -> None:
        pass


class Parallel:
    """All rotations are learned first from one dense calibration pass, spread over the ranks of a
    torchrun launch; then rank 0 merges and prunes sequentially."""

    def __init__(self) -> None:
        self.ranks = Ranks.from_env()

    @property
    def is_main(self) -> bool:
        return self.ranks.rank == 0

    def device(self, device: torch.device) -> torch.device:
        return self.ranks.start(device)

    def prepare(self, model, adapter, windows, loop: LayerLoop, run_dir: Path,
                layerwise: LayerwiseModel | None = None):
        """Every rank trains its layers, then all wait; returns rank 0's merge-and-prune
        ``layer_step`` (None on the other ranks, whose work is done)."""
        store = RotationStore(Path(run_dir) / "state" / "rotations")
        train_rotations(model, adapter, windows, loop, store, self.ranks, layerwise)
        self.ranks.barrier()
        return merge_saved_step(store) if self.is_main else None

    q = None
    report = Sequential.report

    def stop(self) -> None:
        self.ranks.stop()


SCHEDULES = {"sequential": Sequential, "parallel": Parallel}
"""``run.launch.mode`` → how the rotations are scheduled."""
