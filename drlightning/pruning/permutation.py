"""Channel permutations for N:M sparsity: reorder input channels so the pattern keeps more importance.

A permutation of a linear's input channels is orthogonal, so wherever the channels are produced by
something we can permute too (a rotation, the rows of another linear) it is folded in exactly and
costs nothing at inference. N:M pruning keeps the M−N largest scores in each group of M
consecutive inputs; which channels share a group decides how much importance survives. Given scores
S (rows × inputs, stacked over every matrix that reads the same inputs), we look for the column
order that maximises Σ_rows Σ_groups (sum of the M−N largest scores of the group):

1. start from the better of the given order and a balanced deal (columns sorted by total score,
   dealt across the groups in snake order, so heavy columns do not crowd one group);
2. refine by slots: for slot s = 0..M−1, take the column in slot s of every group out and put them
   back by one linear assignment (cost of column c in group g = the importance it adds to g next
   to g's other M−1 columns); repeat until a pass gains less than ``tol``.

Each step keeps the current assignment if the solver's answer is not better (checked exactly), so
the kept importance never decreases.
"""

from __future__ import annotations

import torch


def nm_kept(scores: torch.Tensor, n: int, m: int) -> float:
    """Importance an N:M pattern keeps: Σ over rows and groups of the M−N largest scores (float64)."""
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"nm_kept needs M={m} dividing {cols} columns")
    groups = scores.double().reshape(rows, cols // m, m)
    return float(torch.topk(groups, m - n, dim=2).values.sum())


def balanced_order(scores: torch.Tensor, m: int) -> torch.Tensor:
    """Column order dealing columns (heaviest first) across the groups in snake order."""
    cols = scores.shape[1]
    n_groups = cols // m
    ranked = torch.argsort(scores.double().sum(0), descending=True, stable=True)
    rank = torch.arange(cols)
    rnd, pos = rank // n_groups, rank % n_groups
    group = torch.where(rnd % 2 == 0, pos, n_groups - 1 - pos)
    order = torch.empty(cols, dtype=torch.long)
    order[group * m + rnd] = ranked
    return order


def _slot_costs(scores: torch.Tensor, groups: torch.Tensor, slot: int, keep: int,
                chunk: int) -> torch.Tensor:
    """cost[c, g]: importance column groups[c, slot] adds to group g beside g's other columns."""
    others = torch.cat([groups[:, :slot], groups[:, slot + 1:]], dim=1)
    threshold = torch.topk(scores[:, others], keep, dim=2).values[:, :, -1]  # rows × G
    cand = scores[:, groups[:, slot]]  # rows × G
    n_groups = groups.shape[0]
    cost = torch.empty(n_groups, n_groups, dtype=scores.dtype)
    for c0 in range(0, n_groups, chunk):
        block = cand[:, c0:c0 + chunk, None] - threshold[:, None, :]
        cost[c0:c0 + chunk] = block.clamp_min_(0).sum(0)
    return cost


def refine_order(scores: torch.Tensor, order: torch.Tensor, n: int, m: int, *,
                 max_passes: int = 2, tol: float = 1e-3, chunk: int = 64,
                 max_rows: int = 256) -> torch.Tensor:
    """Improve a column order by one linear assignment per slot of the M-group (never worse).

    The assignment costs use the ``max_rows`` rows of largest total score (the cost matrix takes
    rows × groups² work); every candidate order is then checked on all rows and kept only if it
    keeps more. Most of the gain comes in the first pass; a pass gaining less than ``tol``
    (relative) ends the search.
    """
    from scipy.optimize import linear_sum_assignment

    s = scores.detach().float()
    heavy = s
    if s.shape[0] > max_rows:
        heavy = s[torch.topk(s.sum(1), max_rows).indices]
    keep = m - n
    best = nm_kept(s[:, order], n, m)
    for _ in range(max_passes):
        start = best
        for slot in range(m):
            groups = order.reshape(-1, m)
            cost = _slot_costs(heavy, groups, slot, keep, chunk)
            rows, cols = linear_sum_assignment(cost.double().numpy(), maximize=True)
            new = groups.clone()
            new[torch.as_tensor(cols), slot] = groups[torch.as_tensor(rows), slot]
            value = nm_kept(s[:, new.reshape(-1)], n, m)
            if value > best:
                order, best = new.reshape(-1), value
        if best - start <= tol * abs(start):
            break
    return order


def nm_permutation(scores: torch.Tensor, n: int, m: int, **kwargs) -> tuple[torch.Tensor, dict]:
    """Column order (a permutation of range(cols)) that keeps the most importance under N:M.

    ``scores`` are non-negative (rows, cols). Returns (order, report) with the kept importance of
    the original order and of the result: ``scores[:, order]`` is the permuted matrix.
    """
    if scores.dim() != 2 or scores.shape[1] % m or not 0 < n < m:
        raise ValueError(f"nm_permutation needs 2-D scores with M={m} dividing the columns and "
                         f"0 < N < M, got shape {tuple(scores.shape)}, {n}:{m}")
    cols = scores.shape[1]
    identity = torch.arange(cols)
    before = nm_kept(scores, n, m)
    balanced = balanced_order(scores, m)
    start = balanced if nm_kept(scores[:, balanced], n, m) > before else identity
    order = refine_order(scores, start, n, m, **kwargs)
    after = nm_kept(scores[:, order], n, m)
    if after <= before:
        order, after = identity, before
    return order, {"kept_before": before, "kept_after": after}
