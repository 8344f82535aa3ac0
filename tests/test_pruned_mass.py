"""The pruned-mass objective, the authors' released objective, and the rotation_score choice."""

from __future__ import annotations

import pytest
import torch

from drlightning.lightning.rotation_module import RotationModule
from drlightning.pruning import parse_pattern
from drlightning.rotation import frozen_layer, layer_entropy, random_orthogonal
from drlightning.rotation.objective import layer_pruned_mass
from drlightning.rotation.pruned_mass import pruned_mass

from .test_objective import LAYOUT, frozen_f64, random_layer, slow_entropy


def slow_pruned_mass(scores: torch.Tensor, pattern: str) -> float:
    """Per row: the N smallest of each group of M (N:M) or the k smallest of the row, as a loop."""
    p = parse_pattern(pattern)
    total = 0.0
    for row in scores.double().tolist():
        if p.is_nm:
            for g in range(0, len(row), p.m):
                total += sum(sorted(row[g:g + p.m])[: p.n])
        else:
            total += sum(sorted(row)[: int(len(row) * p.sparsity)])
    return total


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:4", "50%", "0.3"])
def test_pruned_mass_matches_a_loop(pattern):
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(9, 24, generator=g, dtype=torch.float64) ** 3
    value = pruned_mass(scores, parse_pattern(pattern)).item()
    assert value == pytest.approx(slow_pruned_mass(scores, pattern), rel=1e-12)


@pytest.mark.parametrize("pattern", ["2:4", "50%"])
def test_pruned_mass_gradient_is_finite_with_zero_weights(pattern):
    w = torch.zeros(4, 8)
    w[0, :3] = torch.tensor([1.0, -2.0, 0.5])
    w.requires_grad_()
    pruned_mass(w.square() * torch.rand(8), parse_pattern(pattern)).backward()
    assert torch.isfinite(w.grad).all()


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_layer_pruned_mass_is_the_sum_of_each_linear_removed_mass(method):
    weights, hessians = random_layer(seed=2)
    frozen = frozen_f64(weights, hessians, method)
    if method != "magnitude":  # down_proj's input factor, from its own Hessian
        frozen.c_down = frozen_layer(weights, hessians, method, LAYOUT).c_down.double()
    gen = torch.Generator().manual_seed(4)
    q = random_orthogonal(LAYOUT.hidden, generator=gen)
    r = random_orthogonal(LAYOUT.head_dim, (LAYOUT.n_kv_heads,), generator=gen)
    pattern = parse_pattern("2:4")
    from drlightning.rotation.objective import layer_scores

    scores = layer_scores(q, r, frozen, LAYOUT, method)
    if frozen.c_down is not None:
        scores["down"] = scores["down"] * frozen.c_down
    expected = {role: slow_pruned_mass(s, "2:4") for role, s in scores.items()}
    total, parts = layer_pruned_mass(q, r, frozen, LAYOUT, method, pattern)
    assert {k: v.item() for k, v in parts.items()} == pytest.approx(expected, rel=1e-10)
    # divided by its value at the identity, every linear counts 1 there
    eye_q = torch.eye(LAYOUT.hidden, dtype=torch.float64)
    eye_r = torch.eye(LAYOUT.head_dim, dtype=torch.float64).repeat(LAYOUT.n_kv_heads, 1, 1)
    _, at_eye = layer_pruned_mass(eye_q, eye_r, frozen, LAYOUT, method, pattern)
    scale = {k: v.item() for k, v in at_eye.items()}
    total, _ = layer_pruned_mass(eye_q, eye_r, frozen, LAYOUT, method, pattern, scale)
    assert total.item() == pytest.approx(7.0, rel=1e-12)


def test_low_memory_pruned_mass_has_the_same_loss_and_gradient():
    frozen = frozen_f64(*random_layer(seed=6), "sparsegpt")
    gen = torch.Generator().manual_seed(8)
    q0 = random_orthogonal(LAYOUT.hidden, generator=gen)
    r0 = random_orthogonal(LAYOUT.head_dim, (LAYOUT.n_kv_heads,), generator=gen)
    results = []
    for low in (False, True):
        q, r = q0.clone().requires_grad_(), r0.clone().requires_grad_()
        total, _ = layer_pruned_mass(q, r, frozen, LAYOUT, "sparsegpt", parse_pattern("2:4"),
                                     low_memory=low)
        total.backward()
        results.append((total.item(), q.grad, r.grad))
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-12)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(results[1][2], results[0][2], rtol=1e-9, atol=1e-12)


