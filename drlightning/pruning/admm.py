"""Mask-and-weights alternation (ADMM, in the spirit of ALPS; pure tensor functions).

Starting from a pruner's result, minimise the layer-wise reconstruction error of one linear,
tr((W − Ŵ)·H·(W − Ŵ)ᵀ), over weights Ŵ that satisfy the pattern, by alternating

    D ← (W·H + ρ·(Z − V)) · (H + ρ·I)⁻¹     (weights: least squares pulled towards Z)
    Z ← the pattern's projection of D + V   (mask: keep the largest |·| the pattern allows)
    V ← V + D − Z                           (scaled dual)

with ρ growing every iteration, so D and Z meet; H is damped by λ·mean(diag H)·I as in the row
refit. The mask may change (unlike the refits of :mod:`.refit`); it always satisfies the pattern.
The last projection's mask is then fixed and its kept weights re-solved exactly
(:func:`.refit.refit_rows`). One eigendecomposition of H serves every ρ.
"""

from __future__ import annotations

import torch

from .masks import nm_mask, unstructured_mask
from .patterns import Pattern, parse_pattern
from .refit import refit_rows


def project(weight: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """The pruned mask (True = pruned) that keeps the largest magnitudes ``pattern`` allows: the
    N smallest of every M consecutive inputs for N:M, else that share of each row."""
    scores = weight.abs()
    if pattern.is_nm:
        return nm_mask(scores, pattern.n, pattern.m)
    return unstructured_mask(scores, pattern.sparsity, dim=1)


def admm_prune(weight: torch.Tensor, pruned_mask: torch.Tensor, hessian: torch.Tensor,
               pattern: str | Pattern, iterations: int = 30, damping: float = 0.01,
               rho: float = 0.1, growth: float = 1.3) -> tuple[torch.Tensor, torch.Tensor]:
    """Alternate masks and weights from a pruner's ``pruned_mask`` of the dense ``weight``
    (out, in); returns (new weight in ``weight``'s dtype, its pruned mask). ``rho`` is the first
    penalty as a share of H's mean eigenvalue, multiplied by ``growth`` each of the
    ``iterations``."""
    pattern = parse_pattern(pattern)
    if iterations < 1 or not rho > 0 or not growth >= 1:
        raise ValueError(f"admm: iterations={iterations!r} (≥ 1), rho={rho!r} (> 0) and "
                         f"growth={growth!r} (≥ 1) are out of range")
    if pruned_mask.shape != weight.shape or hessian.shape != (weight.shape[1],) * 2:
        raise ValueError(f"admm: weight {tuple(weight.shape)}, mask {tuple(pruned_mask.shape)} "
                         f"and Hessian {tuple(hessian.shape)} do not match")
    w = weight.to(torch.float64)
    h = hessian.to(torch.float64)
    scale = h.diagonal().mean().clamp_min(torch.finfo(torch.float64).tiny)
    h = h + damping * scale * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    eigenvalues, vectors = torch.linalg.eigh(h)
    target = (w @ h) @ vectors  # W·H in the eigenbasis
    z = torch.where(pruned_mask, 0.0, w)
    v = torch.zeros_like(w)
    penalty = rho * scale
    mask = pruned_mask
    for _ in range(iterations):
        d = ((target + penalty * ((z - v) @ vectors)) / (eigenvalues + penalty)) @ vectors.T
        mask = project(d + v, pattern)
        z = torch.where(mask, 0.0, d + v)
        v = v + d - z
        penalty *= growth
    return refit_rows(weight, mask, hessian, damping), mask
