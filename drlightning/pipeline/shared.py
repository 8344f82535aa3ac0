"""Shared R1 (``model.r1: shared``): one residual rotation for the whole model.

The passes of :class:`drlightning.pipeline.schedules.Shared`:

1. One dense calibration pass folds each layer's norms (in a copy) and collects the Hessians its
   objective needs: the layers become the items of a :class:`LayersDataModule`.
2. A :class:`SharedRotationModule` learns Q and every layer's R2 from their summed objective, under
   a Trainer made like each layer's (precision, device, clipping, TensorBoard ``shared``); the
   result is saved in ``state/shared_rotation.safetensors`` (a re-run skips this phase).
3. With the guard, a second dense pass prunes every layer with (Q, R2ℓ) and as it is: if Q does
   not lower the summed pruning error, it is dropped model-wide (the plain pruner runs). Otherwise
   the layer loop merges (Q, R2ℓ) into each layer and prunes it on the outputs of the pruned
   layers before it; the guard then compares R2ℓ with the identity (Q is the same everywhere).
4. Before saving (:func:`drlightning.export.finish.to_standard`, or shard by shard in the
   layer-by-layer export), every layer's entry/exit Q cancels against its neighbour's: the
   wrappers are dropped and Q is absorbed into the embeddings and lm_head — a standard checkpoint.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch
from torch import nn

from ..layer.capture import LayerInputs, collect_hessians, run_layer
from ..layer.role_weights import measured_role_weights, weights_across_layers
from ..layer.step import Rotations, RotationSource, layer_step
from ..layer.walk import Visited, walk_layers
from ..lightning.shared_rotation import LayersDataModule, SharedRotationModule, layer_item
from ..models.adapters import ArchitectureAdapter, HeadLayout
from ..rotation import fold_norms, frozen_layer
from .sequential import LayerLoop


def dense_items(model: nn.Module, adapter: ArchitectureAdapter, windows: torch.Tensor,
                loop: LayerLoop, layerwise=None) -> list:
    """Every layer's frozen objective tensors, from one walk through the dense model (copies of
    its layers, norm-folded; with ``layerwise`` each is loaded from the shards and released). With
    ``role_weights: measured`` each layer's group errors are measured on the way and every
    item's pruned-mass divisors are divided by its weights (normalised over all layers). With
    ``best_on: held_out`` (or ``auto``) and held-out windows each item also carries the objective's
    tensors from the held-out windows' Hessians (the Hessian-derived matrices once more, not the
    weights), on which the fit keeps its iterate."""
    settings, layout = loop.settings, HeadLayout.from_config(model.config)
    stats, measure = settings.needed_stats(), settings.role_weights_used == "measured"
    spec = settings.prune_spec(adapter, layout) if measure else None

    def frozen(weights: dict, inputs: LayerInputs, layer: nn.Module):
        hessians = collect_hessians(layer, adapter, inputs, stats) if stats else None
        hessians = {k: v.cpu() for k, v in hessians.items()} if hessians else None
        return frozen_layer(weights, hessians, settings.score, layout,
                            settings.reference_quirks, int(windows.shape[1]))

    def work(index: int, layer: nn.Module, inputs: LayerInputs) -> Visited:
        fold_norms(layer, adapter)
        fitted = inputs.fitted()  # held-out windows never reach a fit
        errors = measured_role_weights(layer, fitted, spec)[1] if measure else None
        weights = {r: adapter.linear(layer, r).weight.detach().float().cpu()
                   for r in adapter.roles(layer)}
        fit = frozen(weights, fitted, layer)
        held = None  # the held-out windows' tensors: only to choose which iterate is kept
        if settings.wants_held_hessians(inputs.held):
            held = frozen(weights, inputs.held_out(), layer)
        return Visited(layer, None, {"item": layer_item(index, fit, layout, settings.spec, held),
                                     "errors": errors, "roles": tuple(fit.weights)})

    walk = replace(loop.walk, desc="dense pass (shared R1)")
    found = [v.report for _, v in walk_layers(model, adapter, windows, work, walk,
                                              layerwise=layerwise, in_place=False)]
    items = [f["item"] for f in found]
    if not measure:
        return items
    errors = [f["errors"] for f in found]
    weights = weights_across_layers(errors, [f["roles"] for f in found])
    def divided(scale: dict | None, w: dict) -> dict | None:
        return None if scale is None else {role: v / w[role] for role, v in scale.items()}

    return [replace(item, scale=divided(item.scale, w), held_scale=divided(item.held_scale, w),
                    group_errors=e)
            for item, e, w in zip(items, errors, weights, strict=True)]


def fit_shared(model: nn.Module, adapter: ArchitectureAdapter, windows: torch.Tensor,
               loop: LayerLoop, layerwise=None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Learn (Q, R2 of every layer) from the summed objective; returns them and a report."""
    start = time.perf_counter()
    settings = loop.settings
    items = dense_items(model, adapter, windows, loop, layerwise)
    module = SharedRotationModule(HeadLayout.from_config(model.config), len(items), settings.spec,
                                  settings.lr)
    per_step = settings.layers_per_step
    data = LayersDataModule(items, per_step if per_step and per_step < len(items) else None)
    loop.make_trainer("shared", settings).fit(module, datamodule=data)
    q, r = module.best_rotations()
    report = {**module.report(), "layers": len(items), "layers_per_step": data.layers_per_step
              or len(items), "role_weights": settings.role_weights_used,
              "fit_seconds": time.perf_counter() - start}
    if settings.role_weights_used == "measured":
        report["group_errors"] = [item.group_errors for item in items]
    return q.detach().cpu(), r.detach().cpu(), report


def shared_source(q: torch.Tensor, r: torch.Tensor) -> RotationSource:
    """The rotation source of a shared-R1 run: Q and layer ℓ's R2ℓ."""
    return lambda task: Rotations(q, r[task.index], {})


@torch.no_grad()
def model_guard(model: nn.Module, adapter: ArchitectureAdapter, windows: torch.Tensor,
                loop: LayerLoop, q: torch.Tensor, r: torch.Tensor, layerwise=None) -> dict:
    """The model-wide guard for Q: one walk through the dense model (copies of its layers) in
    which every layer goes through the layer step with (Q, R2ℓ) and with its unrotated self as
    the guard's candidates; returns both summed pruning errors and which one is kept."""
    spec = replace(loop.prune_spec(model, adapter), guard=True)
    source = shared_source(q, r)

    def work(index: int, layer: nn.Module, inputs: LayerInputs) -> Visited:
        dense_out = run_layer(layer, inputs)
        report = layer_step(index, layer, inputs, dense_out, spec, source, "unrotated")[1]
        return Visited(layer, dense_out, report)

    totals = {"shared": 0.0, "identity": 0.0}
    walk = replace(loop.walk, desc="model-wide guard")
    for _, visited in walk_layers(model, adapter, windows, work, walk, layerwise=layerwise,
                                  in_place=False):
        totals["shared"] += visited.report["pruning_error_rotated"]
        totals["identity"] += visited.report["pruning_error_unrotated"]
    return {**totals, "kept": "shared" if totals["shared"] < totals["identity"] else "identity"}
