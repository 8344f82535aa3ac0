"""The layer loop: per decoder layer fold → collect H → fit rotations → merge → prune → propagate."""

from __future__ import annotations

import copy
import gc
import time
from collections.abc import Callable

import torch
from lightning import Trainer
from torch import nn
from tqdm.auto import tqdm

from drlightning.callbacks import prune_layer

from .capture import (
    OBJECTIVE_STATS,
    LayerInputs,
    capture_layer_inputs,
    collect_hessians,
    run_layer,
)
from .layer_data import LayerDataModule
from .models.adapters import ArchitectureAdapter, HeadLayout
from .models.shards import LayerwiseModel
from .rotation import fold_norms
from .rotation_module import RotationModule
from .run_state import RunState

TrainerFactory = Callable[[int, RotationModule], Trainer]
LayerStep = Callable[[int, nn.Module, LayerInputs], tuple[nn.Module, dict]]


def relative_error(out: LayerInputs, ref: LayerInputs, x: LayerInputs) -> float:
    """‖out − ref‖ / ‖ref − x‖ over all batches (the layer's error relative to its own update)."""
    num = sum((o.double() - r.double()).square().sum() for o, r in zip(out.hidden, ref.hidden, strict=True))
    den = sum((r.double() - i.double()).square().sum() for r, i in zip(ref.hidden, x.hidden, strict=True))
    return float((num / den).sqrt()) if den > 0 else float("nan")


def rotate_and_prune_layer(
    index: int,
    layer: nn.Module,
    adapter: ArchitectureAdapter,
    layout: HeadLayout,
    inputs: LayerInputs,
    template: RotationModule,
    make_trainer: TrainerFactory,
    on_fit: Callable[[int, RotationModule], None] | None = None,
) -> tuple[nn.Module, dict]:
    """Rotate (unless ``steps == 0``), merge and prune one layer; returns (new layer, report).

    With ``steps == 0`` no rotation is trained or merged and the plain pruner runs on the layer.
    ``on_fit(index, module)`` is called after rotation training (e.g. to draw importance pictures).
    """
    hp = template.settings()
    steps, method = hp["steps"], hp["method"]
    if steps == 0:
        return layer, {"sparsity": prune_layer(layer, adapter, inputs, method, hp["pattern"])}
    fold_norms(layer, adapter)
    hessians = collect_hessians(layer, adapter, inputs, OBJECTIVE_STATS) if method != "magnitude" else None
    dm = LayerDataModule(index, layer, adapter, layout, inputs, hessians, steps)
    module = template.fresh()
    fit_start = time.perf_counter()
    make_trainer(index, module).fit(module, datamodule=dm)
    if on_fit is not None:
        on_fit(index, module)
    return dm.layer, {**dm.rotation_report, **dm.prune_report,
                      "fit_seconds": time.perf_counter() - fit_start}


def rotate_and_prune(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    windows: torch.Tensor,
    template: RotationModule,
    make_trainer: TrainerFactory,
    batch_size: int = 8,
    progress: bool = True,
    state: RunState | None = None,
    on_layer: Callable[[dict], None] | None = None,
    on_fit: Callable[[int, RotationModule], None] | None = None,
    unrotated_error: bool = False,
    layer_step: LayerStep | None = None,
    offload: bool = False,
    layerwise: LayerwiseModel | None = None,
) -> list[dict]:
    """Rotate and prune every decoder layer of ``model`` in place, sequentially.

    Layer ℓ sees the outputs of the already rotated and pruned layers before it. Returns one report
    dict per layer, including the layer's pruning error ‖pruned(X) − dense(X)‖ / ‖dense(X) − X‖
    on the calibration inputs X. With a ``state``, layers finished by an earlier run are restored
    and replayed instead of recomputed, and every newly finished layer is saved before the next one
    starts. ``on_layer(report)`` is called after each finished layer. ``unrotated_error`` also
    prunes a copy of each layer without rotation and reports its error (one extra pruning per layer).
    ``layer_step(index, layer, inputs) → (layer, report)`` replaces the rotate → merge → prune of one
    layer (the parallel mode merges rotations trained elsewhere). With ``layerwise`` the model's
    layers live on ``meta``: each is loaded from the shards when its turn comes and released after
    it is saved (so ``state`` is required).
    """
    if layerwise is not None and state is None:
        raise ValueError("layer-by-layer loading needs a run state to keep the finished layers")
    device = layerwise.device if layerwise is not None else None
    layout = HeadLayout.from_config(model.config)
    inputs = capture_layer_inputs(model, adapter, windows, batch_size, offload)
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
        print(f"resuming {state.dir.parent}: layers 0-{done - 1} were finished by an earlier run "
              f"({done} of {len(layers)}), continuing at layer {done}", flush=True)
    bar = tqdm(range(done, len(layers)), desc="layers", disable=not progress,
               initial=done, total=len(layers))
    for i in bar:
        start = time.perf_counter()
        if layerwise is not None:
            layers[i] = layerwise.load(i)
        dense_out = run_layer(layers[i], inputs)
        plain_error = None
        if unrotated_error and template.hparams.steps > 0:
            plain = copy.deepcopy(layers[i])
            hp = template.settings()
            prune_layer(plain, adapter, inputs, hp["method"], hp["pattern"])
            plain_error = relative_error(run_layer(plain, inputs), dense_out, inputs)
            del plain
        if layer_step is None:
            layer, report = rotate_and_prune_layer(i, layers[i], adapter, layout, inputs, template,
                                                   make_trainer, on_fit)
        else:
            layer, report = layer_step(i, layers[i], inputs)
        layers[i] = layer
        pruned_out = run_layer(layer, inputs)
        report = {"layer": i, **report, "pruning_error": relative_error(pruned_out, dense_out, inputs),
                  "seconds": time.perf_counter() - start}
        if plain_error is not None:
            report["pruning_error_unrotated"] = plain_error
        inputs = pruned_out
        if state is not None:
            state.save_layer(i, layer, report)
        if layerwise is not None:
            layerwise.release(i, layer)
        del layer, dense_out
        gc.collect()  # the layer's Trainer, module and datamodule form reference cycles: free now
        reports.append(report)
        if on_layer is not None:
            on_layer(report)
        if "best_entropy" in report:
            bar.set_postfix(entropy=f"{report['initial_entropy']:.0f}->{report['best_entropy']:.0f}")
    return reports
