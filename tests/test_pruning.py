"""Pruners: patterns, exact counts, N:M validity, slow independent references, errors, dtypes."""

from __future__ import annotations

import pytest
import torch

from drlightning.pruning import (
    METHODS,
    Pattern,
    nm_mask,
    parse_pattern,
    prune_weight,
    sparsegpt_prune,
    unstructured_mask,
)


def make_data(rows: int = 16, cols: int = 64, tokens: int = 512, seed: int = 0):
    """Random weight, correlated inputs X (tokens, cols) and H = (2/N)·XᵀX."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    mix = torch.eye(cols) + 0.6 * torch.randn(cols, cols, generator=g) / cols**0.5
    scale = torch.rand(cols, generator=g) * 2.5 + 0.25
    x = (torch.randn(tokens, cols, generator=g) @ mix) * scale
    return w, 2 * x.T @ x / tokens, x


# ---------------------------------------------------------------- patterns


@pytest.mark.parametrize("spec,sparsity,n,m,text", [
    ("2:4", 0.5, 2, 4, "2:4"), ("4:8", 0.5, 4, 8, "4:8"), ("1:4", 0.25, 1, 4, "1:4"),
    ("0.5", 0.5, None, None, "50%"), ("50%", 0.5, None, None, "50%"),
    (0.5, 0.5, None, None, "50%"), ("30%", 0.3, None, None, "30%"),
    (" 30% ", 0.3, None, None, "30%"), (0.7, 0.7, None, None, "70%"),
])
def test_parse_pattern_accepts(spec, sparsity, n, m, text):
    p = parse_pattern(spec)
    assert p.sparsity == pytest.approx(sparsity) and (p.n, p.m) == (n, m)
    assert p.is_nm == (m is not None) and str(p) == text
    assert parse_pattern(p) is p


@pytest.mark.parametrize("spec", [0, 1, -0.1, 1.5, "0", "100%", "nan", "4:4", "5:4", "0:4",
                                  "a:b", "abc", "", "2:4:8", "-1:4", True, None])
def test_parse_pattern_rejects_naming_value_and_allowed(spec):
    with pytest.raises(ValueError) as info:
        parse_pattern(spec)
    msg = str(info.value)
    assert "allowed" in msg and "0 < N < M" in msg and "(0, 1)" in msg
    assert repr(spec) in msg or str(spec) in msg


def test_pattern_constructor_checks_consistency():
    with pytest.raises(ValueError):
        Pattern(0.5, 2, None)
    with pytest.raises(ValueError):
        Pattern(0.25, 2, 4)
    with pytest.raises(ValueError):
        Pattern(1.0)


def test_validate_needs_m_dividing_width():
    parse_pattern("2:4").validate(64)
    parse_pattern(0.5).validate(66)
    with pytest.raises(ValueError, match=r"M=8.*in_features=66"):
        parse_pattern("4:8").validate(66)
    with pytest.raises(ValueError, match="in_features=66"):
        prune_weight(torch.randn(4, 66), None, "magnitude", "2:4")


# ---------------------------------------------------------------- masks


def test_masks_break_ties_by_index():
    scores = torch.ones(3, 8)
    assert unstructured_mask(scores, 0.5).reshape(-1).nonzero().reshape(-1).tolist() == list(
        range(12))
    assert (unstructured_mask(scores, 0.5, dim=1)[:, :4]).all()
    assert nm_mask(scores, 1, 4).nonzero()[:, 1].tolist() == [0, 4] * 3


@pytest.mark.parametrize("sparsity", [0.1, 0.3, 0.5, 0.77])
def test_unstructured_mask_exact_counts(sparsity):
    scores = torch.randint(0, 3, (7, 33)).float()  # many ties
    assert unstructured_mask(scores, sparsity).sum() == int(7 * 33 * sparsity)
    assert (unstructured_mask(scores, sparsity, dim=1).sum(1) == int(33 * sparsity)).all()


# ---------------------------------------------------------------- exact ratios and N:M


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("spec", ["2:4", "4:8"])
def test_nm_every_group_has_exactly_n_pruned(method, spec):
    w, h, _ = make_data(48, 256, seed=1)
    p = parse_pattern(spec)
    new, mask = prune_weight(w, h, method, spec)
    assert mask.dtype == torch.bool and mask.shape == w.shape
    assert (mask.reshape(48, -1, p.m).sum(-1) == p.n).all()
    assert ((new == 0).reshape(48, -1, p.m).sum(-1) == p.n).all()
    assert (new[mask] == 0).all()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.6])
def test_unstructured_exact_ratio_per_comparison_group(method, sparsity):
    w, h, _ = make_data(48, 256, seed=2)
    new, mask = prune_weight(w, h, method, sparsity)
    assert (new[mask] == 0).all() and torch.equal(mask, new == 0)
    if method == "magnitude":
        assert mask.sum() == int(48 * 256 * sparsity)
        assert not (mask.sum(1) == mask.sum(1)[0]).all()  # really one group, not per row
    elif method == "wanda":
        assert (mask.sum(1) == int(256 * sparsity)).all()
    else:
        for b in (0, 128):
            assert mask[:, b:b + 128].sum() == int(48 * 128 * sparsity)


# ---------------------------------------------------------------- magnitude / wanda references


def slow_select(scores: torch.Tensor, sparsity: float | None, nm: tuple[int, int] | None,
                per_row: bool) -> torch.Tensor:
    """Python-loop reference: prune lowest scores, ties by (row-major) index."""
    rows, cols = scores.shape
    s = scores.tolist()
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    if nm is not None:
        n, m = nm
        for i in range(rows):
            for b in range(0, cols, m):
                for j in sorted(range(b, b + m), key=lambda j: (s[i][j], j))[:n]:
                    mask[i, j] = True
    elif per_row:
        for i in range(rows):
            for j in sorted(range(cols), key=lambda j: (s[i][j], j))[:int(cols * sparsity)]:
                mask[i, j] = True
    else:
        flat = sorted((s[i][j], i * cols + j) for i in range(rows) for j in range(cols))
        for _, k in flat[:int(rows * cols * sparsity)]:
            mask[k // cols, k % cols] = True
    return mask


@pytest.mark.parametrize("spec", ["2:4", "4:8", 0.5, 0.3])
def test_magnitude_and_wanda_match_slow_reference(spec):
    w, h, _ = make_data(16, 64, seed=3)
    w[0, :8] = 0.5  # ties
    p = parse_pattern(spec)
    nm = (p.n, p.m) if p.is_nm else None
    for method, scores, per_row in [
        ("magnitude", w.abs(), False),
        ("wanda", w.abs() * torch.diagonal(h).sqrt(), True),
    ]:
        new, mask = prune_weight(w, h, method, spec)
        ref = slow_select(scores, p.sparsity, nm, per_row)
        assert torch.equal(mask, ref), method
        assert torch.equal(new, torch.where(ref, torch.zeros_like(w), w)), method


def test_wanda_uses_input_norms():
    w = torch.ones(2, 4)
    h = torch.diag(torch.tensor([4.0, 1.0, 9.0, 0.25]))
    _, mask = prune_weight(w, h, "wanda", 0.5)
    assert mask[:, [1, 3]].all() and not mask[:, [0, 2]].any()


# ---------------------------------------------------------------- SparseGPT


def slow_sparsegpt(w: torch.Tensor, h: torch.Tensor, sparsity: float | None,
                   nm: tuple[int, int] | None, blocksize: int,
                   percdamp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain column-by-column OBS in float64 with an explicit, shrinking inverse Hessian.

    ``g`` is the inverse Hessian of the columns not yet processed; after column j it is
    downdated (g - g[:, j] g[j, :] / g[j, j]) and row/column j removed. The saliency of column
    j is w² / g_jj at j's turn; unstructured masks are chosen per block of ``blocksize`` columns
    over all rows at once, N:M masks per row at each column i with i % M == 0.
    """
    w, h = w.double().clone(), h.double().clone()
    cols = w.shape[1]
    dead = torch.diagonal(h) == 0
    for j in dead.nonzero().reshape(-1).tolist():
        h[j, j] = 1.0
        w[:, j] = 0.0
    h += percdamp * torch.diagonal(h).mean() * torch.eye(cols, dtype=torch.float64)

    def downdate(g: torch.Tensor) -> torch.Tensor:
        return (g - torch.outer(g[:, 0], g[0, :]) / g[0, 0])[1:, 1:]

    turn, g = [], torch.linalg.inv(h)
    for _ in range(cols):
        turn.append(g[0, 0].item())
        g = downdate(g)
    turn_t = torch.tensor(turn, dtype=torch.float64)
    mask = torch.zeros(w.shape, dtype=torch.bool)
    g = torch.linalg.inv(h)
    for j in range(cols):
        if nm is None and j % blocksize == 0:
            cols_b = list(range(j, min(j + blocksize, cols)))
            scores = w[:, cols_b].square() / turn_t[cols_b]
            mask[:, cols_b] = slow_select(scores, sparsity, None, per_row=False)
        if nm is not None and j % nm[1] == 0:
            scores = w[:, j:j + nm[1]].square() / turn_t[j:j + nm[1]]
            mask[:, j:j + nm[1]] = slow_select(scores, None, nm, per_row=True)
        q = torch.where(mask[:, j], 0.0, w[:, j])
        err = (w[:, j] - q) / g[0, 0]
        w[:, j:] -= torch.outer(err, g[0, :])
        w[:, j] = q
        g = downdate(g)
    return w, mask


