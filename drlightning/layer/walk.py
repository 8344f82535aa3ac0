"""The layer walker: the one loop over a model's decoder layers.

Every pass of a run — the sequential rotate-and-prune loop, the dense passes of the parallel and
shared-R1 schedules, the shared rotation's model-wide guard — is "capture the inputs of layer 0;
for each layer: get it (in place, a copy, or from the shards) → do the pass's work on it → carry
the outputs the work chose (the pruned layer's, or the dense layer's) to the next layer → let the
layer go". :func:`walk_layers` is that loop, written once; a pass only says what its work is.
"""

from __future__ import annotations

import copy
import gc
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..models.adapters import ArchitectureAdapter
from ..models.shards import LayerwiseModel
from .capture import LayerInputs, capture_layer_inputs, run_layer


@dataclass(frozen=True)
class Walk:
    """How the calibration windows are replayed: ``batch_size`` windows per forward pass,
    ``offload`` the activations to host memory between layers, ``progress`` bars labelled ``desc``."""

    batch_size: int = 8
    offload: bool = False
    progress: bool = True
    desc: str = "layers"
    holdout: float = 0.0
    """Share of the windows held out of the fits (the last ones, batched on their own)."""
    held_out: int = 0
    """Or the number of windows at the end held out (``data.held_out``: drawn beside the fitted ones)."""


@dataclass(frozen=True)
class Visited:
    """What a pass's work returns for one layer.

    ``layer`` is what stays in the model (e.g. the rotated, pruned layer); ``outputs`` are the next
    layer's inputs (None: the walker runs ``layer`` on the inputs when a next layer needs them);
    ``report`` is the pass's per-layer result. What the walker yields of a pass over copies keeps
    the report only (the copy is gone by then).
    """

    layer: nn.Module | None
    outputs: LayerInputs | None
    report: dict


LayerWork = Callable[[int, nn.Module, LayerInputs], Visited]
"""(index, layer, its inputs) → :class:`Visited`."""


def held_windows(n: int, holdout: float, held_out: int = 0) -> int:
    """How many of ``n`` calibration windows are held out: ``held_out`` when the data drew that
    many extra ones, else a ``holdout`` share: at least one, and at least one left for the fits (0
    when there are too few windows: the guard then keeps the plain pruner's layer)."""
    if held_out:
        return held_out
    if holdout <= 0 or n < 2:
        return 0
    return min(max(1, round(holdout * n)), n - 1)


def progress_note(report: dict) -> dict | None:
    """The progress bar's postfix for a fitted layer: its objective before → after."""
    if "best_loss" not in report:
        return None
    return {report["objective"]: f"{report['initial_loss']:.4g}->{report['best_loss']:.4g}"}


def _get(layers: nn.ModuleList, index: int, layerwise: LayerwiseModel | None, in_place: bool,
         restored: int) -> nn.Module:
    if layerwise is not None:
        return layers[index] if index < restored else layerwise.load(index)
    return layers[index] if in_place else copy.deepcopy(layers[index])


def walk_layers(model: nn.Module, adapter: ArchitectureAdapter, windows: torch.Tensor,
                work: LayerWork, walk: Walk, *, layerwise: LayerwiseModel | None = None,
                in_place: bool = True, stop: int | None = None,
                restored: int = 0) -> Iterator[tuple[int, Visited]]:
    """Walk the decoder layers ``0 … stop-1`` (all by default), yielding ``(index, visited)``
    after each layer's ``work``.

    ``in_place``: the work gets the model's own layer and what it returns replaces it (the
    rotate-and-prune loop); otherwise a copy, and the model is left as it was (dense passes).
    With ``layerwise`` each layer is loaded from the shards when its turn comes and put back on
    ``meta`` after the work (with ``in_place``, the returned layer is released: it is saved by
    then); the first ``restored`` layers are not read from the shards (the work restores them
    from a run state onto their ``meta`` tensors). No layer's outputs are computed after the last
    walked layer.
    """
    layers = adapter.decoder_layers(model)
    stop = len(layers) if stop is None else stop
    inputs = capture_layer_inputs(model, adapter, windows, walk.batch_size, walk.offload,
                                  held_windows(windows.shape[0], walk.holdout, walk.held_out))
    bar = tqdm(range(stop), desc=walk.desc, disable=not walk.progress)
    for i in bar:
        visited = work(i, _get(layers, i, layerwise, in_place, restored), inputs)
        if in_place and layerwise is None:
            layers[i] = visited.layer
        last = i == stop - 1
        if not last:
            inputs = visited.outputs if visited.outputs is not None else run_layer(visited.layer, inputs)
        if layerwise is not None:
            layerwise.release(i, visited.layer if in_place else None)
        note = progress_note(visited.report)
        if note is not None:
            bar.set_postfix(note)
        yield i, (visited if in_place else Visited(None, None, visited.report))
        del visited
        gc.collect()  # a fit's Trainer, module and datamodule form reference cycles: free them now
