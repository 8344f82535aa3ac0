"""The per-layer LightningModule: learn R1 (d×d) and R2 (one hd×hd per KV head) for one layer."""

from __future__ import annotations

import torch
from lightning import LightningModule
from torch import nn

from ..models.adapters import base_role, unit_of
from ..rotation import frozen_layer, orthogonality_error, qr_orthogonal
from ..rotation.best_iterate import IterateTracker
from ..rotation.objective import (
    FrozenLayer,
    identity_scale,
    layer_objective,
    layer_scores,
)
from .frozen_buffers import FrozenKeys, frozen_view, register_frozen
from .rotation_settings import RotationSettings, check_r1_blocks


def by_base_role(parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Objective parts for logging: every expert's part summed into its base role's (an MoE
    layer logs gate/up/down once, not once per expert)."""
    out: dict[str, torch.Tensor] = {}
    for role, value in parts.items():
        base = base_role(role)
        out[base] = out[base] + value if base in out else value
    return out


class RotationModule(LightningModule):
    """Learn orthogonal Q and R2 for one decoder layer that make it robust to pruning.

    Args:
        method: the pruner (magnitude, wanda, sparsegpt); by default also the objective's score.
        pattern: pruning pattern applied after rotation: "2:4", "4:8", a ratio such as "50%", or
            "none" to rotate without pruning (the saved model then matches the dense one). Quote
            N:M in YAML: unquoted, ``2:4`` is the base-60 integer 124 there (refused with a hint).
        steps: optimisation steps per layer; 0 skips rotation and gives the plain pruner.
        lr: Adam learning rate.
        grad_clip: gradient-norm clip over all rotation parameters, applied by the Trainer
            (``gradient_clip_val``; see :meth:`trainer_clipping`).
        reference_quirks: reproduce the authors' released SparseGPT objective (λ added after
            inversion, numerically the magnitude objective). For comparisons only.
        r1_blocks: k > 1 learns R1 as k diagonal blocks of size hidden/k (paper Appendix E);
            each step then costs about 1/k of the dense one. k must divide the hidden size.
        low_memory: recompute the objective one linear at a time in the backward pass
            (activation checkpointing): ≈ 4× less working memory per step for ≈ 1.3× the time;
            for 70B-size layers on one GPU (see docs/benchmarks.md).
        objective: what the rotation minimises: "entropy" (the paper's summed entropy of the
            normalised importance), "pruned_mass" (the importance ``pattern`` will remove, each
            linear relative to its unrotated value; knows the N:M groups) or "auto"
            (pruned_mass, or entropy for rotate-only runs with pattern "none").
        rotation_score: the importance the objective measures: "pruner" (the pruning method's
            own score) or one of magnitude, wanda, sparsegpt, independent of the pruner.
        permute: for N:M patterns, reorder the channels of the residual stream, of each KV head's
            head_dim and of the MLP's intermediate dimension so the pattern keeps more importance
            (exact, no inference cost); each order is kept only if it lowers the pruned linears'
            real output error.
        guard: prune the layer both with the learned rotations and without them and keep the one
            with the lower pruning error on the calibration inputs (never worse than the plain
            pruner, layer by layer; costs one extra pruning per layer).
        r1: "per_layer" (each layer its own residual rotation, entered and left at the layer's
            boundaries; the saved model needs drlightning's modelling file) or "shared" (one
            rotation for the whole model, learned from every layer at once and absorbed into the
            weights: the saved model is a standard checkpoint of the input's architecture; the
            guard then compares R2 with the identity, and the residual order is not permuted).
        layers_per_step: shared R1 only: how many layers each optimisation step sums (a random
            subset each step, for models whose layers' frozen tensors do not fit at once);
            None = every layer in every step.
        role_weights: pruned_mass only: "equal" (every linear counts by its relative
            improvement), "measured" (each linear weighted by the squared layer error its group
            causes when pruned alone, measured on the unrotated layer before fitting; with shared
            R1 the weights are normalised over all layers, so costlier layers count more; costs
            about one more pruning per layer) or "auto" ("measured" where it applies:
            pruned-mass objective, steps > 0; "equal" otherwise). The layer loop
            measures the weights and hands them over in the ``LayerDataModule``; on a hand-built
            datamodule without weights "auto" fits equal weights and "measured" is refused.
        holdout: the share of calibration windows held out of every fit (the role weights, the
            Hessians of the objective and of the pruner) and used only to judge: the guard keeps
            the candidate with the lower pruning error on them. 0 (the default) judges on the
            fitted windows, as before; with too few windows to hold any out, the guard keeps
            the plain pruner's layer and the report says so.
        refit: after pruning each group of linears, re-solve the kept weights with the mask
            fixed: "none" (the default), "rows" (each row's kept weights by damped least
            squares against the dense row's output on the fitted windows' inputs), "admm"
            (masks and weights alternated from the pruner's result, each linear's
            reconstruction error on the fitted windows; the mask stays within the pattern) or
            "layer"
            (after the whole layer is pruned, Adam steps on all its kept weights against the
            dense layer's outputs on the fitted windows, stopped early and the best iterate
            kept on the held-out windows: needs ``data.held_out`` or ``holdout``). Pruned
            entries stay zero. Judge refits on held-out text: they fit the calibration domain.
        refit_damping: λ of the row refit, as a share of the Hessian's mean diagonal (> 0).
        refit_steps: the layer refit's most optimiser steps (one batch of fitted windows each).
        refit_lr: the layer refit's Adam learning rate.
        best_on: which iterate is kept: the one with the lowest objective on the fitted windows
            ("fitted", the default), or on the held-out windows' Hessians ("held_out": the
            objective of the same rotations measured on text the fit never saw; needs
            ``data.held_out`` or ``holdout``) or "auto" (held_out where windows are held out and
            the score uses Hessians, fitted otherwise; a shared R1 keeps the fitted choice).
    """

    def __init__(
        self,
        method: str = "sparsegpt",
        pattern: str | int | float = "2:4",
        steps: int = 100,
        lr: float = 0.01,
        grad_clip: float = 1.0,
        reference_quirks: bool = False,
        r1_blocks: int = 1,
        low_memory: bool = False,
        objective: str = "auto",
        rotation_score: str = "pruner",
        permute: bool = True,
        guard: bool = True,
        r1: str = "per_layer",
        layers_per_step: int | None = None,
        role_weights: str = "auto",
        holdout: float = 0.0,
        refit: str = "none",
        refit_damping: float = 0.01,
        refit_steps: int = 100,
        refit_lr: float = 1e-4,
        best_on: str = "fitted",
    ) -> None:
        super().__init__()
        args = {k: v for k, v in locals().items() if k in RotationSettings.names()}
        self.rotation = RotationSettings(**args)
        """The settings as one frozen value (what the pipeline reads; hparams mirror it)."""
        self.save_hyperparameters(args)
        self.A: nn.Parameter | None = None
        self.B: nn.Parameter | None = None
        self.track = IterateTracker()
        """The kept iterate (fitted or held-out objective) and the curves it was chosen on."""
        self._final_checked = False
        self.mass_scale: dict[str, float] | None = None
        self._keys: FrozenKeys | None = None
        self._held_keys: FrozenKeys | None = None
        self.held_scale: dict[str, float] | None = None

    @classmethod
    def from_settings(cls, settings: RotationSettings) -> RotationModule:
        """A new, untrained module with ``settings`` (one per layer)."""
        return cls(**settings.as_dict())

    def configure_model(self) -> None:
        """Create A, B (identity) and load the frozen tensors from the layer's datamodule (as
        non-persistent buffers: Lightning moves them with the module; checkpoints hold A and B)."""
        if self.A is not None:
            return
        dm = self.trainer.datamodule
        if dm.role_weights is None and self.rotation.role_weights == "measured":
            raise ValueError(
                f"layer {dm.index}: role_weights='measured' but the LayerDataModule carries no "
                "role weights; pass role_weights=measured_role_weights(layer, inputs, spec)[0] "
                "(drlightning.layer.role_weights) to it, or use role_weights='equal' or 'auto' "
                "(equal weights when the datamodule has none)")
        layout = dm.layout
        self.layout = layout
        k = self.rotation.r1_blocks
        check_r1_blocks(layout.hidden, k)
        self.A = nn.Parameter(torch.eye(layout.hidden) if k == 1 else
                              torch.eye(layout.hidden // k).repeat(k, 1, 1))
        self.B = nn.Parameter(torch.eye(layout.head_dim).repeat(layout.n_kv_heads, 1, 1))
        weights = dm.frozen_weights()
        settings = self.rotation
        held = dm.take_held_hessians()
        self._keys = register_frozen(self, "frozen", frozen_layer(
            weights, dm.take_hessians(), settings.score, layout, settings.reference_quirks,
            dm.tokens_per_sequence()))
        if held is not None:  # the same weights (shared storage), the held-out windows' Hessians
            self._held_keys = register_frozen(self, "held", frozen_layer(
                weights, held, settings.score, layout, settings.reference_quirks,
                dm.tokens_per_sequence()))
        if settings.objective_used == "pruned_mass":
            role_weights = dm.role_weights or {}
            self.mass_scale = self._scale(self.frozen, role_weights)
            if held is not None:
                self.held_scale = self._scale(self.held_frozen, role_weights)

    def _scale(self, frozen: FrozenLayer, role_weights: dict[str, float]) -> dict[str, float]:
        scale = identity_scale(frozen, self.layout, self.rotation.spec, self.rotation.r1_blocks)
        return {role: v / role_weights.get(role, 1.0) for role, v in scale.items()}

    @property
    def frozen(self) -> FrozenLayer:
        """The objective's frozen tensors: a view of the module's buffers, wherever they are."""
        if self._keys is None:
            raise RuntimeError("the frozen tensors are loaded by configure_model (Trainer.fit)")
        return frozen_view(self, self._keys)

    @property
    def held_frozen(self) -> FrozenLayer | None:
        """The objective's tensors from the held-out windows' Hessians (None: kept on fitted)."""
        return None if self._held_keys is None else frozen_view(self, self._held_keys)

    def rotations(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Current Q (d×d, or its k diagonal blocks) and R2 (G×hd×hd)."""
        return qr_orthogonal(self.A), qr_orthogonal(self.B)

    def loss(self) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """The objective at the current parameters, computed in float32."""
        q, r = self.rotations()
        q, r = q.float(), r.float()
        total, parts = layer_objective(q, r, self.frozen, self.layout, self.rotation.spec, self.mass_scale)
        return total, parts, q, r

    def _track(self, loss: torch.Tensor, q: torch.Tensor, r: torch.Tensor, step: int) -> None:
        """Keep (Q, R2) if it is the best iterate so far: by the fitted objective, or with
        held-out Hessians by the same objective measured on them."""
        value = None
        held = self.held_frozen
        if held is not None:
            with torch.no_grad():
                value = float(layer_objective(q.detach(), r.detach(), held, self.layout,
                                              self.rotation.spec, self.held_scale)[0])
        self.track.offer(float(loss.detach()), q, r, step, held=value)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        total, parts, q, r = self.loss()
        self._track(total, q, r, self.global_step)
        name = "entropy" if self.rotation.objective_used == "entropy" else "pruned_mass"
        self.log(f"{name}/total", total, prog_bar=True)
        if self.track.held_curve:
            self.log(f"{name}/held_out", self.track.held_curve[-1])
        for role, value in by_base_role(parts).items():
            self.log(f"{name}/{role}", value)
        return total

    def on_train_end(self) -> None:
        """Evaluate the final iterate on the training device (Lightning's teardown then moves
        the module, buffers included, to the CPU)."""
        self.best_rotations()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam([self.A, self.B], lr=self.rotation.lr)

    @torch.no_grad()
    def best_rotations(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Best-loss (Q, R2); the final iterate (after the last update) is evaluated too."""
        if not self._final_checked and self.A is not None:
            self._final_checked = True
            total, _, q, r = self.loss()
            self._track(total, q, r, self.global_step)
        assert self.track.best is not None, "no loss was evaluated"
        q, r = self.track.best
        return (torch.block_diag(*q.unbind(0)) if q.dim() == 3 else q), r

    @torch.no_grad()
    def importance(self, role: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Importance scores of one linear before (identity) and after the best rotations (for
        gate/up/down of an MoE layer: of the expert that received the most calibration tokens)."""
        roles = self.frozen.weights
        if role not in roles:  # an MoE layer: the expert with the most tokens
            experts = [r for r in roles if base_role(r) == role]
            if not experts:
                raise KeyError(f"role {role!r} is not in this layer ({', '.join(roles)})")
            weight = self.frozen.expert_weight
            role = max(experts, key=lambda r: weight.get(unit_of(r), 1.0))
        q, r = self.best_rotations()
        q, r = q.float().to(self.device), r.float().to(self.device)
        eye_q = torch.eye(q.shape[0], device=q.device)
        eye_r = torch.eye(r.shape[-1], device=r.device).expand_as(r).contiguous()
        before = layer_scores(eye_q, eye_r, self.frozen, self.layout, self.rotation.score)[role]
        return before, layer_scores(q, r, self.frozen, self.layout, self.rotation.score)[role]

    def report(self) -> dict:
        """Per-layer numbers for results.json: the objective and its value before and after."""
        q, r = self.best_rotations()
        return {"objective": self.rotation.objective_used, **self.track.report(),
                "orthogonality_error": max(orthogonality_error(q), orthogonality_error(r))}
