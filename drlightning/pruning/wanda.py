"""Wanda pruning: score |W|·‖X_j‖ = |W|·sqrt(diag H), compared within each output row."""

from __future__ import annotations

import torch

from .masks import nm_mask, unstructured_mask
from .patterns import Pattern


def wanda_prune(weight: torch.Tensor, hessian: torch.Tensor,
                pattern: Pattern) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (pruned weight, pruned mask)."""
    norms = torch.diagonal(hessian).float().clamp_min(0).sqrt().to(weight.device)
    scores = weight.abs().float() * norms
    mask = (nm_mask(scores, pattern.n, pattern.m) if pattern.is_nm
            else unstructured_mask(scores, pattern.sparsity, dim=1))
    return weight.masked_fill(mask, 0), mask
