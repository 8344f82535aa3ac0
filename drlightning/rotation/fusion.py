"""Function-preserving edits of a decoder layer: fold RMSNorm weights, merge rotations, wrap R1.

All weight math runs in float32 (float64 for float64 models) and is cast back to the weight dtype
once, so a rotation costs one rounding per weight.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.adapters import ROUTER, ArchitectureAdapter, HeadLayout, base_role

INPUT_SIDE = ("q", "k", "gate", "up", ROUTER)
"""Roles that read the residual stream and are not turned by R2: W ← W·Q."""


@torch.no_grad()
def fold_norms(layer: nn.Module, adapter: ArchitectureAdapter) -> None:
    """W ← W·diag(γ) for every linear fed by an RMSNorm, then γ ← 1 (model function unchanged)."""
    for norm_attr in adapter.norm_feeds:
        roles = adapter.fed_by(layer, norm_attr)
        norm = adapter.norm(layer, norm_attr)
        if getattr(norm, "bias", None) is not None:
            raise ValueError(f"{adapter.name}: {norm_attr} has a bias; the rotations need RMSNorm "
                             "without a bias (a bias does not commute with a rotation)")
        gamma = norm.weight
        for role in roles:
            lin = adapter.linear(layer, role)
            dt = rotation_storage_dtype(lin.weight.dtype)
            lin.weight.copy_((lin.weight.to(dt) * gamma.to(dt)).to(lin.weight.dtype))
        gamma.fill_(1.0)


@torch.no_grad()
def merge_rotations(
    layer: nn.Module,
    adapter: ArchitectureAdapter,
    layout: HeadLayout,
    q: torch.Tensor,
    r: torch.Tensor,
) -> None:
    """Merge R1 = Q (inner uses) and R2 into the weights of a layer whose norms are folded.

    q, k, gate, up (every expert's) and an MoE router: W·Q; v: B_vᵀ·W·Q (bias B_vᵀ·b);
    o: Qᵀ·W·B_o (bias Qᵀ·b); down (every expert's): Qᵀ·W (bias Qᵀ·b).
    The caller must route the layer's input through Qᵀ and its output through Q (RotatedLayer).
    """
    g, hd, nrep = layout.n_kv_heads, layout.head_dim, layout.n_rep

    def update(role: str, fn_w, fn_b=None) -> None:
        lin = adapter.linear(layer, role)
        dt = rotation_storage_dtype(lin.weight.dtype)
        qq, rr = q.to(dt).to(lin.weight.device), r.to(dt).to(lin.weight.device)
        lin.weight.copy_(fn_w(lin.weight.to(dt), qq, rr).to(lin.weight.dtype))
        if fn_b is not None and getattr(lin, "bias", None) is not None:
            lin.bias.copy_(fn_b(lin.bias.to(dt), qq, rr).to(lin.bias.dtype))

    for role in adapter.rotated_roles(layer):
        if base_role(role) not in INPUT_SIDE:
            continue
        update(role, lambda w, qq, rr: w @ qq)
    update(
        "v",
        lambda w, qq, rr: torch.einsum("gij,gid->gjd", rr, w.reshape(g, hd, -1)).reshape(
            g * hd, -1) @ qq,
        lambda b, qq, rr: torch.einsum("gij,gi->gj", rr, b.reshape(g, hd)).reshape(-1),
    )
    update(
        "o",
        lambda w, qq, rr: torch.einsum(
            "dgrj,gjk->dgrk", (qq.T @ w).reshape(-1, g, nrep, hd), rr).reshape(w.shape[0], -1),
        lambda b, qq, rr: qq.T @ b,
    )
    for role in adapter.roles(layer):
        if base_role(role) == "down":
            update(role, lambda w, qq, rr: qq.T @ w, lambda b, qq, rr: qq.T @ b)


class RotatedLayer(nn.Module):
    """A decoder layer computing ``Q · f(Qᵀ x)``: entry rotation Qᵀ, merged layer, exit rotation Q.

    Row-vector hidden states h (…, d) enter as h·Q and leave as h·Qᵀ. Attribute look-ups the model
    makes on its layers (e.g. ``attention_type``) fall through to the wrapped layer.
    """

    def __init__(self, inner: nn.Module, rotation: torch.Tensor) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("rotation", rotation.detach().clone(), persistent=True)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        q = self.rotation
        x = (hidden_states.to(q.dtype) @ q).to(hidden_states.dtype)
        out = self.inner(x, *args, **kwargs)
        hidden = out[0] if isinstance(out, tuple) else out
        hidden = (hidden.to(q.dtype) @ q.T).to(hidden.dtype)
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["inner"], name)


def rotation_storage_dtype(weight_dtype: torch.dtype) -> torch.dtype:
    """Rotations are stored and merged in at least float32 (float64 for float64 models)."""
    return torch.promote_types(weight_dtype, torch.float32)
