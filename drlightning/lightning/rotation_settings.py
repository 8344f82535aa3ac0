"""The rotation settings (``model:`` in the configs): allowed values and their checks."""

from __future__ import annotations

from ..pruning import NO_PRUNING, parse_pattern
from ..rotation import METHODS
from ..rotation.objective import OBJECTIVES

SCORES = ("pruner", *METHODS)
"""Importance the rotation objective measures: the pruner's own score, or a named one."""

ROLE_WEIGHTS = ("auto", "equal", "measured")
"""How the pruned-mass objective weights the linears: equally, or by the layer error they cause
("auto": measured wherever it applies — pruned mass, rotation steps; per-layer or shared R1)."""

R1_MODES = ("per_layer", "shared")
"""Residual rotations: one per layer (with boundary rotations), or one for the whole model."""


def check_r1_blocks(hidden: int, blocks: int) -> None:
    """Raise unless ``blocks`` divides the hidden size."""
    if hidden % blocks:
        divisors = [k for k in (1, 2, 4, 8, 16) if hidden % k == 0]
        raise ValueError(f"model.r1_blocks={blocks} does not divide the hidden size {hidden}; "
                         f"allowed e.g. {divisors}")


def _choice(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r}; allowed: {', '.join(map(str, allowed))}")


def check_settings(s: dict) -> None:
    """Refuse a bad rotation setting with a message naming it and what is allowed."""
    if s["method"] not in METHODS:
        raise ValueError(f"unknown method {s['method']!r}; allowed: {', '.join(METHODS)}")
    if s["pattern"] != NO_PRUNING:
        parse_pattern(s["pattern"])
    if not isinstance(s["steps"], int) or s["steps"] < 0:
        raise ValueError(f"steps={s['steps']!r} must be an integer ≥ 0 (0 = plain pruner)")
    for name in ("lr", "grad_clip"):
        if not s[name] > 0:
            raise ValueError(f"{name}={s[name]!r} must be > 0")
    blocks = s["r1_blocks"]
    if not isinstance(blocks, int) or isinstance(blocks, bool) or blocks < 1:
        raise ValueError(f"r1_blocks={blocks!r} must be an integer ≥ 1 (1 = dense R1)")
    for name in ("low_memory", "permute", "guard"):
        if not isinstance(s[name], bool):
            raise ValueError(f"{name}={s[name]!r} must be true or false")
    _choice("objective", s["objective"], ("auto", *OBJECTIVES))
    _choice("r1", s["r1"], R1_MODES)
    k = s.get("layers_per_step")
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
        raise ValueError(f"layers_per_step={k!r} must be an integer ≥ 1, or null for every layer")
    _choice("rotation_score", s["rotation_score"], SCORES)
    _choice("role_weights", s["role_weights"], ROLE_WEIGHTS)
    if s["role_weights"] == "measured" and (s["objective"] == "entropy" or s["pattern"] == NO_PRUNING):
        raise ValueError(f"role_weights={s['role_weights']!r} weights the linears of the pruned-mass "
                         f"objective; objective={s['objective']!r} with pattern={s['pattern']!r} "
                         "does not use it: set role_weights='equal'")
    if s["objective"] == "pruned_mass" and s["pattern"] == NO_PRUNING and s["steps"] > 0:
        raise ValueError("objective='pruned_mass' measures what the pattern removes and "
                         "pattern='none' prunes nothing: rotate-only runs need objective='entropy'")
