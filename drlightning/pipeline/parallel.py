"""Parallel mode: train every layer's rotations from one dense calibration pass, spread over ranks.

The rotation objective of layer ℓ needs only that layer's (norm-folded) weights and the Hessians of
its inputs. In the sequential protocol those inputs come from the already pruned layers before ℓ,
so layers must wait for each other; the parallel mode takes them from the *dense* model instead,
which lets each rank (a torchrun process, one GPU each) train its own subset of layers
(ℓ mod world_size = rank) at the same time. Afterwards rank 0 merges the saved rotations and prunes
the layers sequentially, as in the sequential protocol (the pruner still sees the pruned inputs).

Launch: ``torchrun --nproc_per_node N -m drlightning.cli fit --config … --run.mode parallel``
(a single process with ``--run.mode parallel`` also works: it trains all layers itself).
"""

from __future__ import annotations

import copy
import gc
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn
from tqdm.auto import tqdm

from ..layer.capture import (
    LayerInputs,
    capture_layer_inputs,
    collect_hessians,
    run_layer,
)
from ..layer.step import PruneSpec, merge_and_prune
from ..lightning.layer_data import LayerDataModule
from ..lightning.rotation_module import RotationModule
from ..models.adapters import ArchitectureAdapter, HeadLayout
from ..models.shards import LayerwiseModel
from ..rotation import fold_norms
from .state import atomic_save_tensors

MODES = ("sequential", "parallel")


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
        tensors = {"q": q.detach().cpu().contiguous(), "r": r.detach().cpu().contiguous()}
        atomic_save_tensors(tensors, self.path(index), {"report": json.dumps(report, default=float)})

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        path = self.path(index)
        if not path.is_file():
            raise FileNotFoundError(f"no trained rotations for layer {index} in {self.dir} "
                                    "(did every rank of the parallel run finish?)")
        with safe_open(str(path), framework="pt") as fh:
            report = json.loads((fh.metadata() or {}).get("report", "{}"))
        t = load_file(str(path))
        return t["q"], t["r"], report


def train_rotations(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    windows: torch.Tensor,
    template: RotationModule,
    make_trainer: Callable[..., object],
    store: RotationStore,
    ranks: Ranks,
    batch_size: int = 8,
    progress: bool = True,
    on_fit: Callable[[int, RotationModule], None] | None = None,
    offload: bool = False,
    layerwise: LayerwiseModel | None = None,
) -> list[int]:
    """Train the rotations of this rank's layers on dense-model inputs; returns the layers trained.

    Layers whose rotations are already in ``store`` (an earlier, interrupted run) are skipped. The
    model is not modified: each layer is folded in a copy (with ``layerwise``, the layer is loaded
    from the shards, folded and released again).
    """
    layers = adapter.decoder_layers(model)
    todo = [i for i in range(len(layers)) if ranks.owns(i) and not store.has(i)]
    if not todo:
        return []
    layout = HeadLayout.from_config(model.config)
    steps = template.hparams.steps
    inputs: LayerInputs = capture_layer_inputs(model, adapter, windows, batch_size, offload)
    bar = tqdm(total=len(todo), desc=f"rotations (rank {ranks.rank}/{ranks.world})",
               disable=not progress)
    for i in range(todo[-1] + 1):
        layer = layerwise.load(i) if layerwise is not None else copy.deepcopy(layers[i])
        fold_norms(layer, adapter)
        if i in todo:
            start = time.perf_counter()
            stats = template.needed_stats()
            hessians = collect_hessians(layer, adapter, inputs, stats) if stats else None
            dm = LayerDataModule(i, layer, adapter, layout, inputs, hessians, steps)
            module = template.fresh()
            make_trainer(i, module).fit(module, datamodule=dm)
            if on_fit is not None:
                on_fit(i, module)
            q, r = module.best_rotations()
            store.save(i, q, r, {**module.report(), "fit_seconds": time.perf_counter() - start,
                                 "rank": ranks.rank})
            del hessians, dm, module
            gc.collect()  # Trainer/module/datamodule reference cycles hold the layer's tensors
            bar.update(1)
        if i < todo[-1]:
            inputs = run_layer(layer, inputs)
        if layerwise is not None:
            layerwise.release(i)
    bar.close()
    return todo


def merge_saved_step(store: RotationStore):
    """A ``layer_step`` for :func:`drlightning.pipeline.sequential.rotate_and_prune`: fold norms, merge the
    stored rotations (with the function-preserving self-check), prune (with the guard)."""

    def step(index: int, layer: nn.Module, inputs: LayerInputs, dense_out: LayerInputs,
             spec: PruneSpec) -> tuple[nn.Module, dict, LayerInputs]:
        original = copy.deepcopy(layer) if spec.guard or spec.report_identity else None
        fold_norms(layer, spec.adapter)
        q, r, report = store.load(index)
        layer, pruned, out = merge_and_prune(index, layer, original, q, r, inputs, dense_out, spec)
        return layer, {**report, **pruned}, out

    return step


def parallel_rotations(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    windows: torch.Tensor,
    template: RotationModule,
    make_trainer: Callable[..., object],
    run_dir: Path,
    ranks: Ranks,
    batch_size: int = 8,
    progress: bool = True,
    on_fit: Callable[[int, RotationModule], None] | None = None,
    offload: bool = False,
    layerwise: LayerwiseModel | None = None,
):
    """Every rank trains its layers, then all wait; returns rank 0's merge-and-prune ``layer_step``
    (None on the other ranks, whose work is done)."""
    store = RotationStore(Path(run_dir) / "state" / "rotations")
    train_rotations(model, adapter, windows, template, make_trainer, store, ranks, batch_size,
                    progress, on_fit, offload, layerwise)
    ranks.barrier()
    if ranks.rank != 0:
        return None
    return merge_saved_step(store)
