"""Shared-R1 schedule (``model.r1: shared``): one residual rotation for the whole model.

1. One dense calibration pass folds each layer's norms (in a copy) and collects the Hessians its
   objective needs: the layers become the items of a :class:`LayersDataModule`.
2. A :class:`SharedRotationModule` learns Q and every layer's R2 from their summed objective, under
   a Trainer made like each layer's (precision, device, clipping, TensorBoard ``shared``); the
   result is saved in ``state/shared_rotation.safetensors`` (a re-run skips this phase).
3. With the guard, a second dense pass prunes every layer with (Q, R2ℓ) and as it is: if Q does
   not lower the summed pruning error, it is dropped model-wide (the plain pruner runs). Otherwise
   the layer loop merges (Q, R2ℓ) into each layer and prunes it on the outputs of the pruned
   layers before it; the guard then compares R2ℓ with the identity (Q is the same everywhere).
4. Before saving (:func:`to_standard`, or shard by shard in the layer-by-layer export), every
   layer's entry/exit Q cancels against its neighbour's: the wrappers are dropped and Q is
   absorbed into the embeddings and lm_head — a standard checkpoint.
"""

from __future__ import annotations

import copy
import functools
import gc
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..layer.capture import LayerInputs, capture_layer_inputs, collect_hessians, run_layer
from ..layer.prune import PruneSpec
from ..layer.role_weights import measured_role_weights, weights_across_layers
from ..layer.step import merge_layer, prune_candidates
from ..lightning.shared_rotation import LayersDataModule, SharedRotationModule, layer_item
from ..models.adapters import ROLES, ArchitectureAdapter, HeadLayout
from ..rotation import RotatedLayer, fold_norms, frozen_layer
from ..rotation.shared import absorb_ends
from .sequential import LayerLoop
from .state import load_rotations, save_rotations

STORE = "shared_rotation.safetensors"


def dense_items(model: nn.Module, adapter: ArchitectureAdapter, windows: torch.Tensor,
                loop: LayerLoop, layerwise=None) -> list:
    """Every layer's frozen objective tensors, from one pass through the dense model (with
    ``layerwise``, each layer is loaded from the shards, folded and released again). With
    ``role_weights: measured`` each layer's group errors are measured on the way and every
    item's pruned-mass divisors are divided by its weights (normalised over all layers)."""
    template, layout = loop.template, HeadLayout.from_config(model.config)
    inputs: LayerInputs = capture_layer_inputs(model, adapter, windows, loop.batch_size, loop.offload)
    stats, items, errors = template.needed_stats(), [], []
    measure = template.role_weights == "measured"
    spec = template.prune_spec(adapter, layout) if measure else None
    layers = adapter.decoder_layers(model)
    for i in tqdm(range(len(layers)), desc="dense pass (shared R1)", disable=not loop.progress):
        layer = layerwise.load(i) if layerwise is not None else copy.deepcopy(layers[i])
        fold_norms(layer, adapter)
        if measure:
            errors.append(measured_role_weights(layer, inputs, spec)[1])
        hessians = collect_hessians(layer, adapter, inputs, stats) if stats else None
        weights = {r: adapter.linear(layer, r).weight.detach().float().cpu() for r in ROLES}
        hessians = {k: v.cpu() for k, v in hessians.items()} if hessians else None
        frozen = frozen_layer(weights, hessians, template.score, layout,
                              template.hparams.reference_quirks, int(windows.shape[1]))
        items.append(layer_item(i, frozen, layout, template.spec))
        if i < len(layers) - 1:
            inputs = run_layer(layer, inputs)
        if layerwise is not None:
            layerwise.release(i)
        del layer, hessians
        gc.collect()
    if not measure:
        return items
    return [replace(item, scale={role: v / weights[role] for role, v in item.scale.items()},
                    group_errors=e)
            for item, e, weights in zip(items, errors, weights_across_layers(errors), strict=True)]


