"""The fast entropy objective equals a slow direct computation; optimisation lowers it."""

from __future__ import annotations

import math

import pytest
import torch

from drlightning.models import HeadLayout
from drlightning.rotation import (
    block_diagonal,
    frozen_layer,
    group_entropy,
    layer_entropy,
    random_orthogonal,
)

from .reference_entropy import frozen_float64

LAYOUT = HeadLayout(hidden=32, n_heads=4, n_kv_heads=2, head_dim=8, intermediate=48)


def random_layer(seed: int = 0, layout: HeadLayout = LAYOUT):
    g = torch.Generator().manual_seed(seed)
    d, hd, inter = layout.hidden, layout.head_dim, layout.intermediate
    shapes = {"q": (layout.n_heads * hd, d), "k": (layout.n_kv_heads * hd, d),
              "v": (layout.n_kv_heads * hd, d), "o": (d, layout.n_heads * hd),
              "gate": (inter, d), "up": (inter, d), "down": (d, inter)}
    weights = {r: torch.randn(*s, generator=g) for r, s in shapes.items()}

    def hess(n):
        x = torch.randn(4 * n, n, generator=g) @ torch.randn(n, n, generator=g)
        return 2 * x.T @ x / x.shape[0]

    hessians = {"attn_in": hess(d), "o": hess(layout.n_heads * hd), "mlp_in": hess(d),
                "down": hess(inter)}
    return weights, hessians


def slow_entropy(s: torch.Tensor) -> float:
    """Sum over rows of −Σ p log p, written as a plain loop."""
    total = 0.0
    for row in s:
        p = row / row.sum()
        total -= sum(float(x) * math.log(float(x)) for x in p if x > 0)
    return total


def slow_loss(weights, hessians, q, r, method, layout=LAYOUT):
    """Direct formula: form B_v, B_o, QᵀMQ and (H + λI)⁻¹ explicitly, float64."""
    w = {k: v.double() for k, v in weights.items()}
    q, r = q.double(), r.double()
    b_v, b_o = block_diagonal(r), block_diagonal(r, layout.n_rep)

    def m(h):
        h = h.double()
        if method == "wanda":
            return h
        lam = 0.01 * torch.diagonal(h).mean()
        return torch.linalg.inv(h + lam * torch.eye(h.shape[0], dtype=h.dtype))

    def factor(mat, rot):
        if method == "magnitude":
            return torch.ones(rot.shape[1], dtype=torch.float64)
        d = torch.diagonal(rot.T @ m(mat) @ rot)
        return d if method == "wanda" else 1 / d

    c_attn, c_mlp = factor(hessians["attn_in"], q), factor(hessians["mlp_in"], q)
    c_o = factor(hessians["o"], b_o)
    total = 0.0
    for role, c in (("q", c_attn), ("k", c_attn), ("gate", c_mlp), ("up", c_mlp)):
        total += slow_entropy((w[role] @ q) ** 2 * c)
    sv = (b_v.T @ w["v"] @ q) ** 2 * c_attn
    so = (q.T @ w["o"] @ b_o) ** 2 * c_o
    sd = (q.T @ w["down"]) ** 2
    total += slow_entropy(sv) + slow_entropy(sv.T) + slow_entropy(so) + slow_entropy(so.T)
    total += slow_entropy(sd.T)
    return total


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_fast_loss_matches_slow_reference(method):
    weights, hessians = random_layer()
    q = random_orthogonal(LAYOUT.hidden, generator=torch.Generator().manual_seed(3))
    r = random_orthogonal(LAYOUT.head_dim, (LAYOUT.n_kv_heads,), generator=torch.Generator().manual_seed(4))
    frozen = frozen_layer(weights, hessians, method, LAYOUT)
    fast, parts = layer_entropy(q.float(), r.float(), frozen, LAYOUT, method)
    slow = slow_loss(weights, hessians, q, r, method)
    assert abs(fast.item() - slow) / abs(slow) <= 1e-6
    assert set(parts) == {"q", "k", "v", "o", "gate", "up", "down"}


def test_quirk_objective_collapses_to_magnitude():
    """With LLM-sized activations (H entries ≫ 1) the authors' λ-after-inversion makes the
    SparseGPT factor nearly constant: the quirk loss sits at the magnitude loss, ours does not."""
    weights, hessians = random_layer()
    hessians = {k: 100.0 * h for k, h in hessians.items()}
    q = random_orthogonal(LAYOUT.hidden, generator=torch.Generator().manual_seed(3)).float()
    r = torch.eye(LAYOUT.head_dim).repeat(LAYOUT.n_kv_heads, 1, 1)
    correct = layer_entropy(q, r, frozen_layer(weights, hessians, "sparsegpt", LAYOUT), LAYOUT,
                            "sparsegpt")[0]
    quirk = layer_entropy(q, r, frozen_layer(weights, hessians, "sparsegpt", LAYOUT, quirks=True),
                          LAYOUT, "sparsegpt")[0]
    magnitude = layer_entropy(q, r, frozen_layer(weights, None, "magnitude", LAYOUT), LAYOUT,
                              "magnitude")[0]
    assert abs(quirk - magnitude) < abs(correct - magnitude)


