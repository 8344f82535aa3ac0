"""Pure-tensor pruners (magnitude, wanda, sparsegpt) and patterns (ratio, N:M)."""

from __future__ import annotations

import torch

from .magnitude import magnitude_prune
from .masks import nm_mask, unstructured_mask
from .patterns import Pattern, parse_pattern
from .sparsegpt import sparsegpt_prune
from .wanda import wanda_prune

METHODS = ("magnitude", "wanda", "sparsegpt")
NO_PRUNING = "none"
"""Pattern value meaning "rotate only, prune nothing" (accepted by the layer loop, not by prune_weight)."""


def prune_weight(weight: torch.Tensor, hessian: torch.Tensor | None, method: str,
                 pattern: str | float | Pattern) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune one (out, in) weight with ``method``; returns (new weight, pruned mask).

    ``hessian`` is the (in, in) matrix (2/N)·Σ x xᵀ; it may be None for magnitude pruning.
    """
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}; allowed: {', '.join(METHODS)}")
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"weight must be a 2-D float (out, in) tensor, got "
                         f"{tuple(weight.shape)} {weight.dtype}")
    pattern = parse_pattern(pattern)
    pattern.validate(weight.shape[1])
    if not torch.isfinite(weight).all():
        raise ValueError(f"weight of shape {tuple(weight.shape)} contains NaN or Inf")
    if method == "magnitude":
        return magnitude_prune(weight, pattern)
    if hessian is None:
        raise ValueError(f"method {method!r} needs a Hessian (calibration statistics)")
    cols = weight.shape[1]
    if hessian.shape != (cols, cols):
        raise ValueError(f"Hessian must be ({cols}, {cols}) for weight {tuple(weight.shape)}, "
                         f"got {tuple(hessian.shape)}")
    if not torch.isfinite(hessian).all():
        raise ValueError(f"Hessian of shape {tuple(hessian.shape)} contains NaN or Inf")
    if method == "wanda":
        return wanda_prune(weight, hessian, pattern)
    return sparsegpt_prune(weight, hessian, pattern)


__all__ = ["METHODS", "NO_PRUNING", "Pattern", "magnitude_prune", "nm_mask", "parse_pattern", "prune_weight",
           "sparsegpt_prune", "unstructured_mask", "wanda_prune"]
