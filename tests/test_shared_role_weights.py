"""Shared R1 with ``role_weights: measured``: every layer's group errors are measured on its dense
inputs and its pruned-mass divisors divided by weights normalised over all layers."""

from __future__ import annotations

import copy

import pytest
import torch

from drlightning.layer.capture import capture_layer_inputs
from drlightning.layer.role_weights import GROUP_OF, first_batches, group_errors, weights_across_layers
from drlightning.lightning.rotation_module import RotationModule
from drlightning.models import ROLES, HeadLayout, adapter_for
from drlightning.pipeline.options import MonitorOptions, RunOptions
from drlightning.pipeline.sequential import LayerLoop
from drlightning.pipeline.shared import dense_items
from drlightning.pipeline.trainers import default_trainer_factory
from drlightning.rotation import fold_norms

from .test_pipeline import windows
from .tiny import tiny_model


def test_weights_across_layers_count_costlier_layers_more():
    cheap = {"q,k,v": 0.1, "o": 0.1, "gate,up": 0.2, "down": 0.2}
    costly = {g: 2 * e for g, e in cheap.items()}
    w_cheap, w_costly = weights_across_layers([cheap, costly])
    for role in ROLES:  # errors add in squares: twice the error, four times the weight
        assert w_costly[role] == pytest.approx(4 * w_cheap[role])
        # mean e² over the 14 (layer, role) pairs: (4·0.01 + 3·0.04) · (1 + 4) / 14
        assert w_cheap[role] == pytest.approx(cheap[GROUP_OF[role]] ** 2 / (0.8 / 14))
    assert sum(sum(w.values()) for w in (w_cheap, w_costly)) == pytest.approx(2 * len(ROLES))
    assert weights_across_layers([{g: 0.0 for g in cheap}]) == [{r: 1.0 for r in ROLES}]


def _items(tmp_path, role_weights: str):
    model = tiny_model("llama")
    template = RotationModule(method="sparsegpt", pattern="2:4", steps=2, r1="shared",
                              objective="pruned_mass", role_weights=role_weights)
    opts = RunOptions(output_dir=str(tmp_path), monitor=MonitorOptions(tensorboard=False, progress=False))
    loop = LayerLoop(template.rotation, default_trainer_factory(opts, tmp_path), batch_size=2, progress=False)
    ids = windows(model)
    return model, template, ids, dense_items(model, adapter_for(model.config), ids, loop)


def test_measured_shared_items_divide_the_divisors_by_the_measured_weights(tmp_path):
    model, template, ids, measured = _items(tmp_path, "measured")
    equal = _items(tmp_path, "equal")[3]
    assert all(item.group_errors is None for item in equal)
    weights = weights_across_layers([item.group_errors for item in measured])
    for item, plain, w in zip(measured, equal, weights, strict=True):
        assert set(item.scale) == set(ROLES)
        for role in ROLES:
            assert item.scale[role] == pytest.approx(plain.scale[role] / w[role], rel=1e-6)
    # layer 0's errors, measured independently on its folded copy and the first calibration batch
    adapter, layout = adapter_for(model.config), HeadLayout.from_config(model.config)
    first = copy.deepcopy(adapter.decoder_layers(model)[0])
    fold_norms(first, adapter)
    inputs = capture_layer_inputs(model, adapter, ids, 2)
    expected = group_errors(first, first_batches(inputs, 1), template.rotation.prune_spec(adapter, layout))
    assert measured[0].group_errors == pytest.approx(expected, rel=1e-5)
    assert max(expected.values()) > 0
    assert torch.isfinite(torch.tensor([v for it in measured for v in it.scale.values()])).all()
