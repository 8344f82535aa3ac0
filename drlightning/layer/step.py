"""The layer step: fold the norms, get the rotations, merge them, prune, let the real error decide.

:func:`layer_step` is the one place every schedule goes through for a layer: it takes where the
rotations come from (a :data:`RotationSource`: fitted now, loaded from a store, or the shared one)
and the guard's other candidate as values. Values in, values out: :func:`merge_layer` returns the
wrapped layer and its invariance error; :func:`prune_candidates` prunes each candidate and keeps
the one whose output on the calibration inputs stays closest to the dense layer's (the guard).
"""

from __future__ import annotations

import copy
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..models.adapters import ArchitectureAdapter, HeadLayout
from ..rotation import RotatedLayer, fold_norms, merge_rotations, rotation_storage_dtype
from ..rotation.orthogonal import in_precision
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
    q = in_precision(q, rotation_storage_dtype(weight.dtype)).to(weight.device)
    r = in_precision(r, rotation_storage_dtype(weight.dtype)).to(weight.device)
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
    pruning error ‖pruned(X) − dense(X)‖ / ‖dense(X) − X‖ on the calibration inputs X wins. With
    held-out windows (``inputs.held``) the candidates are pruned on the other windows and judged
    on the held-out ones only; asked to hold windows out (``spec.holdout``) without any, the
    guard keeps the unrotated candidate (the plain pruner's choice) and says so. The report holds
    each candidate's error (``pruning_error_<name>``) and, with several, ``guard``: the name of
    the one kept. The outputs cover every window (the next layer's inputs). With
    ``spec.refit == "layer"`` the kept candidate is then refitted (its errors are the refitted
    layer's; the others' stay as pruned).
    """
    kept: tuple | None = None
    errors: dict[str, float] = {}
    fit_errors: dict[str, float] = {}
    judged = inputs.held_out()  # all windows when none are held out
    plain_only = spec.holdout > 0 and not inputs.held and "unrotated" in candidates
    start = time.perf_counter()

    def measure(name: str, layer: nn.Module) -> LayerInputs:
        """Run ``layer`` on every window; note its error on the judged (and fitted) ones."""
        out = run_layer(layer, inputs)
        errors[name] = relative_error(out.held_out(), dense_out.held_out(), judged)
        if inputs.held:
            fit_errors[name] = relative_error(out.fitted(), dense_out.fitted(), inputs.fitted())
        return out

    for name, candidate in candidates.items():
        pruned, report = prune_layer(candidate, inputs.fitted(), spec)
        out = measure(name, pruned)
        better = kept is None or (spec.guard and errors[name] < errors[kept[0]])
        if plain_only and spec.guard:
            better = name == "unrotated"
        if better:
            kept = (name, pruned, report, out)
        del pruned, out
    name, layer, report, out = kept
    if spec.refit == "layer":  # the kept candidate only: one refit per layer
        from ..lightning.layer_refit import refit_layer  # Lightning only where it is used

        layer, report["refit"] = refit_layer(layer, spec.adapter, inputs, dense_out,
                                             spec.refit_steps, spec.refit_lr)
        out = measure(name, layer)
    report["pruning_error"] = errors[name]
    report["prune_seconds"] = time.perf_counter() - start
    if inputs.held:
        report["judged_on"] = "held-out windows"
        report["pruning_error_fitted"] = fit_errors[name]
        report.update({f"pruning_error_fitted_{n}": e for n, e in fit_errors.items()})
    elif plain_only:
        report["judged_on"] = ("too little calibration text to hold windows out: the plain "
                               "pruner's layer is kept")
    elif spec.guard and len(candidates) > 1:
        report["judged_on"] = FITTED_ONLY
    if len(errors) > 1:
        report["guard"] = name
        report.update({f"pruning_error_{n}": e for n, e in errors.items()})
    return layer, report, out


FITTED_ONLY = ("the fitted windows (none held out: data.held_out 0); the choice may fit the "
               "calibration text")
"""What a guard without held-out windows decided on, as its layer report says."""


@dataclass(frozen=True)
class LayerTask:
    """One layer's step as a rotation source (and the fit's callbacks) see it.

    ``layer`` is norm-folded, its rotations not merged yet; ``others`` are the guard's other
    candidates, ready to prune (the unrotated layer); ``dense_out`` are the dense layer's outputs on
    ``inputs`` (None where nothing is pruned, e.g. the parallel mode's training pass).
    """

    index: int
    layer: nn.Module
    inputs: LayerInputs
    spec: PruneSpec
    dense_out: LayerInputs | None = None
    others: dict[str, nn.Module] = field(default_factory=dict)


@dataclass(frozen=True)
class Rotations:
    """What a rotation source gives for one layer: (Q, R2) and its report. ``finished`` is the
    step's result (kept layer, report, outputs) when the fit's own callbacks
    (:class:`~drlightning.callbacks.MergeRotations`, :class:`~drlightning.callbacks.PruneLayer`)
    already merged and pruned the layer."""

    q: torch.Tensor
    r: torch.Tensor
    report: dict
    finished: tuple[nn.Module, dict, LayerInputs] | None = None


RotationSource = Callable[[LayerTask], Rotations]
"""A layer's task → its :class:`Rotations`: fitted now, loaded from a store, or the shared ones."""

ALTERNATIVES = ("unrotated", "r2_identity")
"""The guard's other candidate: the layer as it came (per-layer R1), or the shared Q with every
R2 the identity (shared R1: Q itself must stay, every layer carries it)."""


def layer_step(index: int, layer: nn.Module, inputs: LayerInputs, dense_out: LayerInputs,
               spec: PruneSpec, rotations: RotationSource | None,
               alternative: str = "unrotated") -> tuple[nn.Module, dict, LayerInputs]:
    """Rotate, merge and prune one layer; returns (kept layer, report, its outputs).

    ``rotations=None`` runs the plain pruner (no folding, no rotation). Otherwise the norms are
    folded, ``rotations`` gives (Q, R2), they are merged (with the function-preserving
    self-check) and the layer is pruned — and, with ``spec.guard`` (or ``spec.report_identity``),
    so is the ``alternative`` candidate (see :data:`ALTERNATIVES`); the guard keeps the one with
    the lower pruning error on the calibration inputs. A per-layer fit merges and prunes in its
    own callbacks (the same functions) and hands the result back in ``Rotations.finished``.
    """
    if rotations is None:
        return prune_candidates({"unrotated": layer}, inputs, dense_out, spec)
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative={alternative!r}; allowed: {', '.join(ALTERNATIVES)}")
    other = spec.guard or spec.report_identity
    others = {"unrotated": copy.deepcopy(layer)} if other and alternative == "unrotated" else {}
    fold_norms(layer, spec.adapter)
    folded = copy.deepcopy(layer) if other and alternative == "r2_identity" else None
    got = rotations(LayerTask(index, layer, inputs, spec, dense_out, others))
    gc.collect()  # a fit's Trainer, module and datamodule form reference cycles: free them now
    if got.finished is not None:
        if folded is not None:
            raise ValueError("a rotation source that merges and prunes itself cannot have the "
                             "'r2_identity' alternative (it needs the merge here)")
        kept, report, out = got.finished
        return kept, {**got.report, **report}, out
    rotated, invariance = merge_layer(layer, got.q, got.r, inputs, spec.adapter, spec.layout, index)
    candidates = {"rotated": rotated, **others}
    if folded is not None:
        eye = torch.eye(got.r.shape[-1], dtype=got.r.dtype).expand_as(got.r).contiguous()
        candidates["r2_identity"] = merge_layer(folded, got.q, eye, inputs, spec.adapter,
                                                spec.layout, index)[0]
    kept, report, out = prune_candidates(candidates, inputs, dense_out, spec)
    return kept, {**got.report, "invariance_error": invariance, **report}, out
