"""model.role_weights: the pruned-mass objective weighted by the layer error each group causes."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest
import torch

from drlightning.cli import DRLightningCLI
from drlightning.layer.capture import collect_hessians, run_layer
from drlightning.layer.prune import GROUPS, PruneSpec, prune_layer
from drlightning.layer.role_weights import group_errors, measured_role_weights, weights_from_errors
from drlightning.layer.step import relative_error
from drlightning.lightning.layer_data import LayerDataModule
from drlightning.lightning.rotation_module import RotationModule
from drlightning.models import ROLES
from drlightning.rotation import fold_norms

from .tiny import fit_args, rotation_trainer, save_tiny_dir, tiny_first_layer


def test_weights_are_squared_group_errors_with_mean_one():
    w = weights_from_errors({"q,k,v": 0.1, "o": 0.1, "gate,up": 0.2, "down": 0.2})
    assert sum(w.values()) / len(w) == pytest.approx(1.0)
    assert w["q"] == w["k"] == w["v"] == w["o"] == pytest.approx(7 * 0.01 / 0.16)
    assert w["gate"] == w["up"] == w["down"] == pytest.approx(4 * w["o"])
    zero = dict.fromkeys(("q,k,v", "o", "gate,up", "down"), 0.0)
    assert weights_from_errors(zero) == dict.fromkeys(ROLES, 1.0)


def test_group_errors_match_a_slow_reference():
    _, adapter, layout, inputs, layer = tiny_first_layer()
    spec = PruneSpec(adapter, layout, "sparsegpt", "2:4")
    errors = group_errors(layer, inputs, spec)
    pruned, _ = prune_layer(copy.deepcopy(layer), inputs, spec)
    dense = run_layer(layer, inputs)
    for group in GROUPS:  # one layer per group, built by hand from the pruned weights
        mixed = copy.deepcopy(layer)
        for role in group:
            setattr(getattr(mixed, "self_attn" if role in ("q", "k", "v", "o") else "mlp"),
                    f"{role}_proj", copy.deepcopy(adapter.linear(pruned, role)))
        expected = relative_error(run_layer(mixed, inputs), dense, inputs)
        assert errors[",".join(group)] == pytest.approx(expected, rel=1e-12) and expected > 0
    assert group_errors(layer, inputs, PruneSpec(adapter, layout, "wanda", "none")) == dict.fromkeys(
        errors, 0.0)
    # with permutations on, the plain pruner's weights are measured (a permuted layer's weights
    # would not line up with the unpruned copy)
    assert group_errors(layer, inputs, replace(spec, permute=True)) == errors


def _fit(layer, adapter, layout, inputs, weights):
    module = RotationModule(method="wanda", pattern="2:4", steps=3, objective="pruned_mass")
    hessians = collect_hessians(layer, adapter, inputs, module.rotation.needed_stats())
    dm = LayerDataModule(0, layer, adapter, layout, inputs, hessians, 3, weights)
    rotation_trainer(module).fit(module, dm)
    return module


def test_explicit_measured_weights_need_them_in_a_hand_built_datamodule():
    _, adapter, layout, inputs, layer = tiny_first_layer()
    fold_norms(layer, adapter)
    module = RotationModule(method="wanda", pattern="2:4", steps=2, objective="pruned_mass",
                            role_weights="measured")
    dm = LayerDataModule(0, layer, adapter, layout, inputs,
                         collect_hessians(layer, adapter, inputs, module.rotation.needed_stats()), 2)
    with pytest.raises(ValueError, match=r"layer 0: role_weights='measured' but the LayerDataModule "
                                         r"carries no role weights; pass role_weights=measured_role"):
        rotation_trainer(module).fit(module, dm)
    assert dm.hessians is not None and module.A is None  # refused before anything was taken or built


def test_unit_weights_are_the_unweighted_objective_and_weights_divide_the_scale():
    _, adapter, layout, inputs, layer = tiny_first_layer()
    fold_norms(layer, adapter)
    plain = _fit(copy.deepcopy(layer), adapter, layout, inputs, None)
    unit = _fit(copy.deepcopy(layer), adapter, layout, inputs, dict.fromkeys(ROLES, 1.0))
    assert unit.mass_scale == plain.mass_scale and unit.track.best_loss == plain.track.best_loss
    for a, b in zip(plain.best_rotations(), unit.best_rotations(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    weights, _ = measured_role_weights(layer, inputs, PruneSpec(adapter, layout, "wanda", "2:4"))
    weighted = _fit(copy.deepcopy(layer), adapter, layout, inputs, weights)
    for role in ROLES:
        assert weighted.mass_scale[role] == pytest.approx(plain.mass_scale[role] / weights[role])


def test_bad_role_weights_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"role_weights='heavy'; allowed: auto, equal, measured"):
        RotationModule(role_weights="heavy")
    with pytest.raises(ValueError, match="role_weights='measured' weights the linears of the pruned-mass"):
        RotationModule(objective="entropy", role_weights="measured")
    with pytest.raises(ValueError, match="pattern='none' does not use it"):
        RotationModule(objective="pruned_mass", pattern="none", steps=0, role_weights="measured")


def test_auto_measures_where_the_weights_apply():
    assert RotationModule(role_weights="auto").rotation.role_weights_used == "measured"
    assert RotationModule(role_weights="auto", r1="shared").rotation.role_weights_used == "measured"
    for off in ({"objective": "entropy"}, {"steps": 0}, {"pattern": "none"}):
        module = RotationModule(role_weights="auto", **off)
        assert module.rotation.role_weights_used == "equal", off
        assert module.rotation.effective()["role_weights"] == "equal"


@pytest.mark.parametrize("mode", ["sequential", "parallel"])
def test_measured_weights_reach_results(tmp_path, mode):
    src = save_tiny_dir(tmp_path / "tiny", "llama")
    run = tmp_path / "run"
    DRLightningCLI(args=fit_args(src, run, steps=2, extra=(
        "--model.role_weights", "auto", "--run.launch.mode", mode)))
    res = json.loads((run / "results.json").read_text())
    for layer in res["layers"]:
        assert set(layer["role_weights"]) == set(ROLES)
        assert sum(layer["role_weights"].values()) / 7 == pytest.approx(1.0)
        assert set(layer["group_errors"]) == {",".join(g) for g in GROUPS}
    fingerprint = json.loads((run / "state" / "fingerprint.json").read_text())
    assert fingerprint["model"]["role_weights"] == "measured"
