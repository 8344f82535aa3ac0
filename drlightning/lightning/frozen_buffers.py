"""A :class:`FrozenLayer` kept as a LightningModule's non-persistent buffers (moved with it).

:func:`register_frozen` stores one under a name prefix and returns the :class:`FrozenKeys` that
:func:`frozen_view` needs to read it back; a module may hold several (the fitted windows' and the
held-out windows'). Buffers holding the same tensor share its storage (no copy).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..rotation.objective import FrozenLayer

MATRICES = ("m_attn", "m_mlp", "m_o_blocks", "c_down")
"""The per-input matrices of :class:`FrozenLayer`."""
EXPERT_KINDS = ("m_experts", "c_down_experts")
"""Its per-expert dictionaries."""


@dataclass(frozen=True)
class FrozenKeys:
    """What a module needs besides its buffers to rebuild a :class:`FrozenLayer`."""

    prefix: str
    roles: tuple[str, ...]
    units: dict[str, tuple[str, ...]]
    expert_weight: dict[str, float]


def register_frozen(module: nn.Module, prefix: str, frozen: FrozenLayer) -> FrozenKeys:
    """Register ``frozen``'s tensors as non-persistent buffers named ``<prefix>_<name>``."""
    for role, weight in frozen.weights.items():
        module.register_buffer(f"{prefix}_{role}", weight, persistent=False)
    for name in MATRICES:
        module.register_buffer(f"{prefix}_{name}", getattr(frozen, name), persistent=False)
    for kind in EXPERT_KINDS:
        for unit, tensor in getattr(frozen, kind).items():
            module.register_buffer(f"{prefix}_{kind}{unit}", tensor, persistent=False)
    return FrozenKeys(prefix, tuple(frozen.weights),
                      {kind: tuple(getattr(frozen, kind)) for kind in EXPERT_KINDS},
                      dict(frozen.expert_weight))


def frozen_view(module: nn.Module, keys: FrozenKeys) -> FrozenLayer:
    """The :class:`FrozenLayer` registered under ``keys``, wherever the module's buffers are now."""
    p = keys.prefix
    experts = {kind: {u: module.get_buffer(f"{p}_{kind}{u}") for u in units}
               for kind, units in keys.units.items()}
    return FrozenLayer({role: module.get_buffer(f"{p}_{role}") for role in keys.roles},
                       *(getattr(module, f"{p}_{name}") for name in MATRICES),
                       **experts, expert_weight=keys.expert_weight)
