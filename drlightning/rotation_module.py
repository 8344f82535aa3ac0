"""The per-layer LightningModule: learn R1 (d×d) and R2 (one hd×hd per KV head) for one layer."""

from __future__ import annotations

import inspect

import torch
from lightning import LightningModule
from torch import nn

from .pruning import NO_PRUNING, parse_pattern
from .rotation import METHODS, frozen_layer, layer_entropy, orthogonality_error, qr_orthogonal
from .rotation.objective import layer_scores


def check_r1_blocks(hidden: int, blocks: int) -> None:
    """Raise unless ``blocks`` divides the hidden size."""
    if hidden % blocks:
        divisors = [k for k in (1, 2, 4, 8, 16) if hidden % k == 0]
        raise ValueError(f"model.r1_blocks={blocks} does not divide the hidden size {hidden}; "
                         f"allowed e.g. {divisors}")


class RotationModule(LightningModule):
    """Minimise the summed importance entropy of one decoder layer over orthogonal Q and R2.

    Args:
        method: importance score used by the objective and the pruner (magnitude, wanda, sparsegpt).
        pattern: pruning pattern applied after rotation: "2:4", "4:8", a ratio such as "50%", or
            "none" to rotate without pruning (the saved model then matches the dense one).
        steps: optimisation steps per layer; 0 skips rotation and gives the plain pruner.
        lr: Adam learning rate.
        grad_clip: gradient-norm clip over all rotation parameters.
        reference_quirks: reproduce the authors' released SparseGPT objective (λ added after
            inversion, numerically the magnitude objective). For comparisons only.
        r1_blocks: k > 1 learns R1 as k diagonal blocks of size hidden/k (paper Appendix E);
            each step then costs about 1/k of the dense one. k must divide the hidden size.
        low_memory: recompute the objective one linear at a time in the backward pass
            (activation checkpointing): ≈ 4× less working memory per step for ≈ 1.3× the time;
            for 70B-size layers on one GPU (see docs/benchmarks.md).
    """

    def __init__(
        self,
        method: str = "sparsegpt",
        pattern: str = "2:4",
        steps: int = 100,
        lr: float = 0.01,
        grad_clip: float = 1.0,
        reference_quirks: bool = False,
        r1_blocks: int = 1,
        low_memory: bool = False,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
        if pattern != NO_PRUNING:
            parse_pattern(pattern)
        if not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps={steps!r} must be an integer ≥ 0 (0 = plain pruner)")
        if not lr > 0:
            raise ValueError(f"lr={lr!r} must be > 0")
        if not grad_clip > 0:
            raise ValueError(f"grad_clip={grad_clip!r} must be > 0")
        if not isinstance(r1_blocks, int) or isinstance(r1_blocks, bool) or r1_blocks < 1:
            raise ValueError(f"r1_blocks={r1_blocks!r} must be an integer ≥ 1 (1 = dense R1)")
        if not isinstance(low_memory, bool):
            raise ValueError(f"low_memory={low_memory!r} must be true or false")
        self.save_hyperparameters()
        self.A: nn.Parameter | None = None
        self.B: nn.Parameter | None = None
        self.best_loss = float("inf")
        self.best_step = -1
        self.initial_loss: float | None = None
        self.best: tuple[torch.Tensor, torch.Tensor] | None = None
        self._final_checked = False

    def settings(self) -> dict:
        """The constructor arguments (hparams minus anything LightningCLI adds)."""
        names = inspect.signature(type(self).__init__).parameters
        return {k: v for k, v in self.hparams.items() if k in names}

    def fresh(self) -> RotationModule:
        """A new, untrained module with the same settings (one per layer)."""
        return type(self)(**self.settings())

    def configure_model(self) -> None:
        """Create A, B (identity) and load the frozen tensors from the layer's datamodule."""
        if self.A is not None:
            return
        dm = self.trainer.datamodule
        layout = dm.layout
        self.layout = layout
        k = self.hparams.get("r1_blocks", 1)
        check_r1_blocks(layout.hidden, k)
        self.A = nn.Parameter(torch.eye(layout.hidden) if k == 1 else
                              torch.eye(layout.hidden // k).repeat(k, 1, 1))
        self.B = nn.Parameter(torch.eye(layout.head_dim).repeat(layout.n_kv_heads, 1, 1))
        self.frozen = frozen_layer(dm.frozen_weights(), dm.hessians, self.hparams.method, layout,
                                   self.hparams.reference_quirks)
        dm.hessians = None  # the objective keeps what it needs (M, M_o blocks); free the rest

    def on_fit_start(self) -> None:
        """Move the frozen tensors next to the parameters (they are not checkpointed)."""
        f = self.frozen
        dev = self.A.device
        f.weights = {k: v.to(dev) for k, v in f.weights.items()}
        for name in ("m_attn", "m_mlp", "m_o_blocks"):
            if getattr(f, name) is not None:
                setattr(f, name, getattr(f, name).to(dev))

    def rotations(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Current Q (d×d, or its k diagonal blocks) and R2 (G×hd×hd)."""
        return qr_orthogonal(self.A), qr_orthogonal(self.B)

    def loss(self) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Entropy loss at the current parameters, computed in float32."""
        q, r = self.rotations()
        q, r = q.float(), r.float()
        total, parts = layer_entropy(q, r, self.frozen, self.layout, self.hparams.method,
                                     low_memory=self.hparams.get("low_memory", False))
        return total.float(), parts, q, r

    def _track(self, loss: torch.Tensor, q: torch.Tensor, r: torch.Tensor, step: int) -> None:
        value = float(loss.detach())
        if self.initial_loss is None:
            self.initial_loss = value
        if value < self.best_loss:
            self.best_loss, self.best_step = value, step
            self.best = (q.detach().clone(), r.detach().clone())

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        total, parts, q, r = self.loss()
        self._track(total, q, r, self.global_step)
        self.log("entropy/total", total, prog_bar=True)
        for role, value in parts.items():
            self.log(f"entropy/{role}", value)
        return total

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None,
                                    gradient_clip_algorithm=None) -> None:
        self.clip_gradients(optimizer, gradient_clip_val=self.hparams.grad_clip,
                            gradient_clip_algorithm="norm")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam([self.A, self.B], lr=self.hparams.lr)

    @torch.no_grad()
    def best_rotations(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Best-loss (Q, R2); the final iterate (after the last update) is evaluated too."""
        if not self._final_checked and self.A is not None:
            self._final_checked = True
            total, _, q, r = self.loss()
            self._track(total, q, r, self.global_step)
        assert self.best is not None, "no loss was evaluated"
        q, r = self.best
        return (torch.block_diag(*q.unbind(0)) if q.dim() == 3 else q), r

    @torch.no_grad()
    def importance(self, role: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Importance scores of one linear before (identity) and after the best rotations."""
        q, r = self.best_rotations()
        q, r = q.float(), r.float()
        eye_q = torch.eye(q.shape[0], device=q.device)
        eye_r = torch.eye(r.shape[-1], device=r.device).expand_as(r).contiguous()
        method = self.hparams.method
        before = layer_scores(eye_q, eye_r, self.frozen, self.layout, method)[role]
        return before, layer_scores(q, r, self.frozen, self.layout, method)[role]

    def report(self) -> dict:
        """Per-layer numbers for results.json."""
        q, r = self.best_rotations()
        return {
            "initial_entropy": self.initial_loss,
            "best_entropy": self.best_loss,
            "best_step": self.best_step,
            "orthogonality_error": max(orthogonality_error(q), orthogonality_error(r)),
        }
