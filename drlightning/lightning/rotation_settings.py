"""The rotation settings (``model:`` in the configs) as one frozen, validated value.

:class:`RotationSettings` is what the pipeline, both LightningModules and the callbacks read; the
per-layer :class:`~drlightning.lightning.rotation_module.RotationModule` is built from it and keeps
it as ``module.rotation``. ``auto`` choices are resolved here, in one place.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from ..layer.capture import OBJECTIVE_STATS
from ..layer.prune import PruneSpec
from ..models.adapters import ArchitectureAdapter, HeadLayout
from ..pruning import NO_PRUNING, parse_pattern
from ..pruning.refit import REFITS
from ..rotation import METHODS
from ..rotation.objective import OBJECTIVES, ObjectiveSpec

SCORES = ("pruner", *METHODS)
"""Importance the rotation objective measures: the pruner's own score, or a named one."""

ROLE_WEIGHTS = ("auto", "equal", "measured")
"""How the pruned-mass objective weights the linears: equally, or by the layer error they cause
("auto": measured wherever it applies — pruned mass, rotation steps; per-layer or shared R1)."""

BEST_ON = ("auto", "fitted", "held_out")
"""Which iterate of a rotation fit is kept: the lowest objective on the fitted windows, on the
held-out windows, or ("auto") held_out wherever windows are held out and it can act."""

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


