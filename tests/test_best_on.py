"""Which iterate a rotation fit keeps (``model.best_on``): on the fitted or the held-out windows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from drlightning.cli import DRLightningCLI
from drlightning.lightning.rotation_module import RotationModule
from drlightning.lightning.rotation_settings import RotationSettings
from drlightning.pipeline.options import RunOptions
from drlightning.pipeline.setup import check_options, fingerprint
from drlightning.pruning import parse_pattern
from drlightning.rotation.objective import layer_scores
from drlightning.rotation.pruned_mass import pruned_mass

from .reference_entropy import frozen_float64
from .test_rotation_module import layer_datamodule
from .tiny import fit_args, rotation_trainer, save_tiny_dir


def _skewed_datamodule(held: bool):
    """A tiny layer whose fitted inputs load some channels heavily and whose 'held-out' inputs
    load the opposite ones: rotations fitted to the first make the second worse."""
    dm = layer_datamodule("wanda", 30)
    g = torch.Generator().manual_seed(3)
    n = dm.layout.hidden
    fitted, other = {}, {}
    for key in ("attn_in", "mlp_in"):
        d = torch.exp(torch.randn(n, generator=g) * 2)
        fitted[key], other[key] = torch.diag(d), torch.diag(d.flip(0))
    dm.hessians.update(fitted)
    if held:
        dm.held_hessians = {**dm.hessians, **other}
    return dm, {**dm.hessians, **other}


def _fit(held: bool) -> tuple[RotationModule, dict]:
    dm, held_hessians = _skewed_datamodule(held)
    weights = dm.frozen_weights()
    module = RotationModule(method="wanda", pattern="2:4", steps=30, lr=0.05,
                            objective="pruned_mass", role_weights="equal")
    rotation_trainer(module).fit(module, datamodule=dm)
    return module, {"weights": weights, "held": held_hessians, "layout": dm.layout}


def held_mass(q: torch.Tensor, r: torch.Tensor, data: dict) -> float:
    """Σ over roles of the pruned mass at (Q, R2) over that at the identity, float64, on the
    held-out Hessians (built here, not by the module)."""
    layout, pattern = data["layout"], parse_pattern("2:4")
    frozen = frozen_float64(data["weights"], data["held"], "wanda", layout)

    def parts(q, r):
        scores = layer_scores(q.double(), r.double(), frozen, layout, "wanda")
        return {role: float(pruned_mass(s * frozen.c_down if role == "down" else s, pattern))
                for role, s in scores.items()}

    eye_q = torch.eye(layout.hidden)
    eye_r = torch.eye(layout.head_dim).repeat(layout.n_kv_heads, 1, 1)
    at_eye, at_qr = parts(eye_q, eye_r), parts(q, r)
    return sum(at_qr[role] / at_eye[role] for role in at_eye)


def test_the_kept_iterate_is_the_lowest_on_held_out_windows():
    """Fitted alone, the last iterate is kept (the fitted objective falls throughout); with the
    held-out Hessians the identity (step 0) is kept, because every step makes them worse — and
    the reported held-out objective equals an independent float64 measurement."""
    fitted_only, _ = _fit(held=False)
    fitted_only.best_rotations()
    assert fitted_only.track.best_step == 30 and fitted_only.track.held_curve == []
    assert "best_on" not in fitted_only.report()

    module, data = _fit(held=True)
    q, r = module.best_rotations()
    curve = module.track.held_curve
    assert len(curve) == 31  # every step's iterate and the final one
    assert module.track.best_step == int(np.argmin(curve)) == 0
    assert torch.allclose(q, torch.eye(q.shape[0])) and torch.allclose(r, torch.eye(r.shape[-1]))
    report = module.report()
    assert report["best_on"] == "held_out" and report["held_out_best_loss"] == min(curve)
    assert report["held_out_final_loss"] > report["held_out_initial_loss"]
    assert report["best_loss"] == report["initial_loss"]  # the fitted objective at the kept step
    for step in (0, 30):  # the curve is the held-out objective, measured independently
        qs, rs = (torch.eye(q.shape[0]), torch.eye(r.shape[-1]).expand_as(r)) if step == 0 \
            else module.rotations()
        assert curve[step] == pytest.approx(held_mass(qs, rs, data), rel=1e-4)


def test_held_out_hessians_equal_to_the_fitted_ones_change_nothing():
    dm_a = layer_datamodule("sparsegpt", 12)
    dm_b = layer_datamodule("sparsegpt", 12)
    dm_b.held_hessians = {k: v.clone() for k, v in dm_b.hessians.items()}
    kept = []
    for dm in (dm_a, dm_b):
        module = RotationModule(method="sparsegpt", pattern="2:4", steps=12, lr=0.05,
                                role_weights="equal")
        rotation_trainer(module).fit(module, datamodule=dm)
        kept.append((module.best_rotations(), module.track.best_step))
    (qa, ra), step_a = kept[0]
    (qb, rb), step_b = kept[1]
    assert step_a == step_b and torch.equal(qa, qb) and torch.equal(ra, rb)


@pytest.mark.parametrize("settings, held, used", [
    ({}, True, "held_out"), ({}, False, "fitted"),
    ({"method": "magnitude"}, True, "fitted"),  # its score never looks at the inputs
    ({"r1": "shared"}, True, "held_out"), ({"r1": "shared"}, False, "fitted"),
    ({"steps": 0}, True, "fitted"),
])
def test_auto_resolves_to_held_out_where_it_can_act(settings, held, used):
    assert RotationSettings(best_on="auto", **settings).best_on_used(held) == used
    assert RotationSettings(**settings).best_on_used(held) == "fitted"  # the default


def test_bad_best_on_is_refused_early():
    with pytest.raises(ValueError, match="best_on='last'; allowed: auto, fitted, held_out"):
        RotationSettings(best_on="last")
    with pytest.raises(ValueError, match="model.best_on='held_out'.*data.held_out=0 hold none out"):
        check_options(RunOptions(), RotationSettings(best_on="held_out"), held_out=0)
    check_options(RunOptions(), RotationSettings(best_on="held_out"), held_out=2)


class _Data:
    def __init__(self, held_out: int) -> None:
        self.held_out = held_out

    def protocol(self) -> dict:
        return {"held_out": self.held_out}


def test_the_fingerprint_names_best_on_only_where_it_changes_the_results():
    """Runs without held-out windows keep the fingerprint they had (their run directories
    resume); with them the resolved choice is part of it."""
    settings = RotationSettings(best_on="auto")
    assert "best_on" not in fingerprint(settings, _Data(0), RunOptions())["model"]
    assert fingerprint(settings, _Data(2), RunOptions())["model"]["best_on"] == "held_out"
    assert "best_on" not in fingerprint(RotationSettings(), _Data(2), RunOptions())["model"]


def test_a_run_with_held_out_windows_keeps_every_layers_iterate_on_them(tmp_path):
    src = save_tiny_dir(tmp_path / "tiny", "llama")
    run = tmp_path / "run"
    DRLightningCLI(args=fit_args(src, run, method="wanda", steps=4,
                                 extra=("--data.held_out", "2", "--model.best_on", "auto")))
    layers = json.loads((run / "results.json").read_text())["layers"]
    for layer in layers:
        assert layer["best_on"] == "held_out"
        assert layer["held_out_best_loss"] <= layer["held_out_initial_loss"]
        assert 0 <= layer["best_step"] <= 4


def test_too_little_text_to_hold_out_keeps_the_fitted_choice(tmp_path):
    """One calibration window cannot be split: the fits keep their iterate on it (no held-out
    curve), as the guard keeps the plain pruner's layer."""
    src = save_tiny_dir(tmp_path / "tiny", "llama")
    run = tmp_path / "run"
    DRLightningCLI(args=fit_args(src, run, method="wanda", steps=3, nsamples=1,
                                 extra=("--model.holdout", "0.5", "--model.best_on", "held_out")))
    for layer in json.loads((run / "results.json").read_text())["layers"]:
        assert "best_on" not in layer and "too little calibration text" in layer["judged_on"]
