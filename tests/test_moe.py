"""Mixture-of-Experts (Mixtral, Qwen3-MoE): per-expert statistics against a slow reference, float64
invariance of whole runs in both R1 modes, every expert pruned and the router dense, experts no
token reaches pruned by magnitude, and the refusals of what is not supported yet."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from drlightning.cli import DRLightningCLI
from drlightning.layer.capture import capture_layer_inputs, collect_hessians
from drlightning.layer.prune import PruneSpec, prune_layer
from drlightning.lora.module import target_names
from drlightning.models import HeadLayout, adapter_for
from drlightning.models.expert_layout import to_memory, to_saved

from .tiny import MOE_ARCHS, check_float64_rotate_only_run, fit_args, save_tiny_dir, tiny_model


def _moe_layer(arch: str = "mixtral"):
    model = tiny_model(arch)
    adapter = adapter_for(model.config)
    ids = torch.randint(0, 96, (4, 32), generator=torch.Generator().manual_seed(0))
    inputs = capture_layer_inputs(model, adapter, ids, 2)
    return model, adapter, inputs, adapter.decoder_layers(model)[0]


def test_expert_hessians_equal_a_slow_reference():
    """Hessians per expert from the tokens the router sends it (a loop over tokens, float64)."""
    _, adapter, inputs, layer = _moe_layer()
    got = collect_hessians(layer, adapter, inputs, ("attn_in", "mlp_in", "down"))
    block, router = layer.mlp.experts, layer.mlp.gate
    xs = []
    handle = block.register_forward_pre_hook(lambda m, a: xs.append(a[0].detach().double()))
    for hidden, kwargs in inputs.batches():
        layer(hidden, **kwargs)
    handle.remove()
    x = torch.cat([t.reshape(-1, t.shape[-1]) for t in xs])
    chosen = torch.topk(x @ router.weight.double().T, 2, dim=-1).indices
    n = block.gate_up_proj.shape[0]
    assert int(got["tokens"].sum()) == 2 * x.shape[0] and (got["tokens"] > 0).all()
    for e in range(n):
        rows = [t for t in range(x.shape[0]) if e in chosen[t].tolist()]
        xe = x[rows]
        g, u = (xe @ block.gate_up_proj[e].double().T).chunk(2, dim=-1)
        h = torch.nn.functional.silu(g) * u
        assert got["tokens"][e] == len(rows)
        torch.testing.assert_close(got[f"mlp_in@{e}"].double(), 2 * xe.T @ xe / len(rows),
                                   rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got[f"down@{e}"].double(), 2 * h.T @ h / len(rows),
                                   rtol=1e-4, atol=1e-5)
    assert "mlp_in" not in got and "attn_in" in got


@pytest.mark.slow
@pytest.mark.parametrize("arch", MOE_ARCHS)
@pytest.mark.parametrize("r1", ["per_layer", "shared"])
def test_rotate_only_float64_run_keeps_the_dense_logits(arch, r1, tmp_path):
    check_float64_rotate_only_run(arch, r1, tmp_path)


@pytest.mark.parametrize("arch", MOE_ARCHS)
@pytest.mark.parametrize("r1", ["per_layer", "shared"])
def test_two_four_run_prunes_every_expert_and_leaves_the_router_dense(arch, r1, tmp_path):
    src = save_tiny_dir(tmp_path / "tiny", arch)
    run = tmp_path / "run"
    DRLightningCLI(args=fit_args(src, run, steps=5, extra=("--model.r1", r1)))
    tensors = load_file(run / "model" / "model.safetensors")
    experts = [n for n in tensors if ".experts." in n]
    routers = [n for n in tensors if n.endswith(("mlp.gate.weight", "block_sparse_moe.gate.weight"))]
    moe_layers = 2 if arch == "mixtral" else 1  # Qwen3-MoE's layer 1 is a dense MLP here
    assert len(experts) == moe_layers * 4 * 3 and len(routers) == moe_layers
    dense_src = load_file(src / "model.safetensors")
    for name in experts + [n for n in tensors if n.endswith("proj.weight") and "layers" in n]:
        w = tensors[name]
        assert ((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) <= 2).all(), f"{name} breaks 2:4"
        assert (w == 0).float().mean() >= 0.5, f"{name} is not pruned"
    for name in routers:
        assert tensors[name].count_nonzero() == tensors[name].numel()  # dense, never pruned
        assert not torch.equal(tensors[name], dense_src[name])  # but rotated
    layers = json.loads((run / "results.json").read_text())["layers"]
    assert set(layers[0]["sparsity"]) >= {f"{b}@{e}" for b in ("gate", "up", "down") for e in range(4)}


def test_an_expert_no_token_reaches_is_pruned_by_magnitude():
    model, adapter, inputs, layer = _moe_layer()
    router = layer.mlp.gate

    def never_expert_3(hidden):
        logits = torch.nn.functional.linear(hidden.reshape(-1, router.hidden_dim), router.weight)
        logits[:, 3] = float("-inf")
        top, index = torch.topk(torch.softmax(logits.float(), -1), router.top_k, dim=-1)
        return logits, (top / top.sum(-1, keepdim=True)).to(logits.dtype), index

    router.forward = never_expert_3
    before = layer.mlp.experts.down_proj[3].detach().clone()
    layout = HeadLayout.from_config(model.config)
    spec = PruneSpec(adapter, layout, "sparsegpt", "2:4")
    _, report = prune_layer(layer, inputs, spec)
    assert report["experts_without_tokens"] == [3] and "magnitude" in report["warning"]
    from drlightning.pruning import prune_weight

    expected = prune_weight(before, None, "magnitude", "2:4")[0]
    assert torch.equal(layer.mlp.experts.down_proj[3], expected)


def test_lora_targets_the_attention_of_moe_models():
    model = tiny_model("mixtral")
    assert target_names(model.config, None) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    with pytest.raises(ValueError, match="attention only"):
        target_names(model.config, ["q", "down"])


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_expert_layouts_convert_both_ways(arch):
    model = tiny_model(arch)
    adapter = adapter_for(model.config)
    held = {k: v.detach().clone() for k, v in adapter.decoder_layers(model)[0].state_dict().items()}
    saved = to_saved(adapter, held)
    prefix = adapter.saved_experts[0]
    assert f"{prefix}.experts.3.{adapter.saved_experts[3]}.weight" in saved
    assert not any(k.endswith("gate_up_proj") for k in saved)
    back = to_memory(adapter, saved)
    assert back.keys() == held.keys() and all(torch.equal(back[k], held[k]) for k in held)
    assert to_memory(adapter, held) is held  # already as held: unchanged


@pytest.mark.slow
@pytest.mark.parametrize("r1", ["per_layer", "shared"])
def test_layer_by_layer_moe_run_equals_whole_model_run(r1, tmp_path):
    from .test_layerwise import LAYERWISE, _same, _sharded_tensors

    src = save_tiny_dir(tmp_path / "tiny", "mixtral")
    whole, streamed = tmp_path / "whole", tmp_path / "streamed"
    extra = ("--model.r1", r1)
    DRLightningCLI(args=fit_args(src, whole, steps=3, extra=extra))
    DRLightningCLI(args=fit_args(src, streamed, steps=3, extra=(*extra, *LAYERWISE)))
    tensors = _sharded_tensors(streamed / "model")
    assert any(".experts.0.w1.weight" in k for k in tensors)  # saved one by one, as transformers
    _same(load_file(whole / "model" / "model.safetensors"), tensors)


@pytest.mark.parametrize("arch", MOE_ARCHS)
@pytest.mark.parametrize("method", ["sparsegpt", "wanda"])
def test_steps_zero_reproduces_a_sequential_expert_pruner_exactly(arch, method, tmp_path):
    """0 rotation steps (identity rotations merged) = pruning each layer's roles group by group,
    each expert with its own Hessian, on the outputs of the pruned layers before it."""
    from drlightning.layer.capture import run_layer

    from .test_pipeline import run, windows

    ours, ref = tiny_model(arch), tiny_model(arch)
    ids = windows(ours)
    run(ours, ids, tmp_path, method=method, pattern="2:4", steps=0, permute=False)
    adapter, layout = adapter_for(ref.config), HeadLayout.from_config(ref.config)
    spec = PruneSpec(adapter, layout, method, "2:4")
    inputs = capture_layer_inputs(ref, adapter, ids, 2)
    for layer in adapter.decoder_layers(ref):
        prune_layer(layer, inputs, spec)
        inputs = run_layer(layer, inputs)
    for (name, a), (_, b) in zip(ours.named_parameters(), ref.named_parameters(), strict=True):
        assert torch.equal(a, b), name
