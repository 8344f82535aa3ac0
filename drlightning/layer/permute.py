"""Exact channel permutations of a decoder layer (function-preserving, no inference cost).

Three input spaces of a layer can be reordered because whatever produces them can be reordered too:

- the residual stream at the layer's entry: columns of q, k, v, gate, up (and an MoE router), rows
  of o, down and the RMSNorm weights (the norm's mean of squares does not care about order), with
  the entry/exit rotation Q ← Q·P (a plain layer is wrapped with Q = P);
- each KV head's head_dim: rows of v (and its bias) and, for every query head sharing that KV head,
  the matching columns of o (RoPE acts on q and k only, which are untouched);
- the MLP's intermediate dimension: rows of gate and up (and biases), columns of down — exact
  because SiLU(gate)·up is elementwise (each expert of an MoE layer has its own).

An ``order`` lists, for each new position, the old channel index (``W[:, order]``).
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.adapters import ArchitectureAdapter, HeadLayout, base_role
from ..rotation import RotatedLayer, rotation_storage_dtype


def _take(lin: nn.Linear, order: torch.Tensor, dim: int) -> None:
    lin.weight.copy_(lin.weight.index_select(dim, order.to(lin.weight.device)))
    if dim == 0 and getattr(lin, "bias", None) is not None:
        lin.bias.copy_(lin.bias.index_select(0, order.to(lin.bias.device)))


@torch.no_grad()
def permute_residual(layer: nn.Module, adapter: ArchitectureAdapter,
                     order: torch.Tensor) -> RotatedLayer:
    """Reorder the layer's view of the residual stream; returns the (wrapped) layer."""
    for role in adapter.rotated_roles(layer):
        _take(adapter.linear(layer, role), order, 0 if base_role(role) in ("o", "down") else 1)
    for name in adapter.norm_feeds:
        gamma = adapter.norm(layer, name).weight
        gamma.copy_(gamma[order.to(gamma.device)])
    if isinstance(layer, RotatedLayer):
        layer.rotation.copy_(layer.rotation[:, order.to(layer.rotation.device)])
        return layer
    weight = adapter.linear(layer, "q").weight
    eye = torch.eye(len(order), dtype=rotation_storage_dtype(weight.dtype), device=weight.device)
    return RotatedLayer(layer, eye[:, order.to(weight.device)])


def head_channel_order(layout: HeadLayout, orders: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Full index orders of v's rows and o's columns for per-KV-head head_dim orders (G, hd)."""
    hd, nrep = layout.head_dim, layout.n_rep
    v = torch.cat([g * hd + o for g, o in enumerate(orders)])
    o = torch.cat([(g * nrep + rep) * hd + orders[g] for g in range(layout.n_kv_heads)
                   for rep in range(nrep)])
    return v, o


@torch.no_grad()
def permute_heads(layer: nn.Module, adapter: ArchitectureAdapter, layout: HeadLayout,
                  orders: torch.Tensor) -> torch.Tensor:
    """Reorder each KV head's head_dim; returns o's full input order (to permute its Hessian)."""
    v_order, o_order = head_channel_order(layout, orders)
    _take(adapter.linear(layer, "v"), v_order, 0)
    _take(adapter.linear(layer, "o"), o_order, 1)
    return o_order


@torch.no_grad()
def permute_intermediate(layer: nn.Module, adapter: ArchitectureAdapter, order: torch.Tensor,
                         unit: str = "") -> None:
    """Reorder the MLP's intermediate channels (of one expert: ``unit`` = ``"@e"``)."""
    for role in ("gate", "up"):
        _take(adapter.linear(layer, role + unit), order, 0)
    _take(adapter.linear(layer, "down" + unit), order, 1)
