"""The principal-direction start of the shared rotation (studies/pca_start.py, research code of the
shared_start study) and the shared module's given start (``q_init``, in the package)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from drlightning.lightning.shared_rotation import SharedRotationModule
from drlightning.models.adapters import HeadLayout
from drlightning.rotation.objective import ObjectiveSpec
from drlightning.rotation.orthogonal import orthogonality_error, random_orthogonal

_spec = importlib.util.spec_from_file_location(
    "pca_start", Path(__file__).resolve().parents[1] / "studies" / "pca_start.py")
pca_start_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pca_start_module)
band_interleave = pca_start_module.band_interleave
input_covariance = pca_start_module.input_covariance
pca_start = pca_start_module.pca_start


def test_band_interleave_puts_one_rank_band_in_each_group_slot():
    order = band_interleave(12, 4)
    assert sorted(order.tolist()) == list(range(12))
    groups = order.reshape(3, 4)
    for slot in range(4):  # slot s of every group holds a rank from band s = [3s, 3s + 3)
        assert all(3 * slot <= r < 3 * slot + 3 for r in groups[:, slot].tolist())
    with pytest.raises(ValueError, match="m=5 must divide n=12"):
        band_interleave(12, 5)


def test_pca_start_diagonalises_the_covariance_in_the_chosen_order():
    g = torch.Generator().manual_seed(0)
    basis = random_orthogonal(8, generator=g)
    variances = torch.tensor([8.0, 7, 6, 5, 4, 3, 2, 1], dtype=torch.float64)
    cov = basis @ torch.diag(variances) @ basis.T
    for m, expected in ((None, variances), (4, variances[band_interleave(8, 4)])):
        q = pca_start(cov, m).double()
        assert orthogonality_error(q) < 1e-6
        rotated = q.T @ cov @ q  # the inputs' covariance in the new basis
        assert torch.allclose(rotated, torch.diag(expected), atol=1e-5)


def test_input_covariance_counts_every_hessian_once():
    a, b = torch.diag(torch.tensor([1.0, 1.0])), torch.diag(torch.tensor([300.0, 100.0]))
    assert torch.allclose(input_covariance([a, b]).float(), torch.diag(torch.tensor([1.25, 0.75])))
    with pytest.raises(ValueError, match="at least one Hessian"):
        input_covariance([])


def test_shared_module_starts_at_the_given_rotation():
    layout = HeadLayout(hidden=8, n_heads=2, n_kv_heads=1, head_dim=4, intermediate=16)
    q0 = random_orthogonal(8, generator=torch.Generator().manual_seed(1), dtype=torch.float32)
    module = SharedRotationModule(layout, 2, ObjectiveSpec("entropy", "wanda"), q_init=q0)
    q, _ = module.rotations()
    assert torch.allclose(q.abs(), q0.abs(), atol=1e-5)  # QR may flip column signs
    with pytest.raises(ValueError, match="q_init must be an orthogonal 8 × 8 matrix"):
        SharedRotationModule(layout, 2, ObjectiveSpec("entropy", "wanda"), q_init=2 * q0)
