"""MergeRotations and PruneLayer on a hand-built Trainer do what drlightning's layer loop does."""

from __future__ import annotations

import copy

import pytest
import torch

from drlightning.callbacks import MergeRotations, PruneLayer
from drlightning.layer.capture import collect_hessians, run_layer
from drlightning.layer.step import layer_step
from drlightning.lightning.layer_data import LayerDataModule
from drlightning.lightning.rotation_module import RotationModule
from drlightning.models import ROLES
from drlightning.pipeline.options import MonitorOptions, RunOptions
from drlightning.pipeline.sequential import LayerLoop, fit_now
from drlightning.pipeline.trainers import default_trainer_factory
from drlightning.rotation import RotatedLayer, fold_norms

from .tiny import rotation_trainer, tiny_first_layer

STEPS = 4


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_callbacks_on_a_hand_built_trainer_match_the_layer_loop(method, tmp_path):
    _, adapter, layout, inputs, layer = tiny_first_layer()
    # equal weights: measured ones are the layer loop's (fit_rotation) to pass to the datamodule
    template = RotationModule(method=method, pattern="2:4", steps=STEPS, objective="pruned_mass",
                              permute=False, guard=False, role_weights="equal")

    # the layer loop's own step (its fit carries the same two callbacks)
    opts = RunOptions(output_dir=str(tmp_path), monitor=MonitorOptions(tensorboard=False, progress=False))
    loop = LayerLoop(template.rotation, default_trainer_factory(opts, tmp_path), batch_size=2, progress=False)
    expected, expected_report, _ = layer_step(
        0, copy.deepcopy(layer), inputs, run_layer(layer, inputs),
        template.rotation.prune_spec(adapter, layout), fit_now(loop))

    # a user's Trainer with the two callbacks
    folded = copy.deepcopy(layer)
    fold_norms(folded, adapter)
    hessians = collect_hessians(folded, adapter, inputs, template.rotation.needed_stats())
    dm = LayerDataModule(0, folded, adapter, layout, inputs, hessians, STEPS)
    module, merge = RotationModule.from_settings(template.rotation), MergeRotations()
    prune = PruneLayer(merge)
    rotation_trainer(module, [merge, prune]).fit(module, datamodule=dm)

    assert isinstance(merge.layer, RotatedLayer) and prune.layer is merge.layer
    assert merge.report["invariance_error"] < 1e-4
    assert merge.report["best_loss"] == expected_report["best_loss"]
    assert prune.report["sparsity"] == {role: 0.5 for role in ROLES}
    torch.testing.assert_close(prune.layer.rotation, expected.rotation, rtol=0, atol=0)
    for role in ROLES:
        torch.testing.assert_close(adapter.linear(prune.layer, role).weight,
                                   adapter.linear(expected, role).weight, rtol=0, atol=0)


def test_prune_layer_alone_prunes_the_datamodule_layer_unrotated(tmp_path):
    _, adapter, layout, inputs, layer = tiny_first_layer(windows=2, seqlen=16, seed=1)
    dm = LayerDataModule(0, layer, adapter, layout, inputs, None, 1)
    module = RotationModule(method="magnitude", pattern="2:4", steps=1, permute=False)
    prune = PruneLayer()
    rotation_trainer(module, [prune]).fit(module, datamodule=dm)
    assert prune.layer is layer and not isinstance(prune.layer, RotatedLayer)
    for role in ROLES:
        w = adapter.linear(layer, role).weight
        assert ((w.reshape(w.shape[0], -1, 4) == 0).sum(-1) >= 2).all(), role


def test_every_per_layer_fit_of_a_run_merges_and_prunes_in_the_callbacks(tmp_path, monkeypatch, capsys):
    """The product loop's fits carry MergeRotations and PruneLayer (their results are the layers
    kept); listing them in the config is said once and does not add them a second time."""
    from drlightning.cli import DRLightningCLI

    from .tiny import fit_args, save_tiny_dir

    calls = {"merge": [], "prune": []}
    merge_end, prune_end = MergeRotations.on_train_end, PruneLayer.on_fit_end

    def counting_merge(self, trainer, module):
        calls["merge"].append(trainer.datamodule.index)
        merge_end(self, trainer, module)

    def counting_prune(self, trainer, module):
        calls["prune"].append(trainer.datamodule.index)
        prune_end(self, trainer, module)

    monkeypatch.setattr(MergeRotations, "on_train_end", counting_merge)
    monkeypatch.setattr(PruneLayer, "on_fit_end", counting_prune)
    src = save_tiny_dir(tmp_path / "tiny", "llama")
    listed = ("--trainer.callbacks+=drlightning.callbacks.MergeRotations",
              "--trainer.callbacks+=drlightning.callbacks.PruneLayer")
    res = DRLightningCLI(args=fit_args(src, tmp_path / "run", steps=3, extra=listed)).results
    assert calls == {"merge": [0, 1], "prune": [0, 1]}  # once per layer: not added twice
    assert "lists MergeRotations, PruneLayer" in capsys.readouterr().out
    assert all(r["guard"] in ("rotated", "unrotated") and r["invariance_error"] < 1e-4
               for r in res["layers"])


def test_prune_layer_without_its_merge_on_a_merging_trainer_is_refused(tmp_path):
    _, adapter, layout, inputs, layer = tiny_first_layer(windows=2, seqlen=16, seed=1)
    folded = copy.deepcopy(layer)
    fold_norms(folded, adapter)
    dm = LayerDataModule(0, folded, adapter, layout, inputs, None, 1)
    module = RotationModule(method="magnitude", pattern="2:4", steps=1, permute=False)
    with pytest.raises(ValueError, match=r"pass the merge callback, PruneLayer\(merge\)"):
        rotation_trainer(module, [MergeRotations(), PruneLayer()]).fit(module, datamodule=dm)


def test_a_trainer_factory_that_drops_the_loop_callbacks_is_an_error(tmp_path):
    from drlightning.models import adapter_for
    from drlightning.pipeline.sequential import rotate_and_prune

    from .tiny import tiny_model

    settings = RotationModule(method="wanda", pattern="2:4", steps=1, role_weights="equal").rotation
    model = tiny_model("llama")
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    loop = LayerLoop(settings, lambda index, s, callbacks=(): rotation_trainer(
        RotationModule.from_settings(s)), batch_size=2, progress=False)
    with pytest.raises(RuntimeError, match="must put the given callbacks on the Trainer"):
        rotate_and_prune(model, adapter_for(model.config), ids, loop)
