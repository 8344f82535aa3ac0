"""Mixture-of-Experts tensors as saved (one matrix per expert) and as held (3-D, all experts).

transformers converts between the two when it loads or saves a whole model. Layer by layer,
drlightning reads and writes a layer's tensors itself, so it converts them the same way: a saved
layer has ``<prefix>.experts.<e>.<gate|up|down>.weight`` and ``<prefix>.gate.weight`` (the
router); in memory the layer has ``<experts>.gate_up_proj`` (E, 2·I, d: gate rows, then up rows),
``<experts>.down_proj`` (E, d, I) and ``<router>.weight``.
"""

from __future__ import annotations

import re

import torch

from .adapters import ArchitectureAdapter


def to_memory(adapter: ArchitectureAdapter, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A layer's tensors keyed as saved → as the layer holds them (unchanged when not MoE or
    already in memory layout)."""
    if not adapter.saved_experts:
        return tensors
    prefix, gate, up, down = adapter.saved_experts
    pattern = re.compile(rf"^{re.escape(prefix)}\.experts\.(\d+)\.({gate}|{up}|{down})\.weight$")
    parts: dict[tuple[int, str], torch.Tensor] = {}
    out = {}
    for name, t in tensors.items():
        found = pattern.match(name)
        if found:
            parts[(int(found.group(1)), found.group(2))] = t
        elif name == f"{prefix}.gate.weight":
            out[f"{adapter.router}.weight"] = t
        else:
            out[name] = t
    if not parts:
        return tensors
    n = 1 + max(e for e, _ in parts)
    missing = [f"{prefix}.experts.{e}.{k}.weight" for e in range(n) for k in (gate, up, down)
               if (e, k) not in parts]
    if missing:
        raise ValueError(f"the checkpoint lacks expert tensors {missing[:3]}")
    out[f"{adapter.experts}.gate_up_proj"] = torch.stack(
        [torch.cat([parts[(e, gate)], parts[(e, up)]]) for e in range(n)])
    out[f"{adapter.experts}.down_proj"] = torch.stack([parts[(e, down)] for e in range(n)])
    return out


def to_saved(adapter: ArchitectureAdapter, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A layer's tensors as the layer holds them → keyed as transformers saves them."""
    fused = f"{adapter.experts}.gate_up_proj"
    if not adapter.saved_experts or fused not in tensors:
        return tensors
    prefix, gate, up, down = adapter.saved_experts
    out = {}
    for name, t in tensors.items():
        if name == fused:
            for e, rows in enumerate(t):
                g, u = rows.chunk(2)
                out[f"{prefix}.experts.{e}.{gate}.weight"] = g.contiguous()
                out[f"{prefix}.experts.{e}.{up}.weight"] = u.contiguous()
        elif name == f"{adapter.experts}.down_proj":
            for e, matrix in enumerate(t):
                out[f"{prefix}.experts.{e}.{down}.weight"] = matrix.contiguous()
        elif name == f"{adapter.router}.weight":
            out[f"{prefix}.gate.weight"] = t
        else:
            out[name] = t
    return out
