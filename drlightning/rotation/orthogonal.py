"""Orthogonal matrices: the QR reparameterisation and helpers for tests and checks."""

from __future__ import annotations

import torch


def qr_orthogonal(a: torch.Tensor) -> torch.Tensor:
    """Q factor of ``a`` (batched over leading dims); QR(I) = I, so identity init is exact."""
    return torch.linalg.qr(a).Q


def random_orthogonal(
    n: int,
    batch: tuple[int, ...] = (),
    *,
    dtype: torch.dtype = torch.float64,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Haar-random orthogonal matrices of shape ``batch + (n, n)``."""
    g = torch.randn(*batch, n, n, dtype=torch.float64, generator=generator)
    q, r = torch.linalg.qr(g)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    return q.to(dtype)


def in_precision(q: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``q`` as ``dtype``; a rotation learned in a lower precision is re-orthonormalised there.

    A float32 QR factor is orthogonal to ~1e-7 only, which a float64 model would show as a 1e-7
    change of its function. QR in ``dtype`` with the signs of R's diagonal moved into Q gives the
    orthogonal matrix within ~1e-7 of ``q`` (batched over leading dims)."""
    wide = q.detach().to(dtype)
    if torch.finfo(q.dtype).eps <= torch.finfo(dtype).eps:
        return wide
    factors = torch.linalg.qr(wide)
    return factors.Q * torch.sign(torch.diagonal(factors.R, dim1=-2, dim2=-1)).unsqueeze(-2)


def orthogonality_error(q: torch.Tensor) -> float:
    """max |QᵀQ − I| over all entries (and all matrices of a batch)."""
    q = q.detach().double()
    eye = torch.eye(q.shape[-1], dtype=q.dtype, device=q.device)
    return (q.transpose(-2, -1) @ q - eye).abs().max().item()


def block_diagonal(blocks: torch.Tensor, repeat: int = 1) -> torch.Tensor:
    """Dense block-diagonal matrix of ``blocks`` (k, b, b), each block repeated ``repeat`` times."""
    return torch.block_diag(*blocks.repeat_interleave(repeat, dim=0).unbind(0))
