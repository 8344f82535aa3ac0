"""Random orthogonal R1/R2 fused into every layer leave the model's function unchanged."""

from __future__ import annotations

import pytest
import torch

from drlightning.models import HeadLayout, adapter_for
from drlightning.rotation import (
    RotatedLayer,
    fold_norms,
    merge_rotations,
    random_orthogonal,
)

from .tiny import ARCHS, MOE_ARCHS, tiny_model


def rotate_all_layers(model, seed: int = 1) -> None:
    adapter, layout = adapter_for(model.config), HeadLayout.from_config(model.config)
    gen = torch.Generator().manual_seed(seed)
    layers = adapter.decoder_layers(model)
    for i, layer in enumerate(layers):
        q = random_orthogonal(layout.hidden, generator=gen)
        r = random_orthogonal(layout.head_dim, (layout.n_kv_heads,), generator=gen)
        fold_norms(layer, adapter)
        merge_rotations(layer, adapter, layout, q, r)
        layers[i] = RotatedLayer(layer, q)


@pytest.mark.parametrize("arch", ARCHS + MOE_ARCHS)
def test_random_rotations_preserve_logits_float64(arch):
    model = tiny_model(arch, torch.float64)
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        dense = model(ids, use_cache=False).logits
        rotate_all_layers(model)
        rotated = model(ids, use_cache=False).logits
    rel = (rotated - dense).norm() / dense.norm()
    assert rel <= 1e-9, f"{arch}: relative logit error {rel:.3e}"


def test_wrong_rotation_breaks_invariance():
    """The check above can fail: merging R2 on v without the matching o change breaks logits."""
    model = tiny_model("llama", torch.float64)
    adapter, layout = adapter_for(model.config), HeadLayout.from_config(model.config)
    ids = torch.randint(0, model.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        dense = model(ids, use_cache=False).logits
        layer = adapter.decoder_layers(model)[0]
        q = torch.eye(layout.hidden, dtype=torch.float64)
        r = random_orthogonal(layout.head_dim, (layout.n_kv_heads,))
        w_o = adapter.linear(layer, "o").weight.clone()
        merge_rotations(layer, adapter, layout, q, r)
        adapter.linear(layer, "o").weight.copy_(w_o)
        broken = model(ids, use_cache=False).logits
    assert (broken - dense).norm() / dense.norm() > 1e-3
