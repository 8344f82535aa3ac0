"""Merge the learned rotations into the layer's weights when rotation training ends."""

from __future__ import annotations

import torch
from lightning import Callback, LightningModule, Trainer

from drlightning.capture import LayerInputs, run_layer
from drlightning.rotation import RotatedLayer, merge_rotations, rotation_storage_dtype

INVARIANCE_TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 5e-2,
                        torch.float16: 1e-2}
"""Largest relative output change a merge may cause, per weight dtype (rounding of merged weights)."""


def _first_batch_output(layer, inputs: LayerInputs) -> torch.Tensor | None:
    if not inputs.hidden:
        return None
    first = LayerInputs(hidden=inputs.hidden[:1], kwargs=inputs.kwargs[:1], device=inputs.device)
    return run_layer(layer, first).hidden[0].to(next(layer.parameters()).device).double()


class MergeRotations(Callback):
    """On ``on_train_end``: fuse R2 and the inner uses of R1 (float32 math) and wrap the layer.

    After this the datamodule's ``layer`` computes Q·f(Qᵀx) with f the merged layer, and
    ``datamodule.rotation`` holds Q (entry Qᵀ, exit Q). Runs before pruning (``on_fit_end``).
    Self-check: on the first calibration batch the wrapped layer must reproduce the unrotated
    layer's output within a dtype-appropriate tolerance, else the run stops (catches transpose and
    fusion bugs on new architectures).
    """

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        q, r = pl_module.best_rotations()
        merge_into_datamodule(trainer.datamodule, q, r, pl_module.report())


def merge_into_datamodule(dm, q: torch.Tensor, r: torch.Tensor, report: dict) -> None:
    """Merge rotations (Q, R2) into ``dm.layer``, wrap it, and check the output is unchanged.

    Sets ``dm.layer`` (the RotatedLayer), ``dm.rotation`` and ``dm.rotation_report`` (``report`` plus
    the measured invariance error). Also used by the parallel mode with rotations loaded from disk.
    """
    layer = dm.layer
    weight = dm.adapter.linear(layer, "q").weight
    q = q.detach().to(weight.device, rotation_storage_dtype(weight.dtype))
    r = r.detach().to(weight.device, rotation_storage_dtype(weight.dtype))
    before = _first_batch_output(layer, dm.inputs)
    merge_rotations(layer, dm.adapter, dm.layout, q, r)
    dm.layer = RotatedLayer(layer, q)
    dm.rotation = q
    dm.rotation_report = dict(report)
    after = _first_batch_output(dm.layer, dm.inputs)
    if before is not None:
        rel = ((after - before).norm() / before.norm()).item()
        tol = INVARIANCE_TOLERANCE.get(weight.dtype, 1e-2)
        dm.rotation_report["invariance_error"] = rel
        if not rel <= tol:
            raise RuntimeError(
                f"layer {dm.index}: merging the rotations changed the layer's output by {rel:.2e} "
                f"(relative; tolerance {tol:.0e} for {weight.dtype}); rotations must be "
                f"function-preserving — check the {dm.adapter.name} adapter's roles and norms")
