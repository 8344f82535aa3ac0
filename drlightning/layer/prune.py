"""Prune a decoder layer true-sequentially, optionally reordering channels for N:M first.

Groups [q, k, v] → [o] → [gate, up] → [down]: the statistics of each group are collected on the
layer as pruned so far. With ``permute`` (N:M patterns only) each of the three permutable input
spaces (see :mod:`.permute`) gets an order that keeps more importance under the pattern, and the
order is kept only if it lowers the pruned linears' real output error tr(ΔW·H·ΔWᵀ)/tr(W·H·Wᵀ)
(summed over the linears that read that space) — the first-order score alone can mislead
SparseGPT, whose result also depends on the column order it compensates in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..models.adapters import (
    INPUT_OF,
    ArchitectureAdapter,
    HeadLayout,
    base_role,
    expert_of,
    input_of,
    unit_of,
)
from ..pruning import NO_PRUNING, parse_pattern, prune_weight
from ..pruning.admm import admm_prune
from ..pruning.importance import importance, input_factor
from ..pruning.permutation import nm_permutation
from ..pruning.refit import refit_rows
from .capture import LayerInputs, collect_hessians
from .permute import head_channel_order, permute_heads, permute_intermediate, permute_residual


@dataclass(frozen=True)
class PruneSpec:
    """How a layer is pruned once its rotations are known.

    ``guard`` keeps the unrotated layer when it prunes with a lower error; ``report_identity``
    prunes it for the report only (``run.monitor.unrotated_error``).
    """

    adapter: ArchitectureAdapter
    layout: HeadLayout
    method: str
    pattern: str
    permute: bool = False
    guard: bool = False
    report_identity: bool = False
    permute_residual: bool = True
    """False with a shared R1: the residual stream's order must be the same in every layer."""
    holdout: float = 0.0
    """Share of the calibration windows held out of the fits, on which the guard judges."""
    refit: str = "none"
    """Refit of the kept weights after each group is pruned (see :mod:`..pruning.refit`)."""
    refit_damping: float = 0.01
    refit_steps: int = 100
    """Most optimiser steps of the whole-layer refit (``refit: layer``)."""
    refit_lr: float = 1e-4


GROUP_REFITS = ("rows", "admm")
"""Refits run after each true-sequential group (``layer`` runs once the whole layer is pruned)."""

GROUPS: tuple[tuple[str, ...], ...] = (("q", "k", "v"), ("o",), ("gate", "up"), ("down",))
"""True-sequential order: statistics are re-collected on the partially pruned layer per group."""

Pruned = dict[str, tuple[torch.Tensor, torch.Tensor]]
"""role → (pruned weight, pruned mask)."""


def relative_output_error(weight: torch.Tensor, pruned: torch.Tensor, hessian: torch.Tensor) -> float:
    """tr(ΔW·H·ΔWᵀ) / tr(W·H·Wᵀ): the linear's output error on the calibration inputs, relative."""
    h = hessian.to(torch.float64)
    w, delta = weight.to(torch.float64), (weight - pruned).to(torch.float64)
    base = float(((w @ h) * w).sum())
    return float(((delta @ h) * delta).sum()) / base if base > 0 else 0.0


def _prune(weights: dict[str, torch.Tensor], hessian: torch.Tensor | None, method: str,
           pattern: str) -> Pruned:
    return {role: prune_weight(w, hessian, method, pattern) for role, w in weights.items()}


def _error(weights: dict[str, torch.Tensor], pruned: Pruned, hessian: torch.Tensor) -> float:
    return sum(relative_output_error(w, pruned[r][0], hessian) for r, w in weights.items())


def _weights(layer: nn.Module, adapter: ArchitectureAdapter, roles) -> dict[str, torch.Tensor]:
    return {role: adapter.linear(layer, role).weight.data for role in roles}


def _write(layer: nn.Module, adapter: ArchitectureAdapter, pruned: Pruned,
           sparsity: dict[str, float]) -> None:
    for role, (new, mask) in pruned.items():
        adapter.linear(layer, role).weight.data.copy_(new)
        sparsity[role] = mask.float().mean().item()


