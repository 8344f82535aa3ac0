"""N:M channel permutations: exact (logits unchanged), never lose importance, keep valid patterns."""

from __future__ import annotations

import copy
import itertools
from dataclasses import replace

import pytest
import torch

from drlightning.layer.capture import run_layer
from drlightning.layer.permute import permute_heads, permute_intermediate, permute_residual
from drlightning.layer.prune import PruneSpec, prune_layer
from drlightning.models import HeadLayout, adapter_for
from drlightning.pruning.permutation import balanced_order, nm_kept, nm_permutation, refine_order
from drlightning.rotation import fold_norms

from .tiny import ARCHS, tiny_first_layer, tiny_model


def slow_kept(scores: torch.Tensor, n: int, m: int) -> float:
    """Σ over rows and groups of the M−N largest scores, as a plain loop."""
    total = 0.0
    for row in scores.double().tolist():
        for g in range(0, len(row), m):
            total += sum(sorted(row[g:g + m], reverse=True)[: m - n])
    return total


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("folded", [True, False])
def test_permutations_leave_float64_logits_unchanged(arch, folded):
    model = tiny_model(arch, torch.float64)
    adapter, layout = adapter_for(model.config), HeadLayout.from_config(model.config)
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    ref = model(ids, use_cache=False).logits
    g = torch.Generator().manual_seed(1)
    layers = adapter.decoder_layers(model)
    for i in range(len(layers)):
        layer = layers[i]
        if folded:
            fold_norms(layer, adapter)
        layer = permute_residual(layer, adapter, torch.randperm(layout.hidden, generator=g))
        heads = torch.stack([torch.randperm(layout.head_dim, generator=g)
                             for _ in range(layout.n_kv_heads)])
        permute_heads(layer, adapter, layout, heads)
        permute_intermediate(layer, adapter, torch.randperm(layout.intermediate, generator=g))
        layers[i] = layer
    out = model(ids, use_cache=False).logits
    assert ((out - ref).norm() / ref.norm()).item() < 1e-12


def test_kept_importance_matches_a_loop_and_orders_are_permutations():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(7, 16, generator=g) ** 3 * torch.rand(16, generator=g) ** 2
    for n, m in ((2, 4), (4, 8), (1, 4)):
        assert nm_kept(scores, n, m) == pytest.approx(slow_kept(scores, n, m), rel=1e-12)
        order, report = nm_permutation(scores, n, m)
        assert sorted(order.tolist()) == list(range(16))
        assert report["kept_after"] == pytest.approx(slow_kept(scores[:, order], n, m), rel=1e-12)
        assert report["kept_after"] >= report["kept_before"]
    assert sorted(balanced_order(scores, 4).tolist()) == list(range(16))


@pytest.mark.parametrize("seed", range(4))
def test_refinement_never_lowers_the_kept_importance(seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(40, 32, generator=g) ** 4 * torch.rand(32, generator=g) ** 3
    for n, m in ((2, 4), (4, 8)):
        start = torch.randperm(32, generator=g)
        for passes in (1, 2, 5):
            order = refine_order(scores, start, n, m, max_passes=passes)
            assert nm_kept(scores[:, order], n, m) >= nm_kept(scores[:, start], n, m) - 1e-9


def test_permutation_spreads_crowded_columns_like_a_brute_force():
    """Four heavy columns crowd the first group of 4; the best of all groupings of 8 columns
    into two groups (brute force) spreads them, and so does the permutation."""
    g = torch.Generator().manual_seed(3)
    scores = torch.rand(5, 8, generator=g) * torch.tensor([9, 8, 7, 6, 1, 1, 1, 1.0])
    best = max(slow_kept(scores[:, list(a) + [c for c in range(8) if c not in a]], 2, 4)
               for a in itertools.combinations(range(8), 4))
    order, report = nm_permutation(scores, 2, 4)
    assert report["kept_after"] == pytest.approx(best, rel=1e-9)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_permuted_pruning_keeps_an_exact_pattern_and_records_its_choices(method):
    _, adapter, layout, inputs, layer = tiny_first_layer()
    spec = PruneSpec(adapter, layout, method, "2:4")
    plain, plain_report = prune_layer(copy.deepcopy(layer), inputs, spec)
    pruned, report = prune_layer(layer, inputs, replace(spec, permute=True))
    assert set(report["permutation"]) == {"residual", "heads", "intermediate"}
    for role in ("q", "k", "v", "o", "gate", "up", "down"):
        w = adapter.linear(pruned, role).weight
        zeros = (w.reshape(w.shape[0], -1, 4) == 0).sum(-1)
        assert (zeros >= 2).all(), role
        assert report["sparsity"][role] == pytest.approx(0.5)
    assert any("error_after" in choice for choice in report["permutation"].values())
    for choice in report["permutation"].values():
        if "error_after" in choice:  # an order was tried: kept exactly when it lowers the error
            assert choice["kept"] == (choice["error_after"] < choice["error_before"])
    # the decoder layer still runs and the unpermuted path is the plain pruner
    assert torch.isfinite(run_layer(pruned, inputs).hidden[0]).all()
    assert "permutation" not in plain_report


def test_unstructured_patterns_are_never_permuted():
    _, adapter, layout, inputs, layer = tiny_first_layer(windows=2, seqlen=16)
    _, report = prune_layer(layer, inputs, PruneSpec(adapter, layout, "wanda", "50%", permute=True))
    assert "permutation" not in report
