"""SparseGPT (Frantar & Alistarh, 2023): prune column by column with OBS error compensation."""

from __future__ import annotations

import torch

from .masks import nm_mask, unstructured_mask
from .patterns import Pattern


def inverse_hessian_factor(hessian: torch.Tensor, weight: torch.Tensor,
                           percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + λI)⁻¹; dead inputs get H_jj = 1 and a zero weight column."""
    h = hessian.to(weight.dtype).clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    weight[:, dead] = 0
    lam = percdamp * torch.diagonal(h).mean()
    h += lam * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    chol, info = torch.linalg.cholesky_ex(h)
    if info.item() == 0:
        chol, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(chol), upper=True)
    if info.item() != 0 or not torch.isfinite(chol).all():
        raise RuntimeError(
            f"SparseGPT: the {h.shape[0]}x{h.shape[0]} Hessian is not positive definite even after "
            f"damping λ={lam.item():.3g}; use more calibration data (nsamples x seqlen)")
    return chol


def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, pattern: Pattern,
                    blocksize: int = 128, percdamp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (pruned weight, pruned mask); math in float32 (float64 for float64 weights)."""
    dtype = torch.promote_types(weight.dtype, torch.float32)
    w = weight.detach().to(dtype).clone()
    hinv = inverse_hessian_factor(hessian.to(w.device), w, percdamp)
    rows, cols = w.shape
    mask = torch.zeros_like(w, dtype=torch.bool)
    for b0 in range(0, cols, blocksize):
        b1 = min(b0 + blocksize, cols)
        wb, hb = w[:, b0:b1].clone(), hinv[b0:b1, b0:b1]
        err = torch.zeros_like(wb)
        mb = torch.zeros_like(wb, dtype=torch.bool)
        if not pattern.is_nm:
            scores = wb.square() / torch.diagonal(hb).square()
            mb = unstructured_mask(scores, pattern.sparsity)
        for j in range(b1 - b0):
            if pattern.is_nm and j % pattern.m == 0:
                sl = slice(j, j + pattern.m)
                scores = wb[:, sl].square() / torch.diagonal(hb)[sl].square()
                mb[:, sl] = nm_mask(scores, pattern.n, pattern.m)
            col, d = wb[:, j], hb[j, j]
            q = col.masked_fill(mb[:, j], 0)
            e = (col - q) / d
            wb[:, j:] -= e.unsqueeze(1) * hb[j, j:].unsqueeze(0)
            wb[:, j] = q
            err[:, j] = e
        w[:, b0:b1] = wb
        w[:, b1:] -= err @ hinv[b0:b1, b1:]
        mask[:, b0:b1] = mb
    w[mask] = 0
    return w.to(weight.dtype), mask
