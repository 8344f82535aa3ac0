"""Selections judged on calibration windows no fit saw (``model.holdout``)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from drlightning.cli import DRLightningCLI
from drlightning.layer.capture import LayerInputs, capture_layer_inputs, run_layer
from drlightning.layer.prune import PruneSpec
from drlightning.layer.step import prune_candidates
from drlightning.layer.walk import held_windows
from drlightning.lightning.rotation_settings import RotationSettings
from drlightning.models import HeadLayout, adapter_for

from .tiny import fit_args, save_tiny_dir, tiny_model


def test_held_windows_are_batched_on_their_own_and_disjoint():
    model = tiny_model("llama")
    adapter = adapter_for(model.config)
    ids = torch.randint(0, 96, (7, 16), generator=torch.Generator().manual_seed(0))
    inputs = capture_layer_inputs(model, adapter, ids, 4, held_windows=2)
    assert inputs.held == 1 and [h.shape[0] for h in inputs.hidden] == [4, 1, 2]
    assert [h.shape[0] for h in inputs.fitted().hidden] == [4, 1]
    whole = capture_layer_inputs(model, adapter, ids, 7)
    assert torch.equal(inputs.held_out().hidden[0], whole.hidden[0][5:])  # the last two windows
    assert held_windows(8, 0.25) == 2 and held_windows(8, 0.0) == 0 and held_windows(1, 0.5) == 0
    assert held_windows(3, 0.9) == 2  # one window always stays for the fits
    with pytest.raises(ValueError, match="holdout=1"):
        RotationSettings(holdout=1)


def _two_candidates():
    """A layer and a perturbed copy, and 'dense' outputs equal to the first candidate's on the
    fitted windows and to the second's on the held-out ones."""
    model = tiny_model("llama")
    adapter, layout = adapter_for(model.config), HeadLayout.from_config(model.config)
    ids = torch.randint(0, 96, (8, 16), generator=torch.Generator().manual_seed(1))
    inputs = capture_layer_inputs(model, adapter, ids, 2, held_windows=2)
    first = adapter.decoder_layers(model)[0]
    other = copy.deepcopy(first)
    with torch.no_grad():
        other.mlp.down_proj.weight.mul_(1.5)
    a, b = run_layer(first, inputs), run_layer(other, inputs)
    dense = LayerInputs(a.hidden[:-1] + b.hidden[-1:], inputs.kwargs, held=inputs.held)
    spec = PruneSpec(adapter, layout, "wanda", "none", guard=True, holdout=0.25)
    return {"rotated": first, "unrotated": other}, inputs, dense, spec


def test_the_guard_picks_on_held_out_windows():
    """'rotated' wins on the fitted windows (zero error) but loses on the held-out ones."""
    candidates, inputs, dense, spec = _two_candidates()
    _, report, out = prune_candidates(copy.deepcopy(candidates), inputs, dense, spec)
    assert report["guard"] == "unrotated" and report["judged_on"] == "held-out windows"
    assert report["pruning_error_fitted_rotated"] == 0 < report["pruning_error_rotated"]
    assert len(out.hidden) == len(inputs.hidden) and out.held == 1  # outputs of every window
    everything = LayerInputs(inputs.hidden, inputs.kwargs)  # judged on all windows instead
    dense_all = LayerInputs(dense.hidden, dense.kwargs)
    from dataclasses import replace

    _, report, _ = prune_candidates(copy.deepcopy(candidates), everything, dense_all,
                                    replace(spec, holdout=0.0))
    assert "judged_on" not in report and report["guard"] in ("rotated", "unrotated")


def test_too_little_text_keeps_the_plain_pruners_layer():
    candidates, inputs, dense, spec = _two_candidates()
    none_held = LayerInputs(inputs.hidden, inputs.kwargs)
    _, report, _ = prune_candidates(candidates, none_held, LayerInputs(dense.hidden, dense.kwargs),
                                    spec)
    assert report["guard"] == "unrotated" and "too little calibration text" in report["judged_on"]


def test_a_run_with_holdout_records_the_split_and_fits_without_it(tmp_path, monkeypatch):
    import drlightning.pipeline.sequential as sequential

    seen = []
    collect = sequential.collect_hessians

    def counting(layer, adapter, inputs, keys):
        seen.append(sum(h.shape[0] for h in inputs.hidden))
        return collect(layer, adapter, inputs, keys)

    monkeypatch.setattr(sequential, "collect_hessians", counting)
    src = save_tiny_dir(tmp_path / "tiny", "qwen2")
    run = tmp_path / "run"
    DRLightningCLI(args=fit_args(src, run, steps=3, extra=("--model.holdout", "0.25")))
    results = json.loads((run / "results.json").read_text())
    cal = results["calibration"]
    assert cal["held_out_windows"] == [6, 7] and cal["fitted_windows"] == list(range(6))
    assert cal["held_out_ppl"] > 1  # the finished model judged on the windows no fit saw
    assert seen and set(seen) == {6}  # the objective's Hessians: the 6 fitted windows only
    for layer in results["layers"]:
        assert layer["judged_on"] == "held-out windows"
        assert {"pruning_error_rotated", "pruning_error_fitted_rotated"} <= set(layer)