def fit_shared(model: nn.Module, adapter: ArchitectureAdapter, windows: torch.Tensor,
               loop: LayerLoop, layerwise=None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Learn (Q, R2 of every layer) from the summed objective; returns them and a report."""
    start = time.perf_counter()
    template = loop.template
    items = dense_items(model, adapter, windows, loop, layerwise)
    module = SharedRotationModule(HeadLayout.from_config(model.config), len(items), template.spec,
                                  template.hparams.lr)
    per_step = template.hparams.get("layers_per_step")
    data = LayersDataModule(items, per_step if per_step and per_step < len(items) else None)
    loop.make_trainer("shared", template).fit(module, datamodule=data)
    q, r = module.best_rotations()
    report = {**module.report(), "layers": len(items), "layers_per_step": data.layers_per_step
              or len(items), "role_weights": template.role_weights,
              "fit_seconds": time.perf_counter() - start}
    if template.role_weights == "measured":
        report["group_errors"] = [item.group_errors for item in items]
    return q.detach().cpu(), r.detach().cpu(), report


def shared_step(index: int, layer: nn.Module, inputs: LayerInputs, dense_out: LayerInputs,
                spec: PruneSpec, q: torch.Tensor, r: torch.Tensor) -> tuple[nn.Module, dict, LayerInputs]:
    """Merge (Q, R2ℓ) into one layer and prune it; with the guard also (Q, I) and keep the better."""
    fold_norms(layer, spec.adapter)
    other = copy.deepcopy(layer) if spec.guard else None
    rotated, invariance = merge_layer(layer, q, r[index], inputs, spec.adapter, spec.layout, index)
    candidates = {"rotated": rotated}
    if other is not None:
        eye = torch.eye(spec.layout.head_dim, dtype=r.dtype).expand_as(r[index]).contiguous()
        candidates["r2_identity"] = merge_layer(other, q, eye, inputs, spec.adapter, spec.layout,
                                                index)[0]
    kept, report, out = prune_candidates(candidates, inputs, dense_out, spec)
    return kept, {"invariance_error": invariance, **report}, out


@torch.no_grad()
def model_guard(model: nn.Module, adapter: ArchitectureAdapter, windows: torch.Tensor,
                loop: LayerLoop, q: torch.Tensor, r: torch.Tensor, layerwise=None) -> dict:
    """The model-wide guard for Q: on one pass through the dense model, every layer is pruned
    with (Q, R2ℓ) and as it is; returns both summed pruning errors and which one is kept."""
    spec = replace(loop.template.prune_spec(adapter, HeadLayout.from_config(model.config)),
                   guard=True)
    inputs = capture_layer_inputs(model, adapter, windows, loop.batch_size, loop.offload)
    layers, totals = adapter.decoder_layers(model), {"shared": 0.0, "identity": 0.0}
    for i in tqdm(range(len(layers)), desc="model-wide guard", disable=not loop.progress):
        layer = layerwise.load(i) if layerwise is not None else layers[i]
        dense_out = run_layer(layer, inputs)
        folded = copy.deepcopy(layer)
        fold_norms(folded, adapter)
        rotated = merge_layer(folded, q, r[i], inputs, adapter, spec.layout, i)[0]
        candidates = {"shared": rotated, "identity": copy.deepcopy(layer)}
        report = prune_candidates(candidates, inputs, dense_out, spec)[1]
        for name in totals:
            totals[name] += report[f"pruning_error_{name}"]
        inputs = dense_out
        if layerwise is not None:
            layerwise.release(i)
        del folded, rotated, candidates
        gc.collect()
    return {**totals, "kept": "shared" if totals["shared"] < totals["identity"] else "identity"}


def plain_step(index: int, layer: nn.Module, inputs: LayerInputs, dense_out: LayerInputs,
               spec: PruneSpec) -> tuple[nn.Module, dict, LayerInputs]:
    """The plain pruner (and permutations) on one layer: the model-wide guard dropped Q."""
    return prune_candidates({"unrotated": layer}, inputs, dense_out, spec)


@torch.no_grad()
def to_standard(model: nn.Module, adapter: ArchitectureAdapter, q: torch.Tensor,
                probe: torch.Tensor) -> dict:
    """Drop every layer's (identical) entry/exit rotation and absorb Q into the embeddings and
    lm_head; the logits on ``probe`` must stay within float tolerance. Returns export fields."""
    layers = adapter.decoder_layers(model)
    before = model(probe, use_cache=False).logits.double()
    for i, layer in enumerate(layers):
        if not isinstance(layer, RotatedLayer) or not torch.equal(
                layer.rotation.cpu(), q.cpu().to(layer.rotation.dtype)):
            raise RuntimeError(f"layer {i} does not carry the shared rotation; cannot export a "
                               "standard checkpoint")
        layers[i] = layer.inner
    fields = absorb_ends(model, adapter, q)
    after = model(probe, use_cache=False).logits.double()
    rel = ((after - before).norm() / before.norm()).item()
    return {"r1": "shared", **fields, "standard_merge_error": rel}


class Shared:
    """The schedule of ``model.r1: shared`` (whole model, one process; see the module docstring)."""

    is_main = True

    def __init__(self) -> None:
        self.q: torch.Tensor | None = None
        self.fit_report: dict | None = None

    def device(self, device: torch.device) -> torch.device:
        return device

    def prepare(self, model, adapter, windows, loop: LayerLoop, run_dir: Path, layerwise=None):
        """Learn (or reload) the shared rotations; returns the layer loop's merge-and-prune step."""
        if loop.template.hparams.steps == 0:
            return None
        path = Path(run_dir) / "state" / STORE
        if path.is_file():
            q, r, report = load_rotations(path)
        else:
            q, r, report = fit_shared(model, adapter, windows, loop, layerwise)
            if loop.template.effective_settings()["guard"]:
                start = time.perf_counter()
                guard = model_guard(model, adapter, windows, loop, q, r, layerwise)
                report["model_guard"] = {**guard, "seconds": time.perf_counter() - start}
            save_rotations(path, q, r, report)
        self.fit_report = report
        if report.get("model_guard", {}).get("kept") == "identity":
            return plain_step  # Q pruned worse than no rotation over the whole model
        self.q = q
        return functools.partial(shared_step, q=q, r=r)

    def report(self, run_dir: Path) -> dict:
        """Export fields: the mode and the shared phase's report (objective, seconds; none for
        the plain pruner, which rotates nothing)."""
        return {"r1": "shared", **({"shared_rotation": self.fit_report} if self.fit_report else {})}

    def stop(self) -> None:
        pass