def released_objective(weights, hessians, q, r, seqlen: int, percdamp: float = 0.01) -> float:
    """The authors' released SparseGPT objective, transcribed (float64): Hessians averaged per
    sequence (seqlen × ours), λ added before inversion and again after; salience per linear
    W̃² / |diag(Rᵀ·Hinv·R)|; row entropies (plus column entropies for v and o; down by column)."""
    w = {k: v.double() for k, v in weights.items()}
    q, r = q.double(), r.double()
    hinv = {}
    for key, h in hessians.items():
        h = seqlen * h.double()
        lam = percdamp * torch.diagonal(h).mean()
        eye = torch.eye(h.shape[0], dtype=h.dtype)
        hinv[key] = torch.linalg.inv(h + lam * eye) + lam * eye
    b_v = torch.block_diag(*r.unbind(0))
    b_o = torch.block_diag(*r.repeat_interleave(LAYOUT.n_rep, dim=0).unbind(0))

    def salience(wt, m, rot):
        return wt ** 2 / torch.diagonal(rot.T @ m @ rot).abs()

    total = sum(slow_entropy(salience(w[k] @ q, hinv[key], q))
                for k, key in (("q", "attn_in"), ("k", "attn_in"), ("gate", "mlp_in"),
                               ("up", "mlp_in")))
    sv = salience(b_v.T @ w["v"] @ q, hinv["attn_in"], q)
    so = salience(q.T @ w["o"] @ b_o, hinv["o"], b_o)
    sd = (q.T @ w["down"]) ** 2 / torch.diagonal(hinv["down"]).abs()
    return (total + slow_entropy(sv) + slow_entropy(sv.T) + slow_entropy(so) + slow_entropy(so.T)
            + slow_entropy(sd.T))


def test_reference_quirks_reproduce_the_released_objective():
    weights, hessians = random_layer(seed=12)
    gen = torch.Generator().manual_seed(13)
    q = random_orthogonal(LAYOUT.hidden, generator=gen)
    r = random_orthogonal(LAYOUT.head_dim, (LAYOUT.n_kv_heads,), generator=gen)
    frozen = frozen_layer(weights, hessians, "sparsegpt", LAYOUT, quirks=True, hessian_scale=64)
    ours = layer_entropy(q.float(), r.float(), frozen, LAYOUT, "sparsegpt")[0].item()
    theirs = released_objective(weights, hessians, q, r, seqlen=64)
    assert ours == pytest.approx(theirs, rel=1e-5)


def test_rotation_score_is_independent_of_the_pruner():
    """method=sparsegpt with rotation_score=magnitude optimises the magnitude entropy."""

    from .test_rotation_module import layer_datamodule
    from .tiny import rotation_trainer

    module = RotationModule(method="sparsegpt", pattern="2:4", steps=3, rotation_score="magnitude",
                            objective="entropy")
    assert module.rotation.score == "magnitude" and module.rotation.needed_stats() == ()
    dm = layer_datamodule("sparsegpt", 3)
    rotation_trainer(module).fit(module, datamodule=dm)
    q, r = module.best_rotations()
    again = layer_entropy(q, r, frozen_layer(dm.frozen_weights(), None, "magnitude", dm.layout),
                          dm.layout, "magnitude")[0]
    assert again.item() == pytest.approx(module.track.best_loss, rel=1e-5)
    assert RotationModule(method="wanda", objective="pruned_mass").rotation.needed_stats() == (
        "attn_in", "o", "mlp_in", "down")


@pytest.mark.parametrize("kwargs, match", [
    ({"objective": "mse"}, "objective='mse'; allowed: auto, entropy, pruned_mass"),
    ({"rotation_score": "obs"}, "rotation_score='obs'; allowed: pruner, magnitude"),
    ({"permute": "yes"}, "permute='yes' must be true or false"),
    ({"guard": 1}, "guard=1 must be true or false"),
    ({"objective": "pruned_mass", "pattern": "none"}, "rotate-only runs need objective='entropy'"),
])
def test_bad_objective_settings_fail_early(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RotationModule(**kwargs)
