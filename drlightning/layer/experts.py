"""Calibration statistics of a Mixture-of-Experts block: per expert, from the tokens routed to it.

An expert has no ``nn.Linear`` to hook: transformers runs all experts from 3-D parameters inside
the experts block, whose call receives the block's input (tokens × d), the chosen experts per
token and their routing weights. A forward pre-hook on that block sees exactly what every expert
reads: expert e's gate/up input is the tokens routed to e, its down input act(x·Gₑᵀ) ⊙ (x·Uₑᵀ)
of those tokens (the routing weight multiplies the down output, not its input).
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.adapters import EXPERT


class ExpertStats:
    """Running sums x xᵀ per expert (gate/up input ``mlp_in@e``, down input ``down@e``) and the
    number of calibration tokens routed to each expert."""

    def __init__(self, block: nn.Module, keys: tuple[str, ...]) -> None:
        self.block, self.keys = block, keys
        n = block.gate_up_proj.shape[0]
        self.tokens = torch.zeros(n, dtype=torch.long)
        self.sums: dict[str, torch.Tensor] = {}

    def _add(self, key: str, x: torch.Tensor) -> None:
        x = x.float()
        if key not in self.sums:
            self.sums[key] = torch.zeros(x.shape[1], x.shape[1], device=x.device)
        self.sums[key].addmm_(x.T, x)

    @torch.no_grad()
    def update(self, hidden: torch.Tensor, top_k_index: torch.Tensor) -> None:
        """Add one batch: ``hidden`` (tokens, d) as the block gets it, ``top_k_index`` (tokens, k)."""
        block = self.block
        for e in range(self.tokens.shape[0]):
            routed = (top_k_index == e).any(dim=-1)
            count = int(routed.sum())
            if count == 0:
                continue
            self.tokens[e] += count
            x = hidden[routed]
            if "mlp_in" in self.keys:
                self._add(f"mlp_in{EXPERT}{e}", x)
            if "down" in self.keys:
                gate, up = nn.functional.linear(x, block.gate_up_proj[e]).chunk(2, dim=-1)
                self._add(f"down{EXPERT}{e}", block.act_fn(gate) * up)

    def hessians(self) -> dict[str, torch.Tensor]:
        """H = (2/Nₑ)·Σ x xᵀ per expert and key (zeros for an expert no token reached), and
        ``tokens``: the count per expert."""
        block, out = self.block, {}
        widths = {"mlp_in": block.gate_up_proj.shape[-1], "down": block.down_proj.shape[-1]}
        device = block.gate_up_proj.device
        for key in self.keys:
            for e, count in enumerate(self.tokens.tolist()):
                name = f"{key}{EXPERT}{e}"
                total = self.sums.get(name)
                out[name] = (total * (2.0 / count) if count else
                             torch.zeros(widths[key], widths[key], device=device))
        out["tokens"] = self.tokens.clone()
        return out


def routed_inputs(args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states (tokens, d), chosen experts (tokens, k)) from an experts block's call."""
    hidden = args[0] if args else kwargs["hidden_states"]
    index = args[1] if len(args) > 1 else kwargs["top_k_index"]
    hidden = hidden.reshape(-1, hidden.shape[-1])
    return hidden, index.reshape(hidden.shape[0], -1)
