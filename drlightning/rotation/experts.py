"""Mixture-of-Experts in the objective: which experts a layer's roles hold, and how much each
counts (its share of the calibration tokens the router sent to experts, over the mean)."""

from __future__ import annotations

import torch

from ..models.adapters import EXPERT, unit_of


def expert_units(weights: dict) -> list[str]:
    """The experts present in a layer's roles, as units ``"@e"`` in expert order."""
    units = {unit_of(role) for role in weights if EXPERT in role}
    return sorted(units, key=lambda u: int(u[1:]))


def token_weights(tokens: torch.Tensor | None, units: list[str]) -> dict[str, float]:
    """Each expert's token count over the mean count (experts no token reached are dropped
    before: they are pruned by magnitude and have no Hessian)."""
    if tokens is None:
        return {}
    counts = {u: float(tokens[int(u[1:])]) for u in units}
    mean = sum(counts.values()) / max(1, len(counts))
    return {u: (c / mean if mean > 0 else 1.0) for u, c in counts.items()}


def weighted(parts: dict[str, torch.Tensor],
             expert_weight: dict[str, float]) -> dict[str, torch.Tensor]:
    """Each expert role's part times its expert's token weight (dense roles unchanged)."""
    if not expert_weight:
        return parts
    return {role: (v if EXPERT not in role else
                   v * expert_weight.get(unit_of(role), 1.0))
            for role, v in parts.items()}
