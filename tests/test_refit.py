"""Refits of the kept weights with the mask fixed (``model.refit``)."""

from __future__ import annotations

import pytest
import torch

from drlightning.pruning import prune_weight
from drlightning.pruning.refit import refit_rows


def _problem(out: int = 12, width: int = 16, tokens: int = 40, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(width, tokens, generator=g, dtype=torch.float64)
    x[3] *= 5  # uneven channels, as real activations
    w = torch.randn(out, width, generator=g, dtype=torch.float64)
    return w, x, x @ x.T


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "50%"])
@pytest.mark.parametrize("damping", [1e-4, 0.1])
def test_row_refit_equals_a_float64_least_squares_reference(pattern, damping):
    w, x, h = _problem()
    _, mask = prune_weight(w, h, "sparsegpt", pattern)
    refit = refit_rows(w, mask, h, damping=damping, chunk=5)
    lam = damping * h.diagonal().mean()
    for i in range(w.shape[0]):  # slow reference: one damped least-squares problem per row
        kept = (~mask[i]).nonzero().squeeze(1)
        a = torch.cat([x[kept].T, lam.sqrt() * torch.eye(len(kept), dtype=torch.float64)])
        b = torch.cat([x.T @ w[i], torch.zeros(len(kept), dtype=torch.float64)])
        ref = torch.linalg.lstsq(a, b.unsqueeze(1)).solution.squeeze(1)
        torch.testing.assert_close(refit[i, kept], ref, rtol=1e-9, atol=1e-10)
    assert (refit[mask] == 0).all()  # pruned entries stay exactly zero


def test_row_refit_keeps_the_mask_and_lowers_the_output_error():
    w, _, h = _problem(seed=1)
    pruned, mask = prune_weight(w.float(), h.float(), "wanda", "2:4")
    refit = refit_rows(w.float(), mask, h.float(), damping=1e-6)
    assert refit.dtype == torch.float32
    assert (refit[mask] == 0).all() and (refit.reshape(-1, 4) != 0).sum(1).le(2).all()

    def error(v):
        d = (w - v.double())
        return float(((d @ h) * d).sum())
    assert error(refit) < error(pruned)


def test_row_refit_refuses_bad_input():
    w, _, h = _problem()
    mask = torch.zeros_like(w, dtype=torch.bool)
    with pytest.raises(ValueError, match="damping=0"):
        refit_rows(w, mask, h, damping=0)
    with pytest.raises(ValueError, match="do not match"):
        refit_rows(w, mask[:, :8], h)


@pytest.mark.parametrize("arch, method, permute", [("llama", "sparsegpt", False),
                                                   ("llama", "magnitude", True),
                                                   ("phi3", "wanda", False),
                                                   ("mixtral", "sparsegpt", False)])
def test_a_refitted_layer_keeps_the_pattern_and_refits_each_group_on_its_inputs(arch, method,
                                                                                 permute):
    """Layer level: every linear keeps exact 2:4; q/k/v (the first group, the same inputs with
    or without the refit) keep the plain pruner's mask and equal the row refit of their dense
    weights; the refit lowers the summed relative output error."""
    import copy
    from dataclasses import replace

    from drlightning.layer.capture import collect_hessians
    from drlightning.layer.prune import PruneSpec, prune_layer

    from .tiny import tiny_first_layer

    _, adapter, layout, inputs, layer = tiny_first_layer(arch)
    spec = PruneSpec(adapter, layout, method, "2:4", permute=permute, permute_residual=False)
    dense = copy.deepcopy(layer)
    plain, _ = prune_layer(copy.deepcopy(layer), inputs, spec)
    refitted, report = prune_layer(layer, inputs, replace(spec, refit="rows", refit_damping=0.01))
    assert report["refit"]["error_after"] < report["refit"]["error_before"]
    h = collect_hessians(dense, adapter, inputs, ("attn_in",))["attn_in"]
    for role in adapter.roles(refitted):
        w = adapter.linear(refitted, role).weight.data
        assert ((w.reshape(-1, 4) != 0).sum(1) <= 2).all(), role
    for role in ("q", "k") if permute else ("q", "k", "v"):  # a head order moves v's rows
        w0 = adapter.linear(dense, role).weight.data
        mask = adapter.linear(plain, role).weight.data == 0
        got = adapter.linear(refitted, role).weight.data
        assert (got[mask] == 0).all()
        torch.testing.assert_close(got, refit_rows(w0, mask, h, 0.01))


@pytest.mark.slow
def test_a_refit_run_saves_exact_patterns_and_reports_the_refit(tmp_path):
    import json

    from drlightning import load_pretrained
    from drlightning.cli import DRLightningCLI

    from .tiny import fit_args, save_tiny_dir

    src = save_tiny_dir(tmp_path / "tiny", "qwen2")
    run = tmp_path / "run"
    DRLightningCLI(args=fit_args(src, run, method="wanda", pattern="4:8", steps=3,
                                 extra=("--model.refit", "rows", "--model.refit_damping", "0.1")))
    results = json.loads((run / "results.json").read_text())
    assert results["rotation"]["refit"] == "rows" and results["rotation"]["refit_damping"] == 0.1
    for layer in results["layers"]:
        assert layer["refit"]["error_after"] < layer["refit"]["error_before"]
    model = load_pretrained(str(run / "model"))
    for name, p in model.named_parameters():
        if name.endswith("proj.weight") and ".layers." in name:
            assert ((p.reshape(-1, 8) != 0).sum(1) <= 4).all(), name


@pytest.mark.parametrize("change, message", [({"refit": "alps"}, "refit='alps'"),
                                             ({"refit_damping": 0}, "refit_damping=0"),
                                             ({"refit": "rows", "pattern": "none",
                                               "objective": "entropy"}, "prunes nothing")])
def test_refit_settings_are_checked(change, message):
    from drlightning.lightning.rotation_settings import RotationSettings

    with pytest.raises(ValueError, match=message):
        RotationSettings(**change)
