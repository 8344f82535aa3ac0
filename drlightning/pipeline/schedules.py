"""Schedules: where each layer's rotations come from. Each one's :meth:`prepare` does the work
that must come before the rotate-and-prune loop and returns a :class:`~.sequential.Plan`.

- :class:`Sequential` (the paper's protocol): learned in the loop, on the pruned layers' outputs.
- :class:`Parallel`: all learned first from one dense pass, spread over torchrun ranks.
- :class:`Shared` (``model.r1: shared``): one Q for the whole model, learned from every layer.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..models.shards import LayerwiseModel
from .parallel import Ranks, RotationStore, stored, train_rotations
from .sequential import LayerLoop, Plan, fit_now
from .shared import fit_shared, model_guard, shared_source
from .state import load_rotations, save_rotations

SHARED_STORE = "shared_rotation.safetensors"
"""The shared phase's result in ``state/`` (a re-run skips the phase)."""


class Schedule:
    """One process, on the device it is given; :meth:`prepare` says where rotations come from."""

    is_main = True
    """Whether this process runs the loop and the export (rank 0 of a launch)."""

    def device(self, device: torch.device) -> torch.device:
        """The device this process computes on."""
        return device

    def prepare(self, model, adapter, windows: torch.Tensor, loop: LayerLoop, run_dir: Path,
                layerwise: LayerwiseModel | None = None) -> Plan:
        raise NotImplementedError

    def stop(self) -> None:
        """Leave the launch (nothing to do for one process)."""


class Sequential(Schedule):
    """Each layer's rotations are learned on the outputs of the pruned layers before it."""

    def prepare(self, model, adapter, windows: torch.Tensor, loop: LayerLoop, run_dir: Path,
                layerwise: LayerwiseModel | None = None) -> Plan:
        """Nothing ahead of the loop: it fits each layer's rotations itself."""
        return Plan(fit_now(loop))


class Parallel(Schedule):
    """All rotations are learned first from one dense calibration pass, spread over the ranks of a
    torchrun launch; then rank 0 merges and prunes sequentially."""

    def __init__(self) -> None:
        self.ranks = Ranks.from_env()

    @property
    def is_main(self) -> bool:
        return self.ranks.rank == 0

    def device(self, device: torch.device) -> torch.device:
        return self.ranks.start(device)

    def prepare(self, model, adapter, windows: torch.Tensor, loop: LayerLoop, run_dir: Path,
                layerwise: LayerwiseModel | None = None) -> Plan:
        """Every rank trains its layers, then all wait; rank 0's plan merges the stored rotations."""
        store = RotationStore(Path(run_dir) / "state" / "rotations")
        train_rotations(model, adapter, windows, loop, store, self.ranks, layerwise)
        self.ranks.barrier()
        return Plan(stored(store), rank=self.ranks.rank)

    def stop(self) -> None:
        self.ranks.stop()


class Shared(Schedule):
    """One residual rotation for the whole model (one process; see :mod:`.shared`)."""

    def prepare(self, model, adapter, windows: torch.Tensor, loop: LayerLoop, run_dir: Path,
                layerwise: LayerwiseModel | None = None) -> Plan:
        """Learn (or reload) Q and every R2, and judge Q model-wide with the guard."""
        if loop.settings.steps == 0:
            return Plan(None, export={"r1": "shared"})
        path = Path(run_dir) / "state" / SHARED_STORE
        if path.is_file():
            q, r, report = load_rotations(path)
        else:
            q, r, report = fit_shared(model, adapter, windows, loop, layerwise)
            if loop.settings.guard_used:
                start = time.perf_counter()
                guard = model_guard(model, adapter, windows, loop, q, r, layerwise)
                report["model_guard"] = {**guard, "seconds": time.perf_counter() - start}
            save_rotations(path, q, r, report)
        export = {"r1": "shared", "shared_rotation": report}
        if report.get("model_guard", {}).get("kept") == "identity":
            return Plan(None, export=export)  # Q pruned worse than no rotation over the whole model
        return Plan(shared_source(q, r), "r2_identity", shared_q=q, export=export)


SCHEDULES = {"sequential": Sequential, "parallel": Parallel, "shared": Shared}
"""Schedule name → class; :func:`schedule_name` picks the name for a run."""


def schedule_name(r1: str, mode: str) -> str:
    """``model.r1: shared`` has its own schedule; otherwise ``run.launch.mode`` decides."""
    return "shared" if r1 == "shared" else mode
