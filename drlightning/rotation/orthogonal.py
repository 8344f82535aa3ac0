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


def orthogonality_error(q: torch.Tensor) -> float:
    """max |QᵀQ − I| over all entries (and all matrices of a batch)."""
    q = q.detach().double()
    eye = torch.eye(q.shape[-1], dtype=q.dtype, device=q.device)
    return (q.transpose(-2, -1) @ q - eye).abs().max().item()


def block_diagonal(blocks: torch.Tensor, repeat: int = 1) -> torch.Tensor:
    """Dense block-diagonal matrix of ``blocks`` (k, b, b), each block repeated ``repeat`` times."""
    return torch.block_diag(*blocks.repeat_interleave(repeat, dim=0).unbind(0))
