"""Importance scores of the pruners in their squared (OBD) form: S = W² ⊙ c, c per input.

| method    | c_j                          |
|-----------|------------------------------|
| magnitude | 1                            |
| wanda     | H_jj                         |
| sparsegpt | 1 / [(H + λI)⁻¹]_jj          |

with H = (2/N)·Σ x xᵀ of the linear's inputs and λ = 0.01·mean(diag H). Rows compare their own
entries, so a constant factor per matrix never matters.
"""

from __future__ import annotations

import torch


def damped_inverse(h: torch.Tensor, percdamp: float = 0.01, quirk: bool = False) -> torch.Tensor:
    """(H + λI)⁻¹ with λ = percdamp·mean(diag H); dead inputs (H_jj = 0) get H_jj = 1 first.

    ``quirk=True`` reproduces the authors' released code: (H + λI)⁻¹ + λI, λ added again *after*
    inversion. At their Hessian scale λ dwarfs the inverse's diagonal for normalised inputs, so
    the SparseGPT factor is nearly constant: magnitude entropy in effect.
    """
    h = h.clone()
    diag = torch.diagonal(h)
    diag[diag == 0] = 1.0
    lam = percdamp * diag.mean()
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    if quirk:
        return torch.linalg.inv(h + lam * eye) + lam * eye
    chol = torch.linalg.cholesky(h + lam * eye)
    return torch.cholesky_inverse(chol)


def input_factor(hessian: torch.Tensor | None, method: str) -> torch.Tensor | None:
    """The per-input factor c of ``method`` (None for magnitude), float32 or wider."""
    if method == "magnitude":
        return None
    if hessian is None:
        raise ValueError(f"method {method!r} needs a Hessian (calibration statistics)")
    h = hessian.detach().to(torch.promote_types(hessian.dtype, torch.float32))
    if method == "wanda":
        return torch.diagonal(h).clamp_min(0)
    return 1.0 / torch.diagonal(damped_inverse(h))


def importance(weight: torch.Tensor, factor: torch.Tensor | None) -> torch.Tensor:
    """S = W² ⊙ c (c broadcast over the rows), float32 or wider."""
    w = weight.detach().to(torch.promote_types(weight.dtype, torch.float32))
    s = w.square()
    return s if factor is None else s * factor.to(s.device, s.dtype)
