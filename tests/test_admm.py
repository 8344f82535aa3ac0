"""Mask-and-weights alternation (``model.refit: admm``) against a slow float64 reference."""

from __future__ import annotations

import pytest
import torch

from drlightning.pruning import parse_pattern, prune_weight
from drlightning.pruning.admm import admm_prune, project
from drlightning.pruning.refit import refit_rows


def _problem(out: int = 10, width: int = 16, tokens: int = 48, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(width, tokens, generator=g, dtype=torch.float64)
    x[2] *= 4
    x[5] = x[6] + 0.1 * x[5]  # correlated inputs: where a reconstruction beats magnitude
    w = torch.randn(out, width, generator=g, dtype=torch.float64)
    return w, x @ x.T


def _reference(w, mask, h, pattern, iterations, damping, rho, growth):
    """ADMM written out row by row with a dense solve per iteration (no eigendecomposition)."""
    pattern = parse_pattern(pattern)
    scale = h.diagonal().mean()
    hd = h + damping * scale * torch.eye(h.shape[0], dtype=h.dtype)
    z = torch.where(mask, 0.0, w)
    v = torch.zeros_like(w)
    penalty = rho * scale
    for _ in range(iterations):
        system = hd + penalty * torch.eye(h.shape[0], dtype=h.dtype)
        d = torch.stack([torch.linalg.solve(system, hd @ w[i] + penalty * (z[i] - v[i]))
                         for i in range(w.shape[0])])
        keep = torch.zeros_like(mask)
        for i in range(w.shape[0]):
            a = (d[i] + v[i]).abs()
            if pattern.is_nm:
                for start in range(0, w.shape[1], pattern.m):
                    block = a[start:start + pattern.m]
                    top = torch.argsort(block, stable=True)[pattern.n:]
                    keep[i, start + top] = True
            else:
                top = torch.argsort(a, stable=True)[int(w.shape[1] * pattern.sparsity):]
                keep[i, top] = True
        mask = ~keep
        z = torch.where(mask, 0.0, d + v)
        v = v + d - z
        penalty *= growth
    return refit_rows(w, mask, h, damping), mask


def _error(w, v, h):
    d = w - v.double()
    return float(((d @ h) * d).sum())


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "50%"])
def test_admm_equals_a_row_by_row_float64_reference(pattern):
    w, h = _problem()
    _, mask = prune_weight(w, h, "wanda", pattern)
    got, got_mask = admm_prune(w, mask, h, pattern, iterations=12, damping=0.01, rho=0.1,
                               growth=1.4)
    ref, ref_mask = _reference(w, mask, h, pattern, 12, 0.01, 0.1, 1.4)
    assert torch.equal(got_mask, ref_mask)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", ["2:4", "4:8", "50%"])
def test_admm_keeps_the_pattern_and_lowers_the_error_of_its_start(method, pattern):
    w, h = _problem(seed=3)
    start, mask = prune_weight(w.float(), h.float(), method, pattern)
    new, new_mask = admm_prune(w.float(), mask, h.float(), pattern)
    assert new.dtype == torch.float32 and (new[new_mask] == 0).all()
    parsed = parse_pattern(pattern)
    assert torch.equal(new_mask, project(torch.where(new_mask, 0.0, 1.0 + w.abs()), parsed))
    if parsed.is_nm:
        assert ((new.reshape(-1, parsed.m) != 0).sum(1) <= parsed.m - parsed.n).all()
    else:
        assert (new_mask.sum(1) == int(w.shape[1] * parsed.sparsity)).all()
    assert _error(w, new, h) < _error(w, start, h)
    assert not torch.equal(new_mask, mask)  # the masks moved, not only the kept weights


def test_admm_refuses_bad_input():
    w, h = _problem()
    mask = torch.zeros_like(w, dtype=torch.bool)
    with pytest.raises(ValueError, match="iterations=0"):
        admm_prune(w, mask, h, "2:4", iterations=0)
    with pytest.raises(ValueError, match="do not match"):
        admm_prune(w, mask[:, :8], h, "2:4")


def test_an_admm_layer_keeps_exact_n_m_in_every_linear():
    from drlightning.layer.prune import PruneSpec, prune_layer

    from .tiny import tiny_first_layer

    _, adapter, layout, inputs, layer = tiny_first_layer("llama")
    spec = PruneSpec(adapter, layout, "sparsegpt", "2:4", permute_residual=False, refit="admm")
    pruned, report = prune_layer(layer, inputs, spec)
    assert report["refit"]["method"] == "admm"
    assert report["refit"]["error_after"] < report["refit"]["error_before"]
    for role in adapter.roles(pruned):
        w = adapter.linear(pruned, role).weight.data
        assert ((w.reshape(-1, 4) != 0).sum(1) <= 2).all(), role
        assert report["sparsity"][role] == pytest.approx(0.5)