def test_entropy_of_zero_scores_has_finite_gradient():
    s = torch.tensor([[0.0, 1.0, 3.0], [0.0, 0.0, 0.0]], requires_grad=True)
    e = group_entropy(s, dim=1)
    e.backward()
    assert torch.isfinite(e) and torch.isfinite(s.grad).all()
    p = torch.tensor([0.25, 0.75])
    assert e.item() == pytest.approx(-(p * p.log()).sum().item(), rel=1e-6)


def test_unknown_method_is_rejected():
    weights, hessians = random_layer()
    with pytest.raises(ValueError, match="allowed: magnitude, wanda, sparsegpt"):
        frozen_layer(weights, hessians, "obs", LAYOUT)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_benchmark_reference_loss_matches_the_fast_loss(method):
    """The plain yardstick of benchmarks/rotation_step.py computes the same loss and gradient."""
    from drlightning.rotation.objective import damped_inverse

    from .reference_entropy import reference_entropy

    weights, hessians = random_layer(seed=5)
    weights = {k: v.double() for k, v in weights.items()}
    hessians = {k: v.double() for k, v in hessians.items()}
    frozen = frozen_layer(weights, hessians, method, LAYOUT)
    frozen.weights = {k: v.double() for k, v in frozen.weights.items()}
    m_o = None
    if method != "magnitude":  # rebuild the frozen matrices in float64
        def m(h):
            return h if method == "wanda" else damped_inverse(h)

        frozen.m_attn, frozen.m_mlp, m_o = m(hessians["attn_in"]), m(hessians["mlp_in"]), m(hessians["o"])
        nh, hd = LAYOUT.n_heads, LAYOUT.head_dim
        idx = torch.arange(nh)
        frozen.m_o_blocks = m_o.reshape(nh, hd, nh, hd)[idx, :, idx, :].contiguous()
    g = torch.Generator().manual_seed(7)
    a0 = torch.eye(LAYOUT.hidden, dtype=torch.float64) + 0.3 * torch.randn(
        LAYOUT.hidden, LAYOUT.hidden, generator=g, dtype=torch.float64)
    b0 = torch.eye(LAYOUT.head_dim, dtype=torch.float64) + 0.3 * torch.randn(
        LAYOUT.n_kv_heads, LAYOUT.head_dim, LAYOUT.head_dim, generator=g, dtype=torch.float64)
    grads = []
    losses = []
    for fn in ("fast", "reference"):
        a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
        if fn == "fast":
            loss, _ = layer_entropy(torch.linalg.qr(a).Q, torch.linalg.qr(b).Q, frozen, LAYOUT, method)
        else:
            loss = reference_entropy(a, b, frozen, m_o, LAYOUT, method)
        loss.backward()
        losses.append(loss.item())
        grads.append((a.grad, b.grad))
    assert losses[0] == pytest.approx(losses[1], rel=1e-10)
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-8, atol=1e-10)


def frozen_f64(weights, hessians, method: str):
    """The frozen layer of ``LAYOUT`` in float64 (frozen_layer computes in float32)."""
    return frozen_float64(weights, hessians, method, LAYOUT)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_block_diagonal_r1_equals_the_dense_block_matrix(method):
    """Q given as k blocks gives the loss and gradient of the dense block-diagonal Q."""
    frozen = frozen_f64(*random_layer(seed=9), method)
    blocks = random_orthogonal(8, (4,), generator=torch.Generator().manual_seed(1))
    r = random_orthogonal(LAYOUT.head_dim, (LAYOUT.n_kv_heads,), generator=torch.Generator().manual_seed(2))
    qb = blocks.clone().requires_grad_()
    qd = block_diagonal(blocks).requires_grad_()
    fast, _ = layer_entropy(qb, r, frozen, LAYOUT, method)
    dense, _ = layer_entropy(qd, r, frozen, LAYOUT, method)
    fast.backward()
    dense.backward()
    assert fast.item() == pytest.approx(dense.item(), rel=1e-12)
    for i in range(4):
        sl = slice(8 * i, 8 * i + 8)
        torch.testing.assert_close(qb.grad[i], qd.grad[sl, sl], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("blocks", [1, 4])
def test_low_memory_objective_has_the_same_loss_parts_and_gradient(method, blocks):
    """Per-role checkpointing (recompute in backward) changes memory, not numbers (float64)."""
    frozen = frozen_f64(*random_layer(seed=11), method)
    gen = torch.Generator().manual_seed(3)
    q0 = (random_orthogonal(8, (4,), generator=gen) if blocks == 4
          else random_orthogonal(LAYOUT.hidden, (), generator=gen))
    r0 = random_orthogonal(LAYOUT.head_dim, (LAYOUT.n_kv_heads,), generator=gen)
    results = []
    for low in (False, True):
        q, r = q0.clone().requires_grad_(), r0.clone().requires_grad_()
        total, parts = layer_entropy(q, r, frozen, LAYOUT, method, low_memory=low)
        total.backward()
        results.append((total.item(), {k: v.item() for k, v in parts.items()}, q.grad, r.grad))
    (t0, p0, gq0, gr0), (t1, p1, gq1, gr1) = results
    assert t1 == pytest.approx(t0, rel=1e-12)
    assert p1 == pytest.approx(p0, rel=1e-12)
    torch.testing.assert_close(gq1, gq0, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gr1, gr0, rtol=1e-9, atol=1e-12)
