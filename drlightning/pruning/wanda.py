"""Wanda pruning: score |W|·‖X_j‖ = |W|·sqrt(diag H), compared within each output row."""

from __future__ import annotations

import torch

from .magnitude import compute_dtype, pattern_mask
from .patterns import Pattern


def wanda_prune(weight: torch.Tensor, hessian: torch.Tensor,
                pattern: Pattern) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (pruned weight, pruned mask); unstructured keeps an exact count per output row."""
    cols = weight.shape[1]
    if hessian.shape != (cols, cols):
        raise ValueError(f"Hessian must be ({cols}, {cols}) for weight {tuple(weight.shape)}, "
                         f"got {tuple(hessian.shape)}")
    dtype = compute_dtype(weight.dtype)
    norms = torch.diagonal(hessian.detach()).to(weight.device, dtype).clamp_min(0).sqrt()
    scores = weight.detach().to(dtype).abs() * norms
    mask = pattern_mask(scores, pattern, per_row=True)
    return weight.detach().masked_fill(mask, 0), mask
