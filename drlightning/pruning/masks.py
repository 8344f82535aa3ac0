"""Exact-count pruning masks from importance scores (True = pruned)."""

from __future__ import annotations

import torch


def unstructured_mask(scores: torch.Tensor, sparsity: float, dim: int | None = None) -> torch.Tensor:
    """Prune exactly int(group_size·sparsity) lowest scores per group (whole matrix or each row)."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if dim is None:
        k = int(scores.numel() * sparsity)
        idx = torch.argsort(scores.reshape(-1), stable=True)[:k]
        mask.view(-1)[idx] = True
        return mask
    k = int(scores.shape[1] * sparsity)
    idx = torch.argsort(scores, dim=1, stable=True)[:, :k]
    return mask.scatter_(1, idx, True)


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """In every block of ``m`` consecutive columns of each row, prune the ``n`` lowest scores."""
    rows, cols = scores.shape
    blocks = scores.reshape(rows, cols // m, m)
    idx = torch.argsort(blocks, dim=2, stable=True)[:, :, :n]
    mask = torch.zeros_like(blocks, dtype=torch.bool).scatter_(2, idx, True)
    return mask.reshape(rows, cols)
