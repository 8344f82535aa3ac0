"""Shannon entropy of importance scores normalised per row or per column."""

from __future__ import annotations

import torch


def group_entropy(scores: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum over groups of −Σ p log p, with p = scores / scores.sum(dim) inside each group.

    ``dim=1`` normalises each row (groups are rows), ``dim=0`` each column. Zero scores contribute
    0 and keep a finite gradient, all-zero groups too (p·log(max(p, tiny)) instead of xlogy,
    whose gradient at 0 is NaN).
    """
    tiny = torch.finfo(scores.dtype).tiny
    total = scores.sum(dim=dim, keepdim=True)
    total = torch.where(total > 0, total, torch.ones_like(total))  # all-zero groups: p = 0
    p = scores / total
    return -(p * p.clamp_min(tiny).log()).sum()


def entropy_over(scores: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Σ over ``dims`` of :func:`group_entropy`, sharing one s·log s pass between the dims.

    Per group H = log T − (Σ s log s) / T with T = Σ s, so the rows and the columns of a matrix
    (roles v and o) reuse one elementwise pass. Zero scores: s log s = 0 with a finite gradient.
    """
    tiny = torch.finfo(scores.dtype).tiny
    slogs = scores * scores.clamp_min(tiny).log()
    total = scores.new_zeros(())
    for dim in dims:
        t = scores.sum(dim=dim)
        u = slogs.sum(dim=dim)
        nonzero = t > 0
        t = torch.where(nonzero, t, torch.ones_like(t))
        total = total + torch.where(nonzero, t.log() - u / t, torch.zeros_like(t)).sum()
    return total
