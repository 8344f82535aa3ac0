"""The layer loop: per decoder layer fold → collect H → fit rotations → merge → prune → propagate."""

from __future__ import annotations

import copy
import functools
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from lightning import Trainer
from torch import nn
from tqdm.auto import tqdm

from ..layer.capture import (
    LayerInputs,
    capture_layer_inputs,
    collect_hessians,
    run_layer,
)
from ..layer.prune import PruneSpec
from ..layer.role_weights import measured_role_weights
from ..layer.step import merge_and_prune, prune_candidates
from ..lightning.layer_data import LayerDataModule
from ..lightning.rotation_module import RotationModule
from ..models.adapters import ArchitectureAdapter, HeadLayout
from ..models.shards import LayerwiseModel
from ..rotation import fold_norms
from .state import RunState

TrainerFactory = Callable[[int, RotationModule], Trainer]
LayerStep = Callable[[int, nn.Module, LayerInputs, LayerInputs, PruneSpec],
                     tuple[nn.Module, dict, LayerInputs]]
RotationSource = Callable[[int, nn.Module, LayerInputs], tuple[torch.Tensor, torch.Tensor, dict]]
"""(index, norm-folded layer, inputs) → (Q, R2, report): learned now, or loaded from a store."""


@dataclass(frozen=True)
class LayerLoop:
    """What every layer of a run shares: the rotation settings (``template``) and how each layer's
    Trainer is made, the calibration batch size, and the callbacks around each layer.

    ``on_fit(index, module)`` runs after a layer's rotation training (e.g. importance pictures),
    ``on_layer(report)`` after each finished layer. ``unrotated_error`` also prunes a copy of each
    layer without rotation and reports its error; ``offload`` keeps the calibration activations
    in host memory between layers.
    """

    template: RotationModule
    make_trainer: TrainerFactory
    batch_size: int = 8
    progress: bool = True
    offload: bool = False
    unrotated_error: bool = False
    on_fit: Callable[[int, RotationModule], None] | None = None
    on_layer: Callable[[dict], None] | None = None


def fit_rotation(index: int, layer: nn.Module, inputs: LayerInputs, loop: LayerLoop,
                 spec: PruneSpec) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Train one norm-folded layer's rotations; returns (Q, R2, report with ``fit_seconds``)."""
    start = time.perf_counter()
    template = loop.template
    weights, measured = None, {}
    if template.role_weights == "measured":
        weights, errors = measured_role_weights(layer, inputs, spec)
        measured = {"role_weights": weights, "group_errors": errors}
    stats = template.needed_stats()
    hessians = collect_hessians(layer, spec.adapter, inputs, stats) if stats else None
    dm = LayerDataModule(index, layer, spec.adapter, spec.layout, inputs, hessians,
                         template.hparams.steps, weights)
    module = template.fresh()
    loop.make_trainer(index, module).fit(module, datamodule=dm)
    if loop.on_fit is not None:
        loop.on_fit(index, module)
    q, r = module.best_rotations()
    return q, r, {**module.report(), **measured, "fit_seconds": time.perf_counter() - start}


def rotate_and_prune_layer(index: int, layer: nn.Module, inputs: LayerInputs,
                           dense_out: LayerInputs, loop: LayerLoop,
                           spec: PruneSpec) -> tuple[nn.Module, dict, LayerInputs]:
    """Rotate (unless ``steps == 0``), merge and prune one layer; returns (layer, report, outputs).

    With ``steps == 0`` the plain pruner runs on the layer. With the guard (or
    ``spec.report_identity``) an unrotated copy is pruned too (see :func:`prune_candidates`).
    """
    if loop.template.hparams.steps == 0:
        return prune_candidates({"unrotated": layer}, inputs, dense_out, spec)
    return rotate_then_prune(index, layer, inputs, dense_out, spec,
                             lambda i, folded, x: fit_rotation(i, folded, x, loop, spec))