def _whole(name: str, value, least: int, meaning: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ValueError(f"{name}={value!r} must be an integer ≥ {least} ({meaning})")


def check_pattern_type(pattern) -> None:
    """A pattern is text ("2:4", "50%", "none"). YAML 1.1 reads an unquoted ``2:4`` as the base-60
    integer 124 (``4:8`` as 248): say so instead of a type error about 124."""
    if isinstance(pattern, bool) or not isinstance(pattern, str | int | float):
        raise ValueError(f"pattern={pattern!r} must be text such as \"2:4\", \"50%\" or \"none\"")
    if isinstance(pattern, int):
        n, m = divmod(pattern, 60)
        if n >= 1 and m >= 1:
            raise ValueError(f"pattern={pattern} (YAML reads an unquoted {n}:{m} as {pattern}, a base-60 "
                             f"number): quote N:M patterns in YAML, e.g. pattern: \"{n}:{m}\"")
        raise ValueError(f"pattern={pattern}: give a pattern such as \"2:4\", \"4:8\" or \"50%\" "
                         "(quoted in YAML)")
    if isinstance(pattern, float):
        raise ValueError(f"pattern={pattern!r}: write a ratio as text, e.g. pattern: \"50%\"")


def check_settings(s: dict) -> None:
    """Refuse a bad rotation setting with a message naming it and what is allowed."""
    check_pattern_type(s["pattern"])
    if s["method"] not in METHODS:
        raise ValueError(f"unknown method {s['method']!r}; allowed: {', '.join(METHODS)}")
    if s["pattern"] != NO_PRUNING:
        parse_pattern(s["pattern"])
    _whole("steps", s["steps"], 0, "0 = plain pruner")
    for name in ("lr", "grad_clip"):
        if isinstance(s[name], bool) or not isinstance(s[name], int | float) \
                or not 0 < s[name] < math.inf:
            raise ValueError(f"{name}={s[name]!r} must be a finite number > 0")
    _whole("r1_blocks", s["r1_blocks"], 1, "1 = dense R1")
    for name in ("low_memory", "permute", "guard", "reference_quirks"):
        if not isinstance(s[name], bool):
            raise ValueError(f"{name}={s[name]!r} must be true or false")
    _choice("objective", s["objective"], ("auto", *OBJECTIVES))
    _choice("r1", s["r1"], R1_MODES)
    if s["layers_per_step"] is not None:
        _whole("layers_per_step", s["layers_per_step"], 1, "or null for every layer")
    _choice("rotation_score", s["rotation_score"], SCORES)
    if isinstance(s["holdout"], bool) or not isinstance(s["holdout"], int | float) \
            or not 0 <= s["holdout"] < 1:
        raise ValueError(f"holdout={s['holdout']!r}; allowed: a share of the calibration windows "
                         "in [0, 1), e.g. 0.25 (0 = judge on the fitted windows)")
    _choice("role_weights", s["role_weights"], ROLE_WEIGHTS)
    _choice("refit", s["refit"], REFITS)
    _choice("best_on", s["best_on"], BEST_ON)
    if isinstance(s["refit_damping"], bool) or not isinstance(s["refit_damping"], int | float) \
            or not 0 < s["refit_damping"] < math.inf:
        raise ValueError(f"refit_damping={s['refit_damping']!r}; allowed: a share of the "
                         "Hessian's mean diagonal > 0, e.g. 0.01")
    _whole("refit_steps", s["refit_steps"], 1, "optimiser steps of the layer refit")
    if isinstance(s["refit_lr"], bool) or not isinstance(s["refit_lr"], int | float) \
            or not 0 < s["refit_lr"] < math.inf:
        raise ValueError(f"refit_lr={s['refit_lr']!r}; allowed: an Adam learning rate > 0, "
                         "e.g. 1e-4")
    if s["refit"] != "none" and s["pattern"] == NO_PRUNING:
        raise ValueError(f"refit={s['refit']!r} re-solves the weights a pruner kept; "
                         "pattern='none' prunes nothing: set refit='none'")
    if s["role_weights"] == "measured" and (s["objective"] == "entropy" or s["pattern"] == NO_PRUNING):
        raise ValueError(f"role_weights={s['role_weights']!r} weights the linears of the pruned-mass "
                         f"objective; objective={s['objective']!r} with pattern={s['pattern']!r} "
                         "does not use it: set role_weights='equal'")
    if s["objective"] == "pruned_mass" and s["pattern"] == NO_PRUNING and s["steps"] > 0:
        raise ValueError("objective='pruned_mass' measures what the pattern removes and "
                         "pattern='none' prunes nothing: rotate-only runs need objective='entropy'")


@dataclass(frozen=True)
class RotationSettings:
    """How every layer is rotated and pruned (the arguments are documented on
    :class:`~drlightning.lightning.rotation_module.RotationModule`). Checked on construction."""

    method: str = "sparsegpt"
    pattern: str = "2:4"
    steps: int = 100
    lr: float = 0.01
    grad_clip: float = 1.0
    reference_quirks: bool = False
    r1_blocks: int = 1
    low_memory: bool = False
    objective: str = "auto"
    rotation_score: str = "pruner"
    permute: bool = True
    guard: bool = True
    r1: str = "per_layer"
    layers_per_step: int | None = None
    role_weights: str = "auto"
    holdout: float = 0.0
    refit: str = "none"
    refit_damping: float = 0.01
    refit_steps: int = 100
    refit_lr: float = 1e-4
    best_on: str = "fitted"

    def __post_init__(self) -> None:
        check_settings(asdict(self))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The setting names, in declaration order."""
        return tuple(f.name for f in fields(cls))

    def as_dict(self) -> dict:
        """The settings as given (``auto`` unresolved), for results.json and configs."""
        return asdict(self)

    @property
    def score(self) -> str:
        """The importance score the objective measures (``rotation_score`` resolved)."""
        return self.method if self.rotation_score == "pruner" else self.rotation_score

    @property
    def objective_used(self) -> str:
        """The objective minimised (``auto``: pruned_mass, or entropy for rotate-only runs)."""
        if self.objective == "auto":
            return "entropy" if self.pattern == NO_PRUNING else "pruned_mass"
        return self.objective

    @property
    def role_weights_used(self) -> str:
        """How the pruned-mass objective weights the linears (``auto`` resolved)."""
        if self.role_weights == "auto":
            applies = self.objective_used == "pruned_mass" and self.steps > 0
            return "measured" if applies else "equal"
        return self.role_weights

    @property
    def spec(self) -> ObjectiveSpec:
        """The objective, its score and (for pruned_mass) the pattern, as one value."""
        mass = self.objective_used == "pruned_mass"
        return ObjectiveSpec(self.objective_used, self.score,
                             parse_pattern(self.pattern) if mass else None, self.low_memory)

    def best_on_used(self, held_out: bool) -> str:
        """Where the fit keeps its best iterate (``auto`` resolved) when ``held_out`` windows are
        there or not: held-out windows count only for a fit whose score uses Hessians
        (magnitude's does not look at the inputs), per layer or shared."""
        if self.best_on != "auto":
            return self.best_on
        acts = held_out and self.score != "magnitude" and self.steps > 0
        return "held_out" if acts else "fitted"

    def wants_held_hessians(self, held: int) -> bool:
        """Whether a fit with ``held`` held-out windows needs their Hessians: only to keep its
        iterate on them (none held out: the fitted choice, as the guard falls back to plain's)."""
        return bool(held) and bool(self.needed_stats()) and self.best_on_used(True) == "held_out"

    @property
    def prunes(self) -> bool:
        return self.pattern != NO_PRUNING

    @property
    def guard_used(self) -> bool:
        """The guard acts only where something is rotated and pruned."""
        return self.guard and self.prunes and self.steps > 0

    def effective(self) -> dict:
        """The settings as they shape the layers: ``auto`` resolved, and permutations and the
        guard off where they cannot act (no N:M pattern; no rotation or nothing pruned)."""
        nm = self.prunes and parse_pattern(self.pattern).is_nm
        return {**self.as_dict(), "objective": self.objective_used,
                "role_weights": self.role_weights_used, "permute": self.permute and nm,
                "guard": self.guard_used}

    def prune_spec(self, adapter: ArchitectureAdapter, layout: HeadLayout,
                   report_identity: bool = False) -> PruneSpec:
        """How each layer is pruned after rotation (method, pattern, permutations, guard)."""
        hp = self.effective()
        per_layer = self.r1 == "per_layer"
        return PruneSpec(adapter, layout, self.method, self.pattern, hp["permute"], hp["guard"],
                         report_identity and self.steps > 0 and self.prunes and per_layer, per_layer,
                         self.holdout, self.refit, self.refit_damping, self.refit_steps,
                         self.refit_lr)

    def needed_stats(self) -> tuple[str, ...]:
        """The Hessians (capture keys) the objective needs from the calibration inputs."""
        if self.score == "magnitude":
            return ()
        return (*OBJECTIVE_STATS, "down") if self.objective_used == "pruned_mass" else OBJECTIVE_STATS

    def trainer_clipping(self, template: dict | None = None) -> dict:
        """The Trainer arguments that clip the gradient norm at ``grad_clip`` (every Trainer that
        fits a rotation needs them). ``template`` (a Trainer's keyword arguments) may repeat them; a
        template that clips otherwise is refused: ``model.grad_clip`` is the one setting."""
        clip = self.grad_clip
        template = template or {}
        value = template.get("gradient_clip_val")
        if value is not None and value != clip:
            raise ValueError(f"trainer.gradient_clip_val={value!r} differs from model.grad_clip={clip!r}; "
                             "rotation training clips the gradient norm at model.grad_clip: set that "
                             "one and leave trainer.gradient_clip_val unset")
        algorithm = template.get("gradient_clip_algorithm")
        if algorithm is not None and str(getattr(algorithm, "value", algorithm)).lower() != "norm":
            raise ValueError(f"trainer.gradient_clip_algorithm={algorithm!r}: model.grad_clip={clip!r} "
                             "clips the gradient norm; leave trainer.gradient_clip_algorithm unset")
        return {"gradient_clip_val": clip, "gradient_clip_algorithm": "norm"}
