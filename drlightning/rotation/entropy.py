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
