"""Merge LoRA updates into pruned weights without filling the pruned positions: W ← M ⊙ (W + BA)."""

from __future__ import annotations

import torch
from torch import nn


def _weight(module: nn.Module) -> torch.Tensor:
    base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
    return base.weight


def sparsity_masks(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """Kept-position masks (W != 0) of the named linears (LoRA-wrapped or plain), before merging."""
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise KeyError(f"no module named {missing[0]!r} in the model")
    return {n: _weight(modules[n]).detach() != 0 for n in names}


@torch.no_grad()
def masked_merge(peft_model: nn.Module, masks: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Fold every LoRA adapter into its base weight on the kept positions only and unload peft.

    ``masks`` maps base-module names (as in ``peft_model.get_base_model()``) to kept masks;
    without one, the current zeros of that base weight define the pattern. The sum is formed in
    float32. Returns the plain base model (the peft wrappers are removed).
    """
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    for name, module in base.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        weight = module.get_base_layer().weight
        mask = masks[name] if masks is not None and name in masks else weight != 0
        delta = sum(module.get_delta_weight(a) for a in module.active_adapters)
        merged = (weight.float() + delta.float()) * mask.to(weight.device)
        weight.copy_(merged.to(weight.dtype))
    return peft_model.unload()


def sparsity_summary(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict:
    """Pruned fraction of the masked linears and whether every pruned position is still zero."""
    modules = dict(model.named_modules())
    pruned = total = leaked = 0
    for name, mask in masks.items():
        weight = _weight(modules[name])
        total += mask.numel()
        pruned += int((weight == 0).sum())
        leaked += int(((weight != 0) & ~mask.to(weight.device)).sum())
    return {"linears": len(masks), "pruned_fraction": pruned / max(total, 1),
            "mask_pruned_fraction": 1 - sum(int(m.sum()) for m in masks.values()) / max(total, 1),
            "nonzero_at_pruned_positions": leaked}