def rotate_then_prune(index: int, layer: nn.Module, inputs: LayerInputs, dense_out: LayerInputs,
                      spec: PruneSpec, rotations: RotationSource) -> tuple[nn.Module, dict, LayerInputs]:
    """Fold the norms, get the layer's rotations from ``rotations``, merge and prune them (the
    guard's unrotated copy is taken before folding); returns (layer, report, outputs)."""
    original = copy.deepcopy(layer) if spec.guard or spec.report_identity else None
    fold_norms(layer, spec.adapter)
    q, r, report = rotations(index, layer, inputs)
    gc.collect()  # a fit's Trainer, module and datamodule form reference cycles: free them now
    layer, pruned, out = merge_and_prune(index, layer, original, q, r, inputs, dense_out, spec)
    return layer, {**report, **pruned}, out


def rotate_and_prune(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    windows: torch.Tensor,
    loop: LayerLoop,
    state: RunState | None = None,
    layer_step: LayerStep | None = None,
    layerwise: LayerwiseModel | None = None,
) -> list[dict]:
    """Rotate and prune every decoder layer of ``model`` in place, sequentially.

    Layer ℓ sees the outputs of the already rotated and pruned layers before it. Returns one report
    dict per layer, including the layer's pruning error ‖pruned(X) − dense(X)‖ / ‖dense(X) − X‖
    on the calibration inputs X. With a ``state``, layers finished by an earlier run are restored
    and replayed instead of recomputed, and every newly finished layer is saved before the next one
    starts. ``layer_step(index, layer, inputs, dense_out, spec) → (layer, report, outputs)``
    replaces the rotate → merge → prune of one layer (the parallel mode merges rotations trained
    elsewhere). With ``layerwise`` the model's layers live on ``meta``: each is loaded from the
    shards when its turn comes and released after it is saved (so ``state`` is required).
    """
    if layerwise is not None and state is None:
        raise ValueError("layer-by-layer loading needs a run state to keep the finished layers")
    device = layerwise.device if layerwise is not None else None
    spec = loop.template.prune_spec(adapter, HeadLayout.from_config(model.config),
                                    loop.unrotated_error)
    inputs = capture_layer_inputs(model, adapter, windows, loop.batch_size, loop.offload)
    layers = adapter.decoder_layers(model)
    reports = []
    done = state.finished_layers(len(layers)) if state is not None else 0
    for i in range(done):
        layers[i], report = state.load_layer(i, layers[i], device)
        inputs = run_layer(layers[i], inputs)
        if layerwise is not None:
            layerwise.release(i, layers[i])
        reports.append(report)
    if done:
        rest = f"continuing at layer {done}" if done < len(layers) else "finishing the run"
        print(f"resuming {state.dir.parent}: layers 0-{done - 1} were finished by an earlier run "
              f"({done} of {len(layers)}), {rest}", flush=True)
    bar = tqdm(range(done, len(layers)), desc="layers", disable=not loop.progress,
               initial=done, total=len(layers))
    for i in bar:
        start = time.perf_counter()
        if layerwise is not None:
            layers[i] = layerwise.load(i)
        dense_out = run_layer(layers[i], inputs)
        step = layer_step or functools.partial(rotate_and_prune_layer, loop=loop)
        layer, report, pruned_out = step(i, layers[i], inputs, dense_out, spec=spec)
        layers[i] = layer
        report = {"layer": i, **report, "seconds": time.perf_counter() - start}
        inputs = pruned_out
        if state is not None:
            state.save_layer(i, layer, report)
        if layerwise is not None:
            layerwise.release(i, layer)
        del layer, dense_out
        gc.collect()  # the layer's Trainer, module and datamodule form reference cycles: free now
        reports.append(report)
        if loop.on_layer is not None:
            loop.on_layer(report)
        if "best_loss" in report:
            bar.set_postfix({report["objective"]: f"{report['initial_loss']:.4g}->{report['best_loss']:.4g}"})
    return reports
