"""Exact-count pruning masks from importance scores (True = pruned, ties broken by index)."""

from __future__ import annotations

import torch


def unstructured_mask(scores: torch.Tensor, sparsity: float,
                      dim: int | None = None) -> torch.Tensor:
    """Prune exactly int(group_size·sparsity) lowest scores per group.

    The group is the whole tensor when ``dim`` is None, else each slice along ``dim`` (``dim=1``
    on a 2-D tensor: each row). Equal scores are pruned in index order (stable sort).
    """
    if not 0 <= sparsity <= 1:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if dim is None:
        k = int(scores.numel() * sparsity)
        idx = torch.argsort(scores.reshape(-1), stable=True)[:k]
        mask.view(-1)[idx] = True
        return mask
    k = int(scores.shape[dim] * sparsity)
    idx = torch.argsort(scores, dim=dim, stable=True).narrow(dim, 0, k)
    return mask.scatter_(dim, idx, True)


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """In every block of ``m`` consecutive columns of each row, prune the ``n`` lowest scores."""
    if scores.dim() != 2:
        raise ValueError(f"nm_mask needs 2-D scores, got shape {tuple(scores.shape)}")
    rows, cols = scores.shape
    if not 0 <= n <= m or cols % m:
        raise ValueError(f"nm_mask needs 0 <= n <= m and m dividing {cols} columns, got {n}:{m}")
    blocks = scores.reshape(rows, cols // m, m)
    idx = torch.argsort(blocks, dim=2, stable=True)[:, :, :n]
    mask = torch.zeros_like(blocks, dtype=torch.bool).scatter_(2, idx, True)
    return mask.reshape(rows, cols)
