"""The rotate-and-prune loop: per decoder layer fold → rotations → merge → prune → propagate.

One walk over the layers (:func:`drlightning.layer.walk.walk_layers`) whose work is the layer step
(:func:`drlightning.layer.step.layer_step`); the schedule only says where each layer's rotations
come from (:func:`fit_now`: learned here on the outputs of the pruned layers before it, each
layer's fit merging and pruning it in its own callbacks).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from lightning import Callback, Trainer
from torch import nn

from ..callbacks.merge import MergeRotations
from ..callbacks.prune import PruneLayer
from ..layer.capture import LayerInputs, collect_hessians, run_layer
from ..layer.prune import PruneSpec
from ..layer.role_weights import measured_role_weights
from ..layer.step import LayerTask, Rotations, RotationSource, layer_step
from ..layer.walk import Visited, Walk, walk_layers
from ..lightning.layer_data import LayerDataModule
from ..lightning.rotation_module import RotationModule
from ..lightning.rotation_settings import RotationSettings
from ..models.adapters import ArchitectureAdapter, HeadLayout
from ..models.shards import LayerwiseModel
from .state import RunState

TrainerFactory = Callable[..., Trainer]
"""(layer index or "shared", the rotation settings[, callbacks of this fit]) → a fresh Trainer."""


@dataclass(frozen=True)
class LayerLoop:
    """What every layer of a run shares: the rotation ``settings``, how each layer's Trainer is
    made, how the calibration windows are replayed, and the hooks around each layer.

    ``on_fit(index, module)`` runs after a layer's rotation training (e.g. importance pictures),
    ``on_layer(report)`` after each finished layer. ``unrotated_error`` also prunes a copy of each
    layer without rotation and reports its error; ``offload`` keeps the calibration activations
    in host memory between layers.
    """

    settings: RotationSettings
    make_trainer: TrainerFactory
    batch_size: int = 8
    progress: bool = True
    offload: bool = False
    unrotated_error: bool = False
    on_fit: Callable[[int, RotationModule], None] | None = None
    on_layer: Callable[[dict], None] | None = None
    held_out: int = 0
    """Extra held-out windows at the end of the calibration windows (``data.held_out``)."""
    module_class: type[RotationModule] = RotationModule
    """The LightningModule each layer's fit builds from ``settings`` (a subclass, e.g. a study's)."""

    @property
    def walk(self) -> Walk:
        return Walk(self.batch_size, self.offload, self.progress,
                    holdout=self.settings.holdout, held_out=self.held_out)

    def prune_spec(self, model: nn.Module, adapter: ArchitectureAdapter) -> PruneSpec:
        """How this run prunes the layers of ``model``."""
        return self.settings.prune_spec(adapter, HeadLayout.from_config(model.config),
                                        self.unrotated_error)


def fit_rotation(task: LayerTask, loop: LayerLoop,
                 callbacks: tuple[Callback, ...] = ()) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Train one norm-folded layer's rotations (with ``callbacks`` on its Trainer); returns
    (Q, R2, report with ``fit_seconds``)."""
    start = time.perf_counter()
    settings, spec = loop.settings, task.spec
    weights, measured = None, {}
    if settings.role_weights_used == "measured":
        weights, errors = measured_role_weights(task.layer, task.inputs.fitted(), spec)
        measured = {"role_weights": weights, "group_errors": errors}
    stats = settings.needed_stats()
    fitted = task.inputs.fitted()  # held-out windows never reach a fit
    hessians = collect_hessians(task.layer, spec.adapter, fitted, stats) if stats else None
    held = None  # the held-out windows' Hessians: only to choose which iterate is kept
    if settings.wants_held_hessians(task.inputs.held):
        held = collect_hessians(task.layer, spec.adapter, task.inputs.held_out(), stats)
    dm = LayerDataModule(task.index, task.layer, spec.adapter, spec.layout, task.inputs, hessians,
                         settings.steps, weights, dense_out=task.dense_out, others=task.others,
                         spec=spec, held_hessians=held)
    module = loop.module_class.from_settings(settings)
    loop.make_trainer(task.index, settings, callbacks).fit(module, datamodule=dm)
    if loop.on_fit is not None:
        loop.on_fit(task.index, module)
    q, r = module.best_rotations()
    return q, r, {**module.report(), **measured, "fit_seconds": time.perf_counter() - start}


