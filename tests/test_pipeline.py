"""The layer loop on tiny models: steps 0 equals the plain pruner exactly; rotation is merged."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch

from drlightning.lightning.rotation_module import RotationModule
from drlightning.lightning.rotation_settings import RotationSettings
from drlightning.models import adapter_for
from drlightning.pipeline.options import MonitorOptions, RunOptions
from drlightning.pipeline.sequential import LayerLoop, rotate_and_prune
from drlightning.pipeline.trainers import default_trainer_factory
from drlightning.pruning import prune_weight
from drlightning.rotation import RotatedLayer, merge_rotations

from .tiny import ARCHS, tiny_model

GROUPS = (("q", "k", "v"), ("o",), ("gate", "up"), ("down",))


def windows(model, n=4, seqlen=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (n, seqlen), generator=g)


@torch.no_grad()
def plain_sequential_pruner(model, ids, method, pattern, batch_size):
    """Independent reference: full-model forwards with a hook, layer by layer, group by group."""
    adapter = adapter_for(model.config)
    for layer in adapter.decoder_layers(model):
        for group in GROUPS:
            first = adapter.linear(layer, group[0])
            xs = []
            handle = first.register_forward_pre_hook(lambda m, a, xs=xs: xs.append(a[0].float()))
            for s in range(0, ids.shape[0], batch_size):
                model(ids[s:s + batch_size], use_cache=False)
            handle.remove()
            h = torch.zeros(first.in_features, first.in_features)
            n = 0
            for x in xs:
                x = x.reshape(-1, x.shape[-1])
                h.addmm_(x.T, x)
                n += x.shape[0]
            h *= 2.0 / n
            for role in group:
                lin = adapter.linear(layer, role)
                lin.weight.copy_(prune_weight(lin.weight, h, method, pattern)[0])


def run(model, ids, tmp_path: Path, **hp):
    opts = RunOptions(output_dir=str(tmp_path),
                      monitor=MonitorOptions(tensorboard=False, progress=False))
    template = RotationModule(**hp)
    loop = LayerLoop(template.rotation, default_trainer_factory(opts, tmp_path), batch_size=2, progress=False)
    return rotate_and_prune(model, adapter_for(model.config), ids, loop)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method,pattern", [("sparsegpt", "2:4"), ("wanda", "50%"),
                                            ("magnitude", "4:8")])
def test_steps_zero_reproduces_plain_pruner_exactly(arch, method, pattern, tmp_path):
    ours, ref = tiny_model(arch), tiny_model(arch)
    ids = windows(ours)
    run(ours, ids, tmp_path, method=method, pattern=pattern, steps=0, permute=False)
    plain_sequential_pruner(ref, ids, method, pattern, batch_size=2)
    for (name, a), (_, b) in zip(ours.named_parameters(), ref.named_parameters(), strict=True):
        assert torch.equal(a, b), name


def test_rotated_pipeline_merges_and_prunes(tmp_path):
    model = tiny_model("qwen2")
    ids = windows(model)
    reports = run(model, ids, tmp_path, method="sparsegpt", pattern="2:4", steps=5)
    adapter = adapter_for(model.config)
    for layer, report in zip(adapter.decoder_layers(model), reports, strict=True):
        assert isinstance(layer, RotatedLayer)
        assert report["best_loss"] <= report["initial_loss"]
        for role in ("q", "k", "v", "o", "gate", "up", "down"):
            w = adapter.linear(layer, role).weight
            zeros = (w.reshape(w.shape[0], -1, 4) == 0).sum(-1)
            assert (zeros >= 2).all(), role
    with torch.no_grad():
        logits = model(ids, use_cache=False).logits
    assert torch.isfinite(logits).all()


def test_merge_self_check_records_error_and_catches_a_broken_fusion(tmp_path, monkeypatch):
    model = tiny_model("llama")
    ids = windows(model)
    reports = run(model, ids, tmp_path, method="wanda", pattern="2:4", steps=3)
    assert all(0 <= r["invariance_error"] <= 1e-4 for r in reports)

    import drlightning.layer.step as merge_mod

    @torch.no_grad()
    def broken(layer, adapter, layout, q, r):
        o = adapter.linear(layer, "o").weight.clone()
        merge_rotations(layer, adapter, layout, q, r)
        adapter.linear(layer, "o").weight.copy_(o)  # forget to rotate o_proj

    monkeypatch.setattr(merge_mod, "merge_rotations", broken)
    with pytest.raises(RuntimeError, match="layer 0: merging the rotations changed"):
        run(tiny_model("llama"), ids, tmp_path, method="wanda", pattern="2:4", steps=3)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a GPU"))])
def test_offloaded_activations_give_the_same_layers(device, tmp_path):
    """Activations kept in host memory (pinned, one batch moved at a time) change nothing."""
    from drlightning.layer.capture import capture_layer_inputs

    model = tiny_model("llama").to(device)
    ids = windows(model)
    inputs = capture_layer_inputs(model, adapter_for(model.config), ids, 2, offload=True)
    assert inputs.device.type == device
    assert all(h.device.type == "cpu" for h in inputs.hidden)
    if device == "cuda":
        assert all(h.is_pinned() for h in inputs.hidden)
    kept = copy.deepcopy(model)
    make = default_trainer_factory(RunOptions(monitor=MonitorOptions(tensorboard=False, progress=False)),
                                   tmp_path)
    loop = LayerLoop(RotationSettings(steps=5), make, batch_size=2, progress=False)
    plain = rotate_and_prune(model, adapter_for(model.config), ids, loop)
    off = rotate_and_prune(kept, adapter_for(kept.config), ids, dataclasses.replace(loop, offload=True))
    assert [r["pruning_error"] for r in plain] == [r["pruning_error"] for r in off]
    for a, b in zip(model.parameters(), kept.parameters(), strict=True):
        assert torch.equal(a, b)
