"""Magnitude pruning: score |W|, one group per matrix (unstructured) or N:M per row."""

from __future__ import annotations

import torch

from .masks import nm_mask, unstructured_mask
from .patterns import Pattern


def magnitude_prune(weight: torch.Tensor, pattern: Pattern) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (pruned weight, pruned mask)."""
    scores = weight.abs().float()
    mask = (nm_mask(scores, pattern.n, pattern.m) if pattern.is_nm
            else unstructured_mask(scores, pattern.sparsity))
    return weight.masked_fill(mask, 0), mask
