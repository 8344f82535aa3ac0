"""Refits of the weights a pruner kept, with the mask fixed (pure tensor functions).

Row refit: each output row's kept weights are re-solved by least squares so that the pruned row
reproduces the dense row's output on the calibration inputs, ridge-damped::

    (H_SS + λ·mean(diag H)·I) ŵ_S = (H w)_S

(H = the input's second moment, S = the row's kept columns, w = the dense row). Pruned entries stay
exactly zero. It fits the calibration inputs closely, which is why it must be judged on text the
calibration never saw (docs/benchmarks.md: after plain SparseGPT 2:4 on the default model it
closes part of the gap in-domain and makes another domain much worse).
"""

from __future__ import annotations

import torch

REFITS = ("none", "rows", "admm", "layer")
"""``model.refit`` values: no refit, the row refit above, the mask-and-weights alternation
(:mod:`.admm`: the mask may change within the pattern), or the whole-layer refit
(:mod:`drlightning.lightning.layer_refit`: gradient steps on every kept weight of a layer against
the dense layer's outputs, early-stopped on held-out windows)."""


def refit_rows(weight: torch.Tensor, pruned_mask: torch.Tensor, hessian: torch.Tensor,
               damping: float = 0.01, chunk: int = 64) -> torch.Tensor:
    """The row refit of ``weight`` (out, in: the dense weight the pruner started from) on the
    kept entries (``~pruned_mask``), in float64; returns the refitted weight in ``weight``'s dtype
    with every pruned entry exactly 0. ``damping`` is λ above (> 0 keeps every system positive
    definite; rows are solved ``chunk`` at a time)."""
    if not damping > 0:
        raise ValueError(f"refit damping={damping!r} must be > 0 (a share of H's mean diagonal)")
    if pruned_mask.shape != weight.shape or hessian.shape != (weight.shape[1],) * 2:
        raise ValueError(f"refit: weight {tuple(weight.shape)}, mask {tuple(pruned_mask.shape)} "
                         f"and Hessian {tuple(hessian.shape)} do not match")
    h = hessian.to(torch.float64)
    w = weight.to(torch.float64)
    kept = ~pruned_mask
    lam = damping * h.diagonal().mean().clamp_min(torch.finfo(torch.float64).tiny)
    target = w @ h  # row i: (H w_i)ᵀ (H symmetric)
    out = torch.zeros_like(w)
    zero = h.new_zeros(())
    width = int(kept.sum(1).max()) if kept.numel() else 0
    if width == 0:
        return out.to(weight.dtype)
    for start in range(0, w.shape[0], chunk):
        rows = slice(start, start + chunk)
        k = kept[rows]
        # each row's kept columns first (stable), padded to the widest row
        order = torch.argsort((~k).to(torch.int8), dim=1, stable=True)[:, :width]
        valid = torch.gather(k, 1, order)
        system = h[order.unsqueeze(2), order.unsqueeze(1)]
        both = valid.unsqueeze(2) & valid.unsqueeze(1)
        eye = torch.eye(width, dtype=h.dtype, device=h.device)
        system = torch.where(both, system, zero)
        system = system + eye * torch.where(valid, lam, zero + 1).unsqueeze(2)
        rhs = torch.where(valid, torch.gather(target[rows], 1, order), zero)
        factor = torch.linalg.cholesky(system)
        solved = torch.cholesky_solve(rhs.unsqueeze(2), factor).squeeze(2)
        block = torch.zeros_like(w[rows])
        block.scatter_(1, order, torch.where(valid, solved, zero))
        out[rows] = block
    return out.to(weight.dtype)
