"""Magnitude pruning: score |W|, one group per matrix (unstructured) or N:M per row."""

from __future__ import annotations

import torch

from .masks import nm_mask, unstructured_mask
from .patterns import Pattern


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half/bfloat16/float32 weights, float64 for float64 weights."""
    return torch.promote_types(dtype, torch.float32)


def pattern_mask(scores: torch.Tensor, pattern: Pattern, per_row: bool) -> torch.Tensor:
    """Mask for ``pattern``: N:M per row, else unstructured per row or per matrix."""
    if pattern.n is not None and pattern.m is not None:
        return nm_mask(scores, pattern.n, pattern.m)
    return unstructured_mask(scores, pattern.sparsity, dim=1 if per_row else None)


def magnitude_prune(weight: torch.Tensor, pattern: Pattern) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (pruned weight, pruned mask); unstructured compares the whole matrix at once."""
    scores = weight.detach().to(compute_dtype(weight.dtype)).abs()
    mask = pattern_mask(scores, pattern, per_row=False)
    return weight.detach().masked_fill(mask, 0), mask
