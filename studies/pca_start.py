"""A data-driven starting point for the shared residual rotation: the principal directions of the
layers' inputs, placed so every N:M group of input channels mixes strong and weak directions.

Research code of studies/shared_start.py (it starts worse than the identity, so the package does
not ship it); tests/test_pca_start.py loads it from here."""

from __future__ import annotations

import torch


def input_covariance(hessians: list[torch.Tensor]) -> torch.Tensor:
    """Σ H / tr(H) over the given input Hessians (each layer's attention and MLP inputs): every
    Hessian counts once whatever its scale."""
    if not hessians:
        raise ValueError("input_covariance needs at least one Hessian")
    total = torch.zeros_like(hessians[0], dtype=torch.float64)
    for h in hessians:
        h = h.double()
        total += h / h.diagonal().sum().clamp_min(1e-30)
    return total


def band_interleave(n: int, m: int) -> torch.Tensor:
    """Order of n ranked directions such that consecutive group g of m channels holds ranks
    g, G + g, 2G + g, … (G = n / m): one direction from each of m rank bands per group."""
    if m < 1 or n % m:
        raise ValueError(f"band_interleave: m={m} must divide n={n}")
    groups = n // m
    return torch.arange(n).reshape(m, groups).T.reshape(-1)


def pca_start(cov: torch.Tensor, m: int | None = None) -> torch.Tensor:
    """Orthogonal Q whose columns are the eigenvectors of ``cov`` by decreasing eigenvalue, or,
    with ``m``, in :func:`band_interleave` order (for an N:M pattern over groups of m inputs)."""
    values, vectors = torch.linalg.eigh(cov.double())
    vectors = vectors[:, values.argsort(descending=True)]
    if m is not None:
        vectors = vectors[:, band_interleave(cov.shape[0], m)]
    return vectors.float()
