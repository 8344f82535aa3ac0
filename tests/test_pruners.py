"""Pruners: exact ratios, valid N:M, agreement with independent slow references, clear errors."""

from __future__ import annotations

import pytest
import torch

from drlightning.pruning import parse_pattern, prune_weight, sparsegpt_prune


def data(rows=16, cols=64, n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    mix = torch.eye(cols) + 0.5 * torch.randn(cols, cols, generator=g) / cols ** 0.5
    x = torch.randn(n, cols, generator=g) @ mix * torch.linspace(0.2, 3.0, cols)
    return w, 2 * x.T @ x / n, x


@pytest.mark.parametrize("spec,expected", [("2:4", (0.5, 2, 4)), ("4:8", (0.5, 4, 8)),
                                           ("0.5", (0.5, None, None)), ("30%", (0.3, None, None)),
                                           (0.7, (0.7, None, None))])
def test_parse_pattern(spec, expected):
    p = parse_pattern(spec)
    assert p.sparsity == pytest.approx(expected[0]) and (p.n, p.m) == expected[1:]


@pytest.mark.parametrize("spec", [0, 1, -0.1, 1.5, "4:4", "5:4", "0:4", "a:b", "abc", "100%"])
def test_bad_patterns_are_rejected_with_the_value(spec):
    with pytest.raises(ValueError, match="allowed"):
        parse_pattern(spec)


def test_nm_width_must_divide():
    with pytest.raises(ValueError, match="in_features=66"):
        prune_weight(torch.randn(4, 66), None, "magnitude", "2:4")


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("spec", ["2:4", "4:8"])
def test_nm_every_block_has_exactly_n_zeros(method, spec):
    w, h, _ = data(48, 256)
    p = parse_pattern(spec)
    new, mask = prune_weight(w, h, method, spec)
    blocks = (new == 0).reshape(48, -1, p.m).sum(-1)
    assert (blocks == p.n).all()
    assert torch.equal(mask, new == 0)


@pytest.mark.parametrize("method,group", [("magnitude", "matrix"), ("wanda", "row"),
                                          ("sparsegpt", "block")])
def test_unstructured_exact_ratio_per_comparison_group(method, group):
    w, h, _ = data(48, 256)
    new, _ = prune_weight(w, h, method, 0.3)
    zeros = new == 0
    if group == "matrix":
        assert zeros.sum() == int(48 * 256 * 0.3)
    elif group == "row":
        assert (zeros.sum(1) == int(256 * 0.3)).all()
    else:
        for b in range(0, 256, 128):
            assert zeros[:, b:b + 128].sum() == int(48 * 128 * 0.3)


def slow_scores_prune(scores, sparsity=None, nm=None, per_row=False):
    rows, cols = scores.shape
    keep = torch.ones(rows, cols, dtype=torch.bool)
    if nm:
        n, m = nm
        for i in range(rows):
            for b in range(0, cols, m):
                order = sorted(range(b, b + m), key=lambda j: (scores[i, j].item(), j))
                for j in order[:n]:
                    keep[i, j] = False
    elif per_row:
        for i in range(rows):
            order = sorted(range(cols), key=lambda j: (scores[i, j].item(), j))
            for j in order[: int(cols * sparsity)]:
                keep[i, j] = False
    else:
        flat = sorted((scores[i, j].item(), i * cols + j) for i in range(rows) for j in range(cols))
        for _, k in flat[: int(rows * cols * sparsity)]:
            keep[k // cols, k % cols] = False
    return keep


@pytest.mark.parametrize("spec", ["2:4", 0.5])
def test_magnitude_and_wanda_match_slow_reference(spec):
    w, h, x = data(8, 32)
    nm = (2, 4) if spec == "2:4" else None
    keep = slow_scores_prune(w.abs(), 0.5, nm)
    assert torch.equal(prune_weight(w, h, "magnitude", spec)[0] != 0, keep)
    col_norm = (x.square().sum(0) * 2 / x.shape[0]).sqrt()
    keep = slow_scores_prune(w.abs() * col_norm, 0.5, nm, per_row=True)
    assert torch.equal(prune_weight(w, h, "wanda", spec)[0] != 0, keep)


def slow_sparsegpt(w, h, sparsity=None, nm=None, blocksize=16, percdamp=0.01):
    """Column-by-column OBS in float64, no lazy batching: the full inverse Hessian is downdated.

    Saliency of column j is w²/[H⁻¹]_jj with [H⁻¹]_jj taken when column j's turn comes (after the
    earlier columns were eliminated); masks are chosen per block of ``blocksize`` columns
    (unstructured) or at the start of each M-group on the current weights (N:M).
    """
    w, h = w.double().clone(), h.double().clone()
    cols = w.shape[1]
    h += percdamp * torch.diagonal(h).mean() * torch.eye(cols, dtype=torch.float64)
    hinv = torch.linalg.inv(h)
    turn, tmp = torch.zeros(cols, dtype=torch.float64), hinv.clone()
    for j in range(cols):
        turn[j] = tmp[j, j]
        tmp = tmp - tmp[:, j:j + 1] @ tmp[j:j + 1, :] / tmp[j, j]
    mask = torch.zeros_like(w, dtype=torch.bool)
    for j in range(cols):
        if nm is None and j % blocksize == 0:
            s = w[:, j:j + blocksize].square() / turn[j:j + blocksize]
            idx = torch.argsort(s.reshape(-1), stable=True)[:int(s.numel() * sparsity)]
            blk = torch.zeros(s.numel(), dtype=torch.bool)
            blk[idx] = True
            mask[:, j:j + blocksize] = blk.reshape(s.shape)
        if nm is not None and j % nm[1] == 0:
            s = w[:, j:j + nm[1]].square() / turn[j:j + nm[1]]
            idx = torch.argsort(s, dim=1, stable=True)[:, :nm[0]]
            mask[:, j:j + nm[1]] = torch.zeros_like(s, dtype=torch.bool).scatter_(1, idx, True)
        q = w[:, j].masked_fill(mask[:, j], 0)
        err = (w[:, j] - q) / hinv[j, j]
        w[:, j:] -= err.unsqueeze(1) * hinv[j, j:].unsqueeze(0)
        w[:, j] = q
        hinv = hinv - hinv[:, j:j + 1] @ hinv[j:j + 1, :] / hinv[j, j]
    return w, mask


@pytest.mark.parametrize("spec", ["2:4", 0.5])
def test_sparsegpt_matches_slow_obs_reference(spec):
    """Cholesky diagonal² = downdated H⁻¹ diagonal, so both choose the same masks and updates."""
    w, h, _ = data(8, 64)
    p = parse_pattern(spec)
    fast, fmask = sparsegpt_prune(w.double(), h.double(), p, blocksize=16)
    slow, smask = slow_sparsegpt(w, h, None if p.is_nm else 0.5, (p.n, p.m) if p.is_nm else None)
    assert torch.equal(fmask, smask)
    assert torch.allclose(fast, slow, rtol=1e-6, atol=1e-8)


def test_sparsegpt_reconstructs_best():
    w, h, x = data(32, 128)
    err = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        new, _ = prune_weight(w, h, method, "2:4")
        err[method] = ((w - new) @ x.T).square().sum().item()
    assert err["sparsegpt"] < err["wanda"] < err["magnitude"]


def test_sparsegpt_dead_inputs_and_bad_hessians():
    w, h, _ = data(8, 32)
    h[3, :] = 0
    h[:, 3] = 0
    new, _ = prune_weight(w, h, "sparsegpt", 0.5)
    assert (new[:, 3] == 0).all() and torch.isfinite(new).all()
    with pytest.raises(RuntimeError, match="not positive definite"):
        prune_weight(w, -torch.eye(32), "sparsegpt", 0.5)
    h[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        prune_weight(w, h, "sparsegpt", 0.5)


def test_prune_weight_errors_and_dtypes():
    w, h, _ = data(8, 32)
    with pytest.raises(ValueError, match="allowed: magnitude, wanda, sparsegpt"):
        prune_weight(w, h, "obs", 0.5)
    bad = w.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        prune_weight(bad, h, "wanda", 0.5)
    for dtype in (torch.bfloat16, torch.float64):
        before = w.to(dtype)
        copy = before.clone()
        for method in ("magnitude", "wanda", "sparsegpt"):
            new, _ = prune_weight(before, h, method, "2:4")
            assert new.dtype == dtype and torch.equal(before, copy)
