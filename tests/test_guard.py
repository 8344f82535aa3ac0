"""The guard: a layer is pruned with and without its rotation and the better one is kept."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from drlightning.cli import DRLightningCLI
from drlightning.layer.capture import capture_layer_inputs
from drlightning.layer.prune import PruneSpec, prune_layer
from drlightning.lightning.rotation_module import RotationModule
from drlightning.models import HeadLayout, adapter_for
from drlightning.pipeline.options import MonitorOptions, RunOptions
from drlightning.pipeline.sequential import LayerLoop, rotate_and_prune
from drlightning.pipeline.trainers import default_trainer_factory
from drlightning.rotation import random_orthogonal

from .test_pipeline import windows
from .tiny import fit_args, save_tiny_dir, tiny_model

ROLES = ("q", "k", "v", "o", "gate", "up", "down")


def two_of_four_model():
    """A tiny Llama whose linears are already exactly 2:4 sparse: the plain magnitude pruner removes
    only zeros (no error), while any dense rotation spreads the weights and makes pruning hurt."""
    model = tiny_model("llama")
    adapter = adapter_for(model.config)
    with torch.no_grad():
        for layer in adapter.decoder_layers(model):
            for role in ROLES:
                w = adapter.linear(layer, role).weight
                groups = w.reshape(w.shape[0], -1, 4)
                idx = groups.abs().argsort(dim=2)[:, :, :2]
                groups.scatter_(2, idx, 0.0)
    return model


def test_guard_keeps_the_unrotated_layer_when_the_rotation_is_harmful(tmp_path, monkeypatch):
    model = two_of_four_model()
    plain = copy.deepcopy(model)
    ids = windows(model)
    layout = HeadLayout.from_config(model.config)

    def harmful(self):  # a hand-made rotation: Haar-random, so every weight becomes dense
        g = torch.Generator().manual_seed(0)
        return (random_orthogonal(layout.hidden, generator=g, dtype=torch.float32),
                random_orthogonal(layout.head_dim, (layout.n_kv_heads,), generator=g,
                                  dtype=torch.float32))

    monkeypatch.setattr(RotationModule, "best_rotations", harmful)
    opts = RunOptions(output_dir=str(tmp_path),
                      monitor=MonitorOptions(tensorboard=False, progress=False))
    template = RotationModule(method="magnitude", pattern="2:4", steps=2, guard=True)
    loop = LayerLoop(template.rotation, default_trainer_factory(opts, tmp_path), batch_size=2, progress=False)
    reports = rotate_and_prune(model, adapter_for(model.config), ids, loop)
    for r in reports:
        assert r["guard"] == "unrotated"
        assert r["pruning_error_rotated"] > 0.01 > r["pruning_error_unrotated"]
        assert r["pruning_error"] == r["pruning_error_unrotated"]
    adapter = adapter_for(model.config)
    for kept, ref in zip(adapter.decoder_layers(model), adapter.decoder_layers(plain), strict=True):
        assert not hasattr(kept, "rotation")
        for role in ROLES:  # the 2:4 weights survive untouched: the plain pruner removed zeros
            torch.testing.assert_close(adapter.linear(kept, role).weight,
                                       adapter.linear(ref, role).weight, rtol=0, atol=0)


def test_without_the_guard_the_rotated_layer_is_kept_and_both_errors_reported(tmp_path, monkeypatch):
    model = two_of_four_model()
    layout = HeadLayout.from_config(model.config)
    q = random_orthogonal(layout.hidden, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    r = torch.eye(layout.head_dim).repeat(layout.n_kv_heads, 1, 1)
    monkeypatch.setattr(RotationModule, "best_rotations", lambda self: (q, r))
    opts = RunOptions(output_dir=str(tmp_path),
                      monitor=MonitorOptions(tensorboard=False, progress=False))
    template = RotationModule(method="magnitude", pattern="2:4", steps=2, guard=False)
    loop = LayerLoop(template.rotation, default_trainer_factory(opts, tmp_path), batch_size=2, progress=False,
                     unrotated_error=True)
    reports = rotate_and_prune(model, adapter_for(model.config), windows(model), loop)
    for rep in reports:
        assert rep["guard"] == "rotated"
        assert rep["pruning_error"] == rep["pruning_error_rotated"] > rep["pruning_error_unrotated"]


def test_guard_choice_reaches_results_report_and_plot(tmp_path):
    src = save_tiny_dir(tmp_path / "tiny", "llama")
    run = tmp_path / "run"
    DRLightningCLI(args=fit_args(src, run, steps=5, extra=("--model.guard", "true",
                                                            "--run.monitor.tensorboard", "true")))
    res = json.loads((run / "results.json").read_text())
    for layer in res["layers"]:
        assert layer["guard"] in ("rotated", "unrotated")
        assert layer["pruning_error"] == min(layer["pruning_error_rotated"],
                                             layer["pruning_error_unrotated"])
    report = (run / "report.md").read_text()
    assert "![per-layer pruning error](pictures/pruning_error.png)" in report
    assert "Guard: the rotated layer was kept in" in report
    png = (run / "pictures" / "pruning_error.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("pattern", ["2:4", "50%"])
def test_steps_zero_with_the_guard_is_the_plain_pruner(pattern, tmp_path):
    """Nothing to guard without a rotation: the plain pruner, bit for bit."""
    model = tiny_model("qwen2")
    ref = copy.deepcopy(model)
    ids = windows(model)
    adapter = adapter_for(model.config)
    opts = RunOptions(output_dir=str(tmp_path),
                      monitor=MonitorOptions(tensorboard=False, progress=False))
    template = RotationModule(method="wanda", pattern=pattern, steps=0, guard=True, permute=False)
    loop = LayerLoop(template.rotation, default_trainer_factory(opts, tmp_path), batch_size=2, progress=False)
    reports = rotate_and_prune(model, adapter, ids, loop)
    assert all("guard" not in r for r in reports)
    inputs = capture_layer_inputs(ref, adapter, ids, 2)
    layer = copy.deepcopy(adapter.decoder_layers(ref)[0])
    spec = PruneSpec(adapter, HeadLayout.from_config(ref.config), "wanda", pattern)
    pruned, _ = prune_layer(layer, inputs, spec)
    for role in ROLES:
        torch.testing.assert_close(adapter.linear(adapter.decoder_layers(model)[0], role).weight,
                                   adapter.linear(pruned, role).weight, rtol=0, atol=0)
