"""Shared R1: one residual rotation absorbed into the whole model leaves a standard checkpoint of
the input's own architecture (no remote code, no extra tensors) with the same function."""

from __future__ import annotations

import json

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from transformers import AutoModelForCausalLM

from drlightning.lightning.shared_rotation import LayersDataModule, SharedRotationModule, layer_item
from drlightning.models.adapters import HeadLayout, adapter_for
from drlightning.pruning import parse_pattern
from drlightning.rotation import frozen_layer, layer_entropy
from drlightning.rotation.objective import ObjectiveSpec
from drlightning.rotation.orthogonal import random_orthogonal
from drlightning.rotation.shared import absorb_residual_rotation

from .tiny import ARCHS, folded_layer_weights, tiny_model

TOKENS = torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(0))


def _rotations(layout: HeadLayout, n_layers: int, dtype: torch.dtype, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    q = random_orthogonal(layout.hidden, generator=gen, dtype=dtype)
    r2 = [random_orthogonal(layout.head_dim, (layout.n_kv_heads,), generator=gen, dtype=dtype)
          for _ in range(n_layers)]
    return q, r2


@pytest.mark.parametrize("arch", ARCHS)
def test_absorbed_rotation_keeps_float64_logits(arch):
    model = tiny_model(arch, torch.float64)
    dense = model(TOKENS).logits
    adapter, layout = adapter_for(model.config), HeadLayout.from_config(model.config)
    names = sorted(n for n, _ in model.named_parameters())
    embed = model.model.embed_tokens.weight.clone()
    q, r2 = _rotations(layout, model.config.num_hidden_layers, torch.float64)
    report = absorb_residual_rotation(model, adapter, layout, q, r2)
    assert report["untied_embeddings"] == (arch == "llama")
    assert torch.allclose(model(TOKENS).logits, dense, rtol=0, atol=1e-10)
    assert torch.allclose(model.model.embed_tokens.weight, embed @ q, atol=1e-12)  # it moved
    assert not torch.allclose(model.model.embed_tokens.weight, embed, atol=1e-3)
    extra = {"lm_head.weight"}  # untied; nothing else added if arch == "llama" else set()
    assert sorted(n for n, _ in model.named_parameters()) == sorted(set(names) | extra)


@pytest.mark.parametrize("arch", ARCHS)
def test_saved_shared_model_loads_with_plain_transformers(arch, tmp_path):
    model = tiny_model(arch, torch.float32)
    dense = model(TOKENS).logits
    layout = HeadLayout.from_config(model.config)
    q, r2 = _rotations(layout, model.config.num_hidden_layers, torch.float32)
    absorb_residual_rotation(model, adapter_for(model.config), layout, q, r2)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert "auto_map" not in config and config["model_type"] == arch
    assert config["tie_word_embeddings"] is False
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert loaded.lm_head.weight.data_ptr() != loaded.model.embed_tokens.weight.data_ptr()
    logits = loaded(TOKENS).logits
    assert ((logits - dense).norm() / dense.norm()).item() < 1e-4


def test_identity_rotation_changes_only_the_folded_norms():
    model = tiny_model("qwen2", torch.float64)
    reference = tiny_model("qwen2", torch.float64)
    layout = HeadLayout.from_config(model.config)
    absorb_residual_rotation(model, adapter_for(model.config), layout,
                             torch.eye(layout.hidden, dtype=torch.float64))
    gamma = reference.model.norm.weight
    assert torch.equal(model.lm_head.weight, reference.lm_head.weight * gamma)
    assert torch.equal(model.model.embed_tokens.weight, reference.model.embed_tokens.weight)
    assert torch.equal(model.model.norm.weight, torch.ones_like(gamma))


def test_wrong_shapes_are_refused():
    model = tiny_model("llama")
    layout = HeadLayout.from_config(model.config)
    with pytest.raises(ValueError, match=r"shape \(32, 32\); expected \(64, 64\)"):
        absorb_residual_rotation(model, adapter_for(model.config), layout, torch.eye(32))
    with pytest.raises(ValueError, match="1 R2 rotations for 2 layers"):
        absorb_residual_rotation(model, adapter_for(model.config), layout, torch.eye(64),
                                 [torch.eye(16).expand(2, -1, -1)])


def _items(spec: ObjectiveSpec, seed: int = 0):
    """Frozen tensors of every layer of a tiny model (norms folded) with random Hessians."""
    layout, layers = folded_layer_weights(seed)
    gen = torch.Generator().manual_seed(seed)
    widths = {"attn_in": layout.hidden, "o": layout.n_heads * layout.head_dim,
              "mlp_in": layout.hidden, "down": layout.intermediate}
    frozen = []
    for weights in layers:
        xs = {k: torch.randn(256, n, generator=gen) for k, n in widths.items()}
        frozen.append(frozen_layer(weights, {k: x.T @ x / 256 for k, x in xs.items()}, spec.score,
                                   layout))
    return layout, frozen


ENTROPY = ObjectiveSpec("entropy", "sparsegpt")
MASS = ObjectiveSpec("pruned_mass", "wanda", parse_pattern("2:4"))


def test_layers_as_a_dataset_sum_the_per_layer_objectives_at_the_identity():
    layout, frozen = _items(ENTROPY)
    module = SharedRotationModule(layout, len(frozen), ENTROPY)
    eye = torch.eye(layout.head_dim).expand(layout.n_kv_heads, -1, -1)
    expected = sum(layer_entropy(torch.eye(layout.hidden), eye, f, layout, "sparsegpt")[0]
                   for f in frozen)
    loss, _, _ = module.summed_loss([layer_item(i, f, layout, ENTROPY) for i, f in enumerate(frozen)])
    assert torch.allclose(loss, expected, rtol=1e-6)
    layout, frozen = _items(MASS)  # each role's pruned mass is divided by its value at I
    items = [layer_item(i, f, layout, MASS) for i, f in enumerate(frozen)]
    loss, _, _ = SharedRotationModule(layout, len(frozen), MASS).summed_loss(items)
    assert loss.item() == pytest.approx(7 * len(frozen), rel=1e-6)


def _fit(module, data, steps: int = 12):
    from lightning import Trainer

    trainer = Trainer(max_steps=steps, max_epochs=-1, accelerator="cpu", devices=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, gradient_clip_val=1.0)
    trainer.fit(module, datamodule=data)
    return module


@pytest.mark.parametrize("spec", [ENTROPY, MASS], ids=["entropy", "pruned_mass"])
def test_shared_rotation_lowers_the_summed_objective(spec):
    layout, frozen = _items(spec)
    items = [layer_item(i, f, layout, spec) for i, f in enumerate(frozen)]
    module = _fit(SharedRotationModule(layout, len(items), spec), LayersDataModule(items))
    q, r = module.best_rotations()
    assert module.track.best_loss < module.track.initial_loss
    assert module.summed_loss(items)[0].item() >= module.track.best_loss - 1e-4  # best kept, not last
    assert q.shape == (layout.hidden, layout.hidden) and r.shape[0] == len(items)
    assert module.report()["orthogonality_error"] < 1e-5


def test_random_layer_subsets_per_step():
    layout, frozen = _items(ENTROPY)
    items = [layer_item(i, f, layout, ENTROPY) for i, f in enumerate(frozen)]
    data = LayersDataModule(items, layers_per_step=1, seed=3)
    assert [len(b) for b in data.train_dataloader()] == [1, 1]
    module = _fit(SharedRotationModule(layout, len(items), ENTROPY), data, steps=4)
    assert module.track.best is None  # subset losses are not comparable: the last iterate is used
    with pytest.raises(ValueError, match="layers_per_step=3 must be between 1 and the number of "
                                         "layers .2."):
        LayersDataModule(items, layers_per_step=3)


class _Grads(Callback):
    """Saves Q's and R2's gradient (after DDP's all-reduce) at every step, from rank 0."""

    def __init__(self, path) -> None:
        self.path, self.grads = path, []

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        self.grads.append((module.A.grad.clone(), module.B.grad.clone()))
        if trainer.global_rank == 0:
            torch.save(self.grads, self.path)


def _fit_processes(devices: int, path, steps: int = 2) -> list:
    from lightning import Trainer

    layout, frozen = _items(MASS)
    frozen = frozen + _items(MASS, seed=1)[1]  # 4 layers: 2 per process
    items = [layer_item(i, f, layout, MASS) for i, f in enumerate(frozen)]
    kwargs = {"strategy": "ddp_spawn"} if devices > 1 else {}
    Trainer(max_steps=steps, max_epochs=-1, accelerator="cpu", devices=devices, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            gradient_clip_val=1.0, callbacks=[_Grads(path)], **kwargs).fit(
        SharedRotationModule(layout, len(items), MASS), datamodule=LayersDataModule(items))
    return torch.load(path)


def test_two_gloo_processes_learn_the_same_rotation_as_one(tmp_path):
    """Each process serves 2 of the 4 layers; DDP all-reduces the gradients. Every step's gradient
    (so also the update before it) matches one process's. Longer runs are not compared entry by
    entry: Adam turns float noise in gradient entries near zero (summation order differs across
    processes) into full-size steps, so trajectories then agree only to about lr per entry."""
    one = _fit_processes(1, tmp_path / "one.pt")
    two = _fit_processes(2, tmp_path / "two.pt")
    assert len(one) == len(two) == 2
    for (a1, b1), (a2, b2) in zip(one, two, strict=True):
        assert a1.abs().sum() > 0 and b1.abs().sum() > 0
        assert torch.allclose(a2, a1, rtol=1e-4, atol=1e-6) and torch.allclose(b2, b1, rtol=1e-4, atol=1e-6)