def _residual(layer: nn.Module, inputs: LayerInputs, spec: PruneSpec, report: dict):
    """Choose the residual order with q, k, v (their real Hessian) and gate, up (the unpruned
    layer's); returns (layer, q/k/v pruned accordingly)."""
    adapter, method = spec.adapter, spec.method
    pattern = parse_pattern(spec.pattern)
    spec_pattern = str(pattern)
    hs = collect_hessians(layer, adapter, inputs, ("attn_in", "mlp_in"))
    attn, mlp = _weights(layer, adapter, GROUPS[0]), _weights(layer, adapter, GROUPS[2])
    c_attn, c_mlp = input_factor(hs["attn_in"], method), input_factor(hs["mlp_in"], method)
    parts = [importance(w, c_attn) for w in attn.values()] + [importance(w, c_mlp) for w in mlp.values()]
    scores = torch.cat([s / s.sum().clamp_min(torch.finfo(s.dtype).tiny) for s in parts])
    order, _ = nm_permutation(scores, pattern.n, pattern.m)
    plain = _prune(attn, hs["attn_in"], method, spec_pattern)
    if _is_identity(order):  # nothing to gain: no trial pruning
        report["residual"] = {"kept": False}
        return layer, plain
    plain.update(_prune(mlp, hs["mlp_in"], method, spec_pattern))
    before = _error(attn, plain, hs["attn_in"]) + _error(mlp, plain, hs["mlp_in"])
    ha = hs["attn_in"][order][:, order]
    hm = hs["mlp_in"][order][:, order]
    attn_p = {r: w[:, order] for r, w in attn.items()}
    mlp_p = {r: w[:, order] for r, w in mlp.items()}
    trial = {**_prune(attn_p, ha, method, spec_pattern), **_prune(mlp_p, hm, method, spec_pattern)}
    after = _error(attn_p, trial, ha) + _error(mlp_p, trial, hm)
    report["residual"] = _choice(before, after)
    if after < before:
        return permute_residual(layer, adapter, order), {r: trial[r] for r in GROUPS[0]}
    return layer, {r: plain[r] for r in GROUPS[0]}


def _is_identity(order: torch.Tensor) -> bool:
    return bool((order == torch.arange(len(order), device=order.device)).all())


def _choice(before: float, after: float) -> dict:
    return {"kept": after < before, "error_before": before, "error_after": after}


@torch.no_grad()
def prune_layer(layer: nn.Module, inputs: LayerInputs, spec: PruneSpec) -> tuple[nn.Module, dict]:
    """Prune all seven linears with ``spec``'s method and pattern; returns (layer — wrapped if the
    residual stream was reordered —, report with the sparsity per role and, with
    ``spec.permute``, each permutation's decision). ``spec.permute_residual=False`` leaves the
    residual stream's order alone (shared R1: every layer must keep the same entry rotation);
    head_dim and intermediate orders are still chosen. (``spec.guard`` is the caller's business:
    see :func:`drlightning.layer.step.prune_candidates`.)

    ``pattern == "none"`` leaves every weight as it is (sparsity 0).
    """
    adapter, method, pattern = spec.adapter, spec.method, spec.pattern
    groups = adapter.groups(layer)
    if pattern == NO_PRUNING:
        return layer, {"sparsity": {role: 0.0 for group in groups for role in group}}
    parsed = parse_pattern(pattern)
    permute = spec.permute and parsed.is_nm
    moe = adapter.is_moe(layer)
    sparsity: dict[str, float] = {}
    decisions: dict[str, dict] = {}
    report: dict = {"sparsity": sparsity}
    first = None
    if permute and spec.permute_residual and moe:
        decisions["residual"] = {"kept": False, "skipped": "Mixture-of-Experts layer"}
    elif permute and spec.permute_residual:
        layer, first = _residual(layer, inputs, spec, decisions)
    refit = spec.refit in GROUP_REFITS  # per group here; the whole-layer refit runs after the layer
    for group in groups:
        key = INPUT_OF[base_role(group[0])]
        if first is not None and group == groups[0]:
            if refit:  # the residual order is applied: the Hessian in that order
                first = _refit(layer, spec, group, first,
                               collect_hessians(layer, adapter, inputs, (key,)), report)
            _write(layer, adapter, first, sparsity)
            continue
        reorder = permute and base_role(group[0]) in ("o", "down")
        hessians = {}
        if method != "magnitude" or reorder or refit:
            hessians = collect_hessians(layer, adapter, inputs, (key,))
        weights = _weights(layer, adapter, group)
        if expert_of(group[0]) is None:
            hessian = hessians.get(key)
            pruned = _prune(weights, hessian, method, pattern)
            if reorder:
                pruned = _try_order(layer, spec, weights, pruned, hessian, decisions)
        else:
            pruned = _prune_experts(layer, spec, weights, hessians, reorder, decisions, report)
        if refit:  # after a kept reorder the layer's columns moved: the Hessian in that order
            fresh = collect_hessians(layer, adapter, inputs, (key,)) if reorder else hessians
            pruned = _refit(layer, spec, group, pruned, fresh, report)
        _write(layer, adapter, pruned, sparsity)
        del hessians  # free this group's Hessians before the next one is collected
    if permute:
        report["permutation"] = decisions
    return layer, report


