"""A shared R1 keeps its iterate on held-out windows (``model.best_on: held_out``): the summed
objective from the held-out windows' Hessians chooses among the fit's iterates, as per layer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from lightning import Trainer

from drlightning.cli import DRLightningCLI
from drlightning.lightning.shared_rotation import LayersDataModule, SharedRotationModule, layer_item
from drlightning.pruning import parse_pattern
from drlightning.rotation import frozen_layer
from drlightning.rotation.objective import ObjectiveSpec

from .test_best_on import held_mass
from .tiny import fit_args, folded_layer_weights, save_tiny_dir

MASS = ObjectiveSpec("pruned_mass", "wanda", parse_pattern("2:4"))
STEPS = 30


def _skewed_layers():
    """Every layer of a tiny model (norms folded) with fitted Hessians that load some residual
    channels heavily and 'held-out' ones that load the opposite channels: a shared Q fitted to
    the first makes the second worse."""
    layout, folded = folded_layer_weights(0)
    gen = torch.Generator().manual_seed(3)
    widths = {"o": layout.n_heads * layout.head_dim, "down": layout.intermediate}
    layers = []
    for weights in folded:
        xs = {k: torch.randn(256, n, generator=gen) for k, n in widths.items()}
        common = {k: x.T @ x / 256 for k, x in xs.items()}
        fitted, held = dict(common), dict(common)
        for key in ("attn_in", "mlp_in"):
            d = torch.exp(torch.randn(layout.hidden, generator=gen) * 2)
            fitted[key], held[key] = torch.diag(d), torch.diag(d.flip(0))
        layers.append((weights, fitted, held))
    return layout, layers


def _fit(with_held: bool):
    layout, layers = _skewed_layers()
    items = [layer_item(i, frozen_layer(w, f, "wanda", layout), layout, MASS,
                        frozen_layer(w, h, "wanda", layout) if with_held else None)
             for i, (w, f, h) in enumerate(layers)]
    module = SharedRotationModule(layout, len(items), MASS, lr=0.05)
    Trainer(max_steps=STEPS, max_epochs=-1, accelerator="cpu", devices=1, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            gradient_clip_val=1.0).fit(module, datamodule=LayersDataModule(items))
    return module, layout, layers


def test_the_shared_fit_keeps_the_iterate_lowest_on_held_out_windows():
    """Fitted alone, the last iterate is kept; with the held-out tensors the identity (step 0),
    because Q makes them worse from the first step. The held-out curve equals an independent
    float64 measurement summed over the layers."""
    fitted_only, _, _ = _fit(with_held=False)
    assert fitted_only.track.best_step == STEPS and fitted_only.track.held_curve == []
    assert "best_on" not in fitted_only.report()

    module, layout, layers = _fit(with_held=True)
    q, r = module.best_rotations()
    curve = module.track.held_curve
    assert len(curve) == STEPS + 1  # every step's iterate and the final one
    assert module.track.best_step == int(np.argmin(curve)) == 0
    assert torch.allclose(q, torch.eye(layout.hidden))
    assert torch.allclose(r, torch.eye(layout.head_dim).expand_as(r))
    report = module.report()
    assert report["best_on"] == "held_out" and report["held_out_best_loss"] == min(curve)
    assert report["held_out_final_loss"] > report["held_out_initial_loss"]
    assert report["best_loss"] == report["initial_loss"]  # the fitted objective at the kept step
    last_q, last_r = module.rotations()
    for step, (qs, rs) in ((0, (torch.eye(layout.hidden), torch.eye(layout.head_dim).expand_as(r))),
                           (STEPS, (last_q, last_r))):
        expected = sum(held_mass(qs, rs[i], {"weights": w, "held": h, "layout": layout})
                       for i, (w, _, h) in enumerate(layers))
        assert curve[step] == pytest.approx(expected, rel=1e-4)


def test_a_shared_run_with_held_out_windows_keeps_its_iterate_on_them(tmp_path):
    src = save_tiny_dir(tmp_path / "tiny", "llama")
    run = tmp_path / "run"
    DRLightningCLI(args=fit_args(src, run, method="wanda", steps=4, extra=(
        "--model.r1", "shared", "--data.held_out", "2", "--model.best_on", "held_out")))
    results = json.loads((run / "results.json").read_text())
    shared = results["export"]["shared_rotation"]
    assert shared["best_on"] == "held_out" and 0 <= shared["best_step"] <= 4
    assert shared["held_out_best_loss"] <= shared["held_out_initial_loss"]
