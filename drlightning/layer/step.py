"""The end of one layer's step: merge the learned rotations, prune, and let the real error decide.

Values in, values out: :func:`merge_layer` returns the wrapped layer and its invariance error;
:func:`prune_candidates` prunes each candidate (the rotated layer, the unrotated one) and keeps the
one whose output on the calibration inputs stays closest to the dense layer's (the guard).
"""

from __future__ import annotations

import time

import torch
from torch import nn

from ..models.adapters import ArchitectureAdapter, HeadLayout
from ..rotation import RotatedLayer, merge_rotations, rotation_storage_dtype
from .capture import LayerInputs, run_layer
from .prune import PruneSpec, prune_layer

INVARIANCE_TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 5e-2,
                        torch.float16: 1e-2}
"""Largest relative output change a merge may cause, per weight dtype (rounding of merged weights)."""


def relative_error(out: LayerInputs, ref: LayerInputs, x: LayerInputs) -> float:
    """‖out − ref‖ / ‖ref − x‖ over all batches (the layer's error relative to its own update)."""
    num = sum((o.double() - r.double()).square().sum() for o, r in zip(out.hidden, ref.hidden, strict=True))
    den = sum((r.double() - i.double()).square().sum() for r, i in zip(ref.hidden, x.hidden, strict=True))
    return float((num / den).sqrt()) if den > 0 else float("nan")


def _first_batch_output(layer: nn.Module, inputs: LayerInputs) -> torch.Tensor | None:
    if not inputs.hidden:
        return None
    first = LayerInputs(hidden=inputs.hidden[:1], kwargs=inputs.kwargs[:1], device=inputs.device)
    return run_layer(layer, first).hidden[0].to(next(layer.parameters()).device).double()


def merge_layer(layer: nn.Module, q: torch.Tensor, r: torch.Tensor, inputs: LayerInputs,
                adapter: ArchitectureAdapter, layout: HeadLayout,
                index: int = 0) -> tuple[RotatedLayer, float | None]:
    """Merge R2 and the inner uses of R1 into a norm-folded ``layer`` and wrap it (Q·f(Qᵀx)).

    Self-check: on the first calibration batch the wrapped layer must reproduce the unrotated
    layer within a dtype-appropriate tolerance (catches transpose and fusion bugs on new
    architectures). Returns (wrapped layer, measured relative change or None without inputs).
    """
    weight = adapter.linear(layer, "q").weight
    q = q.detach().to(weight.device, rotation_storage_dtype(weight.dtype))
    r = r.detach().to(weight.device, rotation_storage_dtype(weight.dtype))
    before = _first_batch_output(layer, inputs)
    merge_rotations(layer, adapter, layout, q, r)
    wrapped = RotatedLayer(layer, q)
    if before is None:
        return wrapped, None
    after = _first_batch_output(wrapped, inputs)
    rel = ((after - before).norm() / before.norm()).item()
    tol = INVARIANCE_TOLERANCE.get(weight.dtype, 1e-2)
    if not rel <= tol:
        raise RuntimeError(
            f"layer {index}: merging the rotations changed the layer's output by {rel:.2e} "
            f"(relative; tolerance {tol:.0e} for {weight.dtype}); rotations must be "
            f"function-preserving — check the {adapter.name} adapter's roles and norms")
    return wrapped, rel


def prune_candidates(candidates: dict[str, nn.Module], inputs: LayerInputs, dense_out: LayerInputs,
                     spec: PruneSpec) -> tuple[nn.Module, dict, LayerInputs]:
    """Prune every candidate layer; return (kept layer, its report, its outputs).

    The first candidate is kept unless ``spec.guard`` is set, in which case the one with the lowest
    pruning error ‖pruned(X) − dense(X)‖ / ‖dense(X) − X‖ on the calibration inputs X wins. The
    report holds each candidate's error (``pruning_error_<name>``) and, with several, ``guard``:
    the name of the one kept.
    """
    kept: tuple | None = None
    errors: dict[str, float] = {}
    start = time.perf_counter()
    for name, candidate in candidates.items():
        pruned, report = prune_layer(candidate, inputs, spec)
        out = run_layer(pruned, inputs)
        errors[name] = relative_error(out, dense_out, inputs)
        if kept is None or (spec.guard and errors[name] < errors[kept[0]]):
            kept = (name, pruned, report, out)
        del pruned, out
    name, layer, report, out = kept
    report["pruning_error"] = errors[name]
    report["prune_seconds"] = time.perf_counter() - start
    if len(errors) > 1:
        report["guard"] = name
        report.update({f"pruning_error_{n}": e for n, e in errors.items()})
    return layer, report, out


def merge_and_prune(index: int, layer: nn.Module, original: nn.Module | None, q: torch.Tensor,
                    r: torch.Tensor, inputs: LayerInputs, dense_out: LayerInputs,
                    spec: PruneSpec) -> tuple[nn.Module, dict, LayerInputs]:
    """Merge (Q, R2) into the norm-folded ``layer``, then prune it — and the unrotated
    ``original``, when given, as the guard's other candidate. Returns (kept layer, report with
    ``invariance_error`` and the pruning report, its outputs)."""
    rotated, invariance = merge_layer(layer, q, r, inputs, spec.adapter, spec.layout, index)
    candidates = {"rotated": rotated, **({"unrotated": original} if original is not None else {})}
    kept, report, out = prune_candidates(candidates, inputs, dense_out, spec)
    return kept, {"invariance_error": invariance, **report}, out