def fit_now(loop: LayerLoop) -> RotationSource | None:
    """The sequential protocol's rotation source: each layer's rotations learned when its turn
    comes, merged and pruned by the fit's own :class:`MergeRotations` and :class:`PruneLayer`
    (None with ``steps == 0``: the plain pruner)."""
    if loop.settings.steps == 0:
        return None

    def source(task: LayerTask) -> Rotations:
        merge = MergeRotations()
        prune = PruneLayer(merge)
        q, r, report = fit_rotation(task, loop, (merge, prune))
        if prune.layer is None:
            raise RuntimeError(f"layer {task.index}: the Trainer of its fit did not run the merge and "
                               "prune callbacks; a custom make_trainer(index, settings, callbacks) "
                               "must put the given callbacks on the Trainer it makes")
        report["fit_seconds"] -= merge.seconds + prune.report["prune_seconds"]
        finished = (prune.layer, {**merge.report, **prune.report}, prune.outputs)
        return Rotations(q, r, report, finished)

    return source


@dataclass(frozen=True)
class Plan:
    """A schedule's answer to "where do the layers' rotations come from?".

    ``rotations``: each layer's (Q, R2) source (None: the plain pruner); ``alternative``: the
    guard's other candidate; ``shared_q``: the one residual rotation of a shared-R1 run (absorbed
    at export); ``export``: the schedule's fields for results.json's ``export``; ``rank``: this
    process's rank (a rank > 0 of a parallel launch has trained its layers and stops there).
    """

    rotations: RotationSource | None
    alternative: str = "unrotated"
    shared_q: torch.Tensor | None = None
    export: dict = field(default_factory=dict)
    rank: int = 0


def rotate_and_prune(model: nn.Module, adapter: ArchitectureAdapter, windows: torch.Tensor,
                     loop: LayerLoop, state: RunState | None = None, plan: Plan | None = None,
                     layerwise: LayerwiseModel | None = None) -> list[dict]:
    """Rotate and prune every decoder layer of ``model`` in place, sequentially; returns one
    report per layer (with its pruning error ‖pruned(X) − dense(X)‖ / ‖dense(X) − X‖).

    Layer ℓ sees the outputs of the already rotated and pruned layers before it. ``plan`` says
    where each layer's (Q, R2) come from and the guard's other candidate (default: learned here,
    :func:`fit_now`; see :func:`drlightning.layer.step.layer_step`).
    With a ``state``, layers finished by an earlier run are restored and replayed, and every newly
    finished layer is saved before the next one starts. With ``layerwise`` the layers live on
    ``meta`` and are loaded from the shards in turn (``state`` then keeps the finished ones).
    """
    if layerwise is not None and state is None:
        raise ValueError("layer-by-layer loading needs a run state to keep the finished layers")
    plan = plan or Plan(fit_now(loop))
    spec = loop.prune_spec(model, adapter)
    n_layers = len(adapter.decoder_layers(model))
    done = state.finished_layers(n_layers) if state is not None else 0
    if done:
        rest = f"continuing at layer {done}" if done < n_layers else "finishing the run"
        print(f"resuming {state.dir.parent}: layers 0-{done - 1} were finished by an earlier run "
              f"({done} of {n_layers}), {rest}", flush=True)
    device = layerwise.device if layerwise is not None else None

    def work(index: int, layer: nn.Module, inputs: LayerInputs) -> Visited:
        if index < done:
            layer, report = state.load_layer(index, layer, device)
            return Visited(layer, run_layer(layer, inputs), report)
        start = time.perf_counter()
        dense_out = run_layer(layer, inputs)
        layer, report, outputs = layer_step(index, layer, inputs, dense_out, spec, plan.rotations,
                                            plan.alternative)
        report = {"layer": index, **report, "seconds": time.perf_counter() - start}
        if state is not None:
            state.save_layer(index, layer, report)
        return Visited(layer, outputs, report)

    reports = []
    for index, visited in walk_layers(model, adapter, windows, work, loop.walk, layerwise=layerwise,
                                      restored=done):
        reports.append(visited.report)
        if index >= done and loop.on_layer is not None:
            loop.on_layer(visited.report)
    return reports
