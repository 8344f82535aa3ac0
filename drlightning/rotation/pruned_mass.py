"""The pruned-mass objective: the importance a pruning pattern will remove from the rotated layer.

For a linear with scores S (out, in) the pruner compares inputs within each row: N:M keeps the
M−N largest scores of every group of M consecutive inputs, a ratio keeps the largest
(1 − ratio)·in of the row. The mass it removes, Σ of the dropped scores, is the pruner's own
first-order estimate of the linear's output error (for SparseGPT's score w²/[H⁻¹]_jj it is the sum
of the single-weight OBS errors). Unlike the entropy, it knows the groups: it rewards rotations that
spread the important inputs across the groups of M, and its gradient falls on the weights that will
be pruned. It is not smooth where two scores of a group swap ranks (like any top-k), which is
harmless for Adam.

Each linear's removed mass is divided by its value before rotation (``scale``), so the objective is
scale-free and every linear counts by its relative improvement (1.0 per linear at the identity).
"""

from __future__ import annotations

import torch

from ..pruning.patterns import Pattern


def pruned_mass(scores: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """Σ of the scores ``pattern`` removes from (out, in) ``scores``: per row, the N smallest of
    every group of M inputs (N:M) or the int(in·ratio) smallest of the row (unstructured)."""
    rows, cols = scores.shape
    if pattern.n is not None and pattern.m is not None:
        groups = scores.reshape(rows, cols // pattern.m, pattern.m)
        return torch.topk(groups, pattern.n, dim=2, largest=False).values.sum()
    k = int(cols * pattern.sparsity)
    return torch.topk(scores, k, dim=1, largest=False).values.sum()