@pytest.mark.parametrize("spec", ["2:4", "4:8", 0.5, 0.3])
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
def test_sparsegpt_matches_slow_obs_reference(spec, dtype, rtol):
    w, h, _ = make_data(8, 64, seed=4)
    p = parse_pattern(spec)
    fast, fmask = sparsegpt_prune(w.to(dtype), h.to(dtype), p, blocksize=16)
    slow, smask = slow_sparsegpt(w, h, p.sparsity, (p.n, p.m) if p.is_nm else None, blocksize=16)
    assert fast.dtype == dtype
    assert torch.equal(fmask, smask)
    scale = slow.abs().max().item()
    assert torch.allclose(fast.double(), slow, rtol=rtol, atol=rtol * scale)
    assert not torch.allclose(fast.double(), w.double().masked_fill(fmask, 0))  # weights updated


def test_sparsegpt_lazy_batching_does_not_change_result():
    w, h, _ = make_data(8, 64, seed=5)
    w, h = w.double(), h.double()
    ref, ref_mask = sparsegpt_prune(w, h, parse_pattern("2:4"), blocksize=64)
    for blocksize in (1, 6, 16, 128):  # 6 is rounded up to a multiple of M=4
        new, mask = sparsegpt_prune(w, h, parse_pattern("2:4"), blocksize=blocksize)
        assert torch.equal(mask, ref_mask) and torch.allclose(new, ref, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("spec", ["2:4", 0.5])
def test_sparsegpt_reconstructs_better_than_wanda_and_magnitude(spec):
    w, h, x = make_data(32, 128, tokens=1024, seed=6)
    err = {}
    for method in METHODS:
        new, _ = prune_weight(w, h, method, spec)
        err[method] = ((w - new) @ x.T).double().square().sum().item()
    assert err["sparsegpt"] < err["wanda"] < err["magnitude"]
    assert err["sparsegpt"] < 0.9 * err["wanda"]


def test_sparsegpt_dead_inputs():
    w, h, _ = make_data(8, 64, seed=7)
    for j in (3, 17, 40):
        h[j, :] = 0
        h[:, j] = 0
    for spec in ("2:4", 0.5):
        new, mask = prune_weight(w, h, "sparsegpt", spec)
        assert torch.isfinite(new).all() and (new[:, [3, 17, 40]] == 0).all()
        p = parse_pattern(spec)
        slow, smask = slow_sparsegpt(w, h, p.sparsity, (p.n, p.m) if p.is_nm else None, 128)
        assert torch.equal(mask, smask)
        assert torch.allclose(new.double(), slow, rtol=1e-4, atol=1e-4 * slow.abs().max().item())


def test_sparsegpt_rank_deficient_hessian_is_rescued_by_damping():
    w, h, _ = make_data(8, 64, tokens=8, seed=8)  # rank 8 < 64
    new, mask = prune_weight(w, h, "sparsegpt", "2:4")
    assert torch.isfinite(new).all() and (mask.reshape(8, -1, 4).sum(-1) == 2).all()


def test_bad_hessians_give_clear_errors():
    w, h, _ = make_data(8, 32, seed=9)
    with pytest.raises(RuntimeError, match=r"32x32 Hessian is not positive definite.*λ=.*"
                                           r"calibration data"):
        prune_weight(w, -torch.eye(32), "sparsegpt", 0.5)
    with pytest.raises(RuntimeError, match="not positive definite"):
        sparsegpt_prune(w, torch.full((32, 32), float("nan")), parse_pattern(0.5))
    h[0, 0] = float("nan")
    for method in ("wanda", "sparsegpt"):
        with pytest.raises(ValueError, match="NaN or Inf"):
            prune_weight(w, h, method, 0.5)
        with pytest.raises(ValueError, match="needs a Hessian"):
            prune_weight(w, None, method, 0.5)
        with pytest.raises(ValueError, match=r"\(32, 32\)"):
            prune_weight(w, torch.eye(16), method, 0.5)


# ---------------------------------------------------------------- prune_weight


def test_prune_weight_unknown_method_and_bad_weight():
    w, h, _ = make_data(8, 32)
    with pytest.raises(ValueError, match="'obs'.*allowed: magnitude, wanda, sparsegpt"):
        prune_weight(w, h, "obs", 0.5)
    for bad_value in (float("nan"), float("inf")):
        bad = w.clone()
        bad[2, 5] = bad_value
        for method in METHODS:
            with pytest.raises(ValueError, match="NaN or Inf"):
                prune_weight(bad, h, method, 0.5)
    with pytest.raises(ValueError, match="2-D"):
        prune_weight(w.reshape(-1), h, "magnitude", 0.5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64, torch.float32])
@pytest.mark.parametrize("method", METHODS)
def test_prune_weight_keeps_dtype_and_inputs(dtype, method):
    w, h, _ = make_data(16, 64, seed=10)
    w = w.to(dtype)
    w_copy, h_copy = w.clone(), h.clone()
    new, mask = prune_weight(w, h, method, "2:4")
    assert new.dtype == dtype and new.device == w.device and new.shape == w.shape
    assert torch.equal(w, w_copy) and torch.equal(h, h_copy)
    assert new.data_ptr() != w.data_ptr()
    assert (new[mask] == 0).all() and (mask.reshape(16, -1, 4).sum(-1) == 2).all()
    if method != "sparsegpt":
        assert torch.equal(new[~mask], w[~mask])
