"""Which iterate of a rotation fit is kept: the one with the lowest objective on the fitted
windows, or, when the held-out windows' value is given, the lowest on those.

One tracker serves the per-layer fit (``RotationModule``) and the shared R1 fit
(``SharedRotationModule``): both offer every evaluated iterate and report the same fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class IterateTracker:
    """The best iterate so far and the curves it was chosen on."""

    initial_loss: float | None = None
    """The fitted objective of the first iterate offered (the identity, before any step)."""
    best_loss: float = float("inf")
    """The value the kept iterate was chosen on (held-out where given, else fitted)."""
    best_step: int = -1
    best_fitted_loss: float | None = None
    """The fitted objective at the kept iterate."""
    best: tuple[torch.Tensor, torch.Tensor] | None = None
    held_curve: list[float] = field(default_factory=list)
    """The held-out objective of every offered iterate (empty when kept on the fitted one)."""

    def offer(self, fitted: float, q: torch.Tensor, r: torch.Tensor, step: int,
              held: float | None = None) -> None:
        """Keep (Q, R2) if it is the best so far (by ``held`` when given)."""
        if self.initial_loss is None:
            self.initial_loss = fitted
        value = fitted if held is None else held
        if held is not None:
            self.held_curve.append(held)
        if value < self.best_loss:
            self.best_loss, self.best_step, self.best_fitted_loss = value, step, fitted
            self.best = (q.detach().clone(), r.detach().clone())

    def report(self) -> dict:
        """The fields results.json records for a fit: initial, kept (fitted) value and step, and
        with held-out windows the held-out objective at the start, at the kept iterate and last."""
        out: dict = {"initial_loss": self.initial_loss, "best_loss": self.best_fitted_loss,
                     "best_step": self.best_step}
        if self.held_curve:
            out.update({"best_on": "held_out", "held_out_initial_loss": self.held_curve[0],
                        "held_out_best_loss": self.best_loss,
                        "held_out_final_loss": self.held_curve[-1]})
        return out
