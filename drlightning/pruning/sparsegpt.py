"""SparseGPT (Frantar & Alistarh, 2023): prune column by column with OBS error compensation.

With U the upper Cholesky factor of H⁻¹, row j of U is the OBS row of the inverse Hessian left
after columns 0..j-1 were eliminated, scaled by 1/sqrt of its diagonal. So pruning column j
costs w²/U_jj² and its error (w - q)/U_jj is spread over later columns through U[j, j+1:].
"""

from __future__ import annotations

import torch

from .magnitude import compute_dtype
from .masks import nm_mask, unstructured_mask
from .patterns import Pattern


def inverse_hessian_factor(hessian: torch.Tensor, percdamp: float,
                           dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (upper Cholesky factor of (H + λI)⁻¹, dead-input mask); dead inputs get H_jj = 1."""
    h = hessian.detach().to(dtype=dtype, copy=True)
    dead = torch.diagonal(h) == 0
    h.diagonal()[dead] = 1.0
    lam = percdamp * torch.diagonal(h).mean()
    h.diagonal().add_(lam)
    chol, info = torch.linalg.cholesky_ex(h)
    if info.item() == 0:
        chol, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(chol), upper=True)
    if info.item() != 0 or not torch.isfinite(chol).all():
        size = h.shape[0]
        raise RuntimeError(
            f"SparseGPT: the {size}x{size} Hessian is not positive definite even after damping "
            f"λ={lam.item():.4g} (percdamp={percdamp}); use more calibration data "
            f"(nsamples x seqlen) or a larger percdamp")
    return chol, dead


def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, pattern: Pattern,
                    blocksize: int = 128,
                    percdamp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (pruned weight, pruned mask); math in float32 (float64 for float64 weights).

    Unstructured masks are chosen per block of ``blocksize`` columns over all rows at once;
    N:M masks per row at each group of M columns. For N:M the block size is rounded up to a
    multiple of M. Dead inputs (H_jj == 0) get zero weights (not necessarily in the mask).
    """
    rows, cols = weight.shape
    if hessian.shape != (cols, cols):
        raise ValueError(f"Hessian must be ({cols}, {cols}) for weight {tuple(weight.shape)}, "
                         f"got {tuple(hessian.shape)}")
    if blocksize < 1 or percdamp < 0:
        raise ValueError(f"need blocksize >= 1 and percdamp >= 0, got {blocksize}, {percdamp}")
    n, m = pattern.n, pattern.m
    if m is not None:
        pattern.validate(cols)
        blocksize = -(-blocksize // m) * m
    w = weight.detach().to(compute_dtype(weight.dtype), copy=True)
    hinv, dead = inverse_hessian_factor(hessian.to(w.device), percdamp, w.dtype)
    w[:, dead] = 0
    mask = torch.zeros_like(w, dtype=torch.bool)
    for b0 in range(0, cols, blocksize):
        b1 = min(b0 + blocksize, cols)
        wb, hb = w[:, b0:b1].clone(), hinv[b0:b1, b0:b1]
        diag_sq = torch.diagonal(hb).square()
        err = torch.zeros_like(wb)
        if m is None:
            mb = unstructured_mask(wb.square() / diag_sq, pattern.sparsity)
        else:
            mb = torch.zeros_like(wb, dtype=torch.bool)
        for j in range(b1 - b0):
            if n is not None and m is not None and j % m == 0:
                group = slice(j, j + m)
                mb[:, group] = nm_mask(wb[:, group].square() / diag_sq[group], n, m)
            col = wb[:, j]
            q = col.masked_fill(mb[:, j], 0)
            e = (col - q) / hb[j, j]
            wb[:, j:] -= torch.outer(e, hb[j, j:])
            wb[:, j] = q
            err[:, j] = e
        w[:, b0:b1] = wb
        w[:, b1:] -= err @ hinv[b0:b1, b1:]
        mask[:, b0:b1] = mb
    w[mask] = 0
    return w.to(weight.dtype), mask