def _refit(layer: nn.Module, spec: PruneSpec, group: tuple[str, ...], pruned: Pruned,
           hessians: dict[str, torch.Tensor], report: dict) -> Pruned:
    """Re-solve each pruned role's kept weights (``spec.refit``) against the layer's dense weights
    (not yet overwritten): with the masks fixed (``rows``) or alternating masks and weights within
    the pattern (``admm``); adds the summed relative output error before and
    after to ``report["refit"]``. An expert without calibration tokens keeps its pruned weights."""
    tokens = hessians.get("tokens")
    out: Pruned = {}
    summary = report.setdefault("refit", {"method": spec.refit, "damping": spec.refit_damping,
                                          "error_before": 0.0, "error_after": 0.0})
    for role in group:
        expert, hessian = expert_of(role), hessians.get(input_of(role))
        idle = expert is not None and tokens is not None and int(tokens[expert]) == 0
        if hessian is None or idle:
            out[role] = pruned[role]
            continue
        dense = spec.adapter.linear(layer, role).weight.data
        new, mask = pruned[role]
        if spec.refit == "admm":
            out[role] = admm_prune(dense, mask, hessian, spec.pattern, damping=spec.refit_damping)
        else:
            out[role] = (refit_rows(dense, mask, hessian, spec.refit_damping), mask)
        summary["error_before"] += relative_output_error(dense, new, hessian)
        summary["error_after"] += relative_output_error(dense, out[role][0], hessian)
    return out


def _prune_experts(layer: nn.Module, spec: PruneSpec, weights: dict[str, torch.Tensor],
                   hessians: dict[str, torch.Tensor], reorder: bool, decisions: dict,
                   report: dict) -> Pruned:
    """Prune each expert's linears with its own Hessian (the tokens routed to it); an expert no
    calibration token reached is pruned by magnitude, and the report says so."""
    tokens = hessians.get("tokens")
    pruned: Pruned = {}
    for role, w in weights.items():
        expert = expert_of(role)
        empty = tokens is not None and int(tokens[expert]) == 0
        hessian = None if empty else hessians.get(input_of(role))
        method = "magnitude" if empty else spec.method
        pruned[role] = prune_weight(w, hessian, method, spec.pattern)
        if empty and expert not in report.setdefault("experts_without_tokens", []):
            report["experts_without_tokens"].append(expert)
        if reorder and not empty:
            pruned.update(_try_order(layer, spec, {role: w}, {role: pruned[role]}, hessian,
                                     decisions))
    if report.get("experts_without_tokens"):
        report["warning"] = (f"experts {report['experts_without_tokens']} received no calibration "
                             "token: pruned by magnitude (more calibration text reaches more experts)")
    return pruned


def _try_order(layer: nn.Module, spec: PruneSpec, weights: dict[str, torch.Tensor],
               pruned: Pruned, hessian: torch.Tensor, decisions: dict) -> Pruned:
    """o: one head_dim order per KV head; down: one intermediate order (``weights`` holds the one
    role). Applied if it helps."""
    (role,) = weights
    unit = unit_of(role)
    adapter, layout, method = spec.adapter, spec.layout, spec.method
    pattern = parse_pattern(spec.pattern)
    w = weights[role]
    factor = input_factor(hessian, method)
    if base_role(role) == "o":
        g, nrep, hd = layout.n_kv_heads, layout.n_rep, layout.head_dim
        s = importance(w, factor).reshape(w.shape[0], g, nrep, hd)
        orders = torch.stack([nm_permutation(s[:, kv].reshape(-1, hd), pattern.n, pattern.m)[0]
                              for kv in range(g)])
        full = head_channel_order(layout, orders)[1]
    else:
        full = nm_permutation(importance(w, factor), pattern.n, pattern.m)[0]
    name = "heads" if role == "o" else f"intermediate{unit}"
    if _is_identity(full):  # nothing to gain: no trial pruning
        decisions[name] = {"kept": False}
        return pruned
    hp = hessian[full][:, full]
    wp = {role: w[:, full]}
    trial = _prune(wp, hp, method, str(pattern))
    before, after = _error(weights, pruned, hessian), _error(wp, trial, hp)
    decisions[name] = _choice(before, after)
    if not after < before:
        return pruned
    if role == "o":
        permute_heads(layer, adapter, layout, orders)
    else:
        permute_intermediate(layer, adapter, full, unit)
    return trial
