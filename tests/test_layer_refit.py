"""The whole-layer refit (``model.refit: layer``): masks kept, the best held-out iterate kept."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from drlightning.layer.capture import LayerInputs, run_layer
from drlightning.layer.prune import PruneSpec, prune_layer
from drlightning.layer.step import prune_candidates, relative_error
from drlightning.lightning.layer_refit import refit_layer

from .tiny import tiny_first_layer


def _held(inputs: LayerInputs, held: int = 1) -> LayerInputs:
    return LayerInputs(inputs.hidden, inputs.kwargs, inputs.device, held=held)


def _pruned(arch: str, pattern: str = "2:4"):
    _, adapter, layout, inputs, layer = tiny_first_layer(arch, windows=6)
    inputs = _held(inputs)  # 3 batches of 2 windows: the last one held out
    dense_out = run_layer(layer, inputs)
    spec = PruneSpec(adapter, layout, "sparsegpt", pattern, permute_residual=False)
    pruned, _ = prune_layer(layer, inputs.fitted(), spec)
    return adapter, inputs, dense_out, pruned


def _zeros(layer, adapter) -> dict[str, torch.Tensor]:
    return {r: adapter.linear(layer, r).weight.data == 0 for r in adapter.roles(layer)}


@pytest.mark.parametrize("arch, pattern", [("llama", "2:4"), ("mixtral", "4:8"), ("qwen2", "50%")])
def test_the_layer_refit_keeps_every_mask_and_the_best_held_out_iterate(arch, pattern):
    adapter, inputs, dense_out, pruned = _pruned(arch, pattern)
    zeros = _zeros(pruned, adapter)
    before_fit = relative_error(run_layer(pruned, inputs.fitted()), dense_out.fitted(),
                                inputs.fitted())
    refitted, report = refit_layer(pruned, adapter, inputs, dense_out, steps=40, lr=1e-4)
    assert refitted is pruned and report["method"] == "layer" and report["steps"] >= 1
    for role, was_zero in _zeros(refitted, adapter).items():
        assert torch.equal(was_zero, zeros[role]), role  # exactly the pruner's zeros, no more
    n, m = {"2:4": (2, 4), "4:8": (4, 8), "50%": (None, None)}[pattern]
    if n:
        for role in adapter.roles(refitted):
            w = adapter.linear(refitted, role).weight.data
            assert ((w.reshape(-1, m) != 0).sum(1) <= n).all(), role
    held = relative_error(run_layer(refitted, inputs.held_out()), dense_out.held_out(),
                          inputs.held_out())  # an independent measurement, in float64
    assert held == pytest.approx(report["held_out_error_after"], rel=1e-4)
    assert report["held_out_error_after"] == min(report["curve"])
    assert report["held_out_error_after"] < report["held_out_error_before"]
    after_fit = relative_error(run_layer(refitted, inputs.fitted()), dense_out.fitted(),
                               inputs.fitted())
    assert after_fit < before_fit


def test_the_layer_refit_keeps_the_pruner_weights_when_every_step_is_worse_held_out():
    """Held-out targets = the pruned layer's own outputs: any step raises the held-out error
    (from 0), so the kept iterate is the start, bit for bit, though the fitted error fell."""
    adapter, inputs, dense_out, pruned = _pruned("llama")
    start = copy.deepcopy(pruned)
    own = run_layer(pruned, inputs)
    targets = LayerInputs(dense_out.hidden[:-1] + own.hidden[-1:], dense_out.kwargs,
                          dense_out.device, held=1)
    refitted, report = refit_layer(pruned, adapter, inputs, targets, steps=10, lr=1e-3)
    assert report["kept_pass"] == 0 and report["held_out_error_before"] == 0
    assert max(report["curve"][1:]) > 0 and report["steps"] >= 1
    for role in adapter.roles(refitted):
        assert torch.equal(adapter.linear(refitted, role).weight, adapter.linear(start, role).weight)


def test_without_held_out_windows_the_layer_refit_trains_nothing_and_says_so():
    adapter, inputs, dense_out, pruned = _pruned("llama")
    start = copy.deepcopy(pruned)
    bare = LayerInputs(inputs.hidden, inputs.kwargs, inputs.device)
    _, report = refit_layer(pruned, adapter, bare, dense_out, steps=5, lr=1e-3)
    assert "no held-out" in report["skipped"]
    for role in adapter.roles(pruned):
        assert torch.equal(adapter.linear(pruned, role).weight, adapter.linear(start, role).weight)


def test_the_guard_keeps_a_candidate_and_refits_it():
    """prune_candidates with refit='layer': the guard picks on the held-out windows, then the kept
    candidate is refitted; the report carries its refit and its refitted error."""
    _, adapter, layout, inputs, layer = tiny_first_layer("llama", windows=6)
    inputs = _held(inputs)
    dense_out = run_layer(layer, inputs)
    spec = PruneSpec(adapter, layout, "wanda", "2:4", guard=True, permute_residual=False,
                     refit="layer", refit_steps=5, refit_lr=1e-3)
    kept, report, out = prune_candidates({"a": layer, "b": copy.deepcopy(layer)}, inputs,
                                         dense_out, spec)
    assert report["refit"]["method"] == "layer" and report["judged_on"] == "held-out windows"
    assert report["pruning_error"] == pytest.approx(report["refit"]["held_out_error_after"],
                                                    rel=1e-4)
    plain, _ = prune_layer(copy.deepcopy(layer), inputs.fitted(), replace(spec, refit="none"))
    assert report["pruning_error"] <= relative_error(run_layer(plain, inputs.held_out()),
                                                     dense_out.held_out(), inputs.held_out())


@pytest.mark.parametrize("change, message", [({"refit_steps": 0}, "refit_steps=0"),
                                             ({"refit_lr": 0}, "refit_lr=0"),
                                             ({"refit": "svd"}, "refit='svd'")])
def test_layer_refit_settings_are_checked(change, message):
    from drlightning.lightning.rotation_settings import RotationSettings

    with pytest.raises(ValueError, match=message):
        RotationSettings(**change)


def test_a_layer_refit_without_held_out_windows_is_refused():
    from drlightning.lightning.rotation_settings import RotationSettings
    from drlightning.pipeline.options import RunOptions
    from drlightning.pipeline.setup import check_options

    with pytest.raises(ValueError, match="refit='layer'.*data.held_out"):
        check_options(RunOptions(), RotationSettings(refit="layer"))
    check_options(RunOptions(), RotationSettings(refit="layer"), held_out=2)  # accepted
    with pytest.raises(ValueError, match="run.dtype='bfloat16'"):
        check_options(RunOptions(dtype="bfloat16"), RotationSettings(refit="layer"), held_out=2)


def test_a_layer_refit_run_saves_exact_patterns_and_reports_each_refit(tmp_path):
    import json

    from drlightning import load_pretrained
    from drlightning.cli import DRLightningCLI

    from .tiny import fit_args, save_tiny_dir

    src = save_tiny_dir(tmp_path / "tiny", "llama")
    run = tmp_path / "run"
    DRLightningCLI(args=fit_args(src, run, method="sparsegpt", pattern="2:4", steps=3,
                                 extra=("--model.refit", "layer", "--model.refit_steps", "6",
                                        "--model.refit_lr", "0.001", "--data.held_out", "2")))
    results = json.loads((run / "results.json").read_text())
    assert results["rotation"]["refit"] == "layer" and results["rotation"]["refit_steps"] == 6
    for layer in results["layers"]:
        refit = layer["refit"]
        assert refit["held_out_error_after"] <= refit["held_out_error_before"]
        assert refit["held_out_error_after"] == pytest.approx(layer["pruning_error"], rel=1e-4)
    model = load_pretrained(str(run / "model"))
    for name, p in model.named_parameters():
        if name.endswith("proj.weight") and ".layers." in name:
            assert ((p.reshape(-1, 4) != 0).sum(1) <= 2).all(), name
