"""Every family end to end (float64 invariance of whole runs in both R1 modes, the exact pattern in
every saved weight, fused parts included) and the one-line refusals of unsupported families."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import Gemma2Config, GPT2Config, Qwen2MoeConfig

from drlightning.cli import DRLightningCLI
from drlightning.lora.module import target_names
from drlightning.models import HeadLayout, adapter_for
from drlightning.rotation import fold_norms

from .tiny import (
    ARCHS,
    MOE_ARCHS,
    check_float64_rotate_only_run,
    checkout_env,
    fit_args,
    save_tiny_dir,
    tiny_config,
    tiny_model,
)

NEW = ("qwen3", "phi3")
EVERY = [pytest.param(a, marks=pytest.mark.slow) if a not in NEW else a for a in ARCHS]
"""Every dense family; the ones other tests already run end to end are in the slow part (CI)."""
FUSED = {"phi3": {"self_attn.qkv_proj": ("q", "k", "v"), "mlp.gate_up_proj": ("gate", "up")}}


@pytest.mark.parametrize("arch", EVERY)
@pytest.mark.parametrize("r1", ["per_layer", "shared"])
def test_rotate_only_float64_run_keeps_the_dense_logits(arch, r1, tmp_path):
    src, run = check_float64_rotate_only_run(arch, r1, tmp_path)
    down = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(load_file(run / "model" / "model.safetensors")[down],
                           load_file(src / "model.safetensors")[down])  # it was rotated


def _parts(arch: str, name: str, weight: torch.Tensor, layout: HeadLayout) -> dict[str, torch.Tensor]:
    """A saved linear's weight per role (a fused one split by its rows)."""
    for path, roles in FUSED.get(arch, {}).items():
        if name.endswith(f"{path}.weight"):
            rows = layout.out_features()
            return dict(zip(roles, weight.split([rows[r] for r in roles]), strict=True))
    return {name.rsplit(".", 2)[-2].removesuffix("_proj"): weight}


@pytest.mark.parametrize("arch", EVERY)
@pytest.mark.parametrize("r1", ["per_layer", "shared"])
def test_two_four_run_keeps_the_pattern_in_every_saved_weight(arch, r1, tmp_path):
    src = save_tiny_dir(tmp_path / "tiny", arch)
    run = tmp_path / "run"
    DRLightningCLI(args=fit_args(src, run, method="wanda", pattern="2:4", steps=5,
                                 extra=("--model.r1", r1)))
    layout = HeadLayout.from_config(tiny_config(arch))
    tensors = load_file(run / "model" / "model.safetensors")
    linears = [n for n in tensors if n.startswith("model.layers.") and n.endswith("proj.weight")]
    assert len(linears) == 2 * (7 - sum(len(r) - 1 for r in FUSED.get(arch, {}).values()))
    seen = set()
    for name in linears:
        for role, part in _parts(arch, name, tensors[name], layout).items():
            groups = part.reshape(part.shape[0], -1, 4)
            assert ((groups != 0).sum(-1) <= 2).all(), f"{name} [{role}] breaks 2:4"
            assert (part == 0).float().mean() >= 0.5, f"{name} [{role}] is not pruned"
            seen.add(role)
    assert seen == {"q", "k", "v", "o", "gate", "up", "down"}
    assert all(tensors[n].count_nonzero() == tensors[n].numel() for n in tensors if "norm" in n
               and "layers" in n)


def test_phi3_roles_are_views_of_the_fused_rows():
    model = tiny_model("phi3")
    adapter, layout = adapter_for(model.config), HeadLayout.from_config(model.config)
    layer = adapter.decoder_layers(model)[0]
    qkv = layer.self_attn.qkv_proj.weight
    q, k, v = (adapter.linear(layer, r) for r in ("q", "k", "v"))
    assert q.weight.shape == (layout.n_heads * layout.head_dim, layout.hidden)
    assert k.weight.data_ptr() == qkv[q.weight.shape[0]:].data_ptr()
    with torch.no_grad():
        v.weight.copy_(torch.zeros_like(v.weight))
    assert qkv[-v.weight.shape[0]:].abs().sum() == 0 and qkv[:-v.weight.shape[0]].abs().sum() > 0
    gate, up = adapter.linear(layer, "gate"), adapter.linear(layer, "up")
    assert torch.equal(torch.cat([gate.weight, up.weight]), layer.mlp.gate_up_proj.weight)
    with pytest.raises(TypeError, match="in place"):
        gate.weight = torch.nn.Parameter(gate.weight.clone())
    assert target_names(model.config, None) == ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    assert target_names(model.config, ["q", "v", "up"]) == ["qkv_proj", "gate_up_proj"]


@pytest.mark.parametrize("config,family", [
    (Gemma2Config(), "Gemma 2"), (Qwen2MoeConfig(), "Qwen2-MoE"), (GPT2Config(), "GPT-2")])
def test_unsupported_families_get_one_line_naming_family_and_reason(config, family):
    with pytest.raises(ValueError) as err:
        adapter_for(config)
    message = str(err.value)
    assert "\n" not in message and family in message
    assert "drlightning supports llama, mistral, mixtral, phi3, qwen2, qwen3, qwen3_moe" in message


def test_unknown_architecture_says_what_is_supported():
    config = tiny_config("llama")
    config.model_type = "mamba2"
    with pytest.raises(ValueError, match=r"model_type='mamba2'.*no adapter.*supported: llama"):
        adapter_for(config)


def test_gemma2_refused_at_preflight_before_any_weights(tmp_path):
    src = tmp_path / "gemma2"
    Gemma2Config(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16).save_pretrained(src)
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "drlightning.cli", *fit_args(src, run)],
                          capture_output=True, text=True, env=checkout_env())
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2, proc.stderr
    assert len(errors) == 1 and "Gemma 2" in errors[0] and "after attention" in errors[0], errors
    assert "Traceback" not in proc.stderr
    assert not run.exists() or not any(run.iterdir())  # nothing written there


def test_norm_with_a_bias_is_refused():
    model = tiny_model("llama")
    adapter = adapter_for(model.config)
    layer = adapter.decoder_layers(model)[0]
    layer.input_layernorm.bias = torch.nn.Parameter(torch.zeros(64))
    with pytest.raises(ValueError, match="input_layernorm has a bias"):
        fold_norms(layer, adapter)


@pytest.mark.slow
@pytest.mark.parametrize("arch", NEW)
def test_layer_by_layer_run_equals_whole_model_run(arch, tmp_path):
    """Streaming layers from the shards (state_dict keys of the fused layout) gives the same model."""
    from .test_layerwise import LAYERWISE, _same, _sharded_tensors

    src = save_tiny_dir(tmp_path / "tiny", arch)
    whole, streamed = tmp_path / "whole", tmp_path / "streamed"
    DRLightningCLI(args=fit_args(src, whole, steps=3))
    DRLightningCLI(args=fit_args(src, streamed, steps=3, extra=LAYERWISE))
    _same(load_file(whole / "model" / "model.safetensors"), _sharded_tensors(streamed / "model"))


def test_readme_families_table_is_generated_from_the_adapters():
    """Every adapter is a tiny test config, and the README table is what the adapters say now."""
    from drlightning.models.adapters import ADAPTERS

    assert {a.name for a in ADAPTERS} == set(ARCHS) | set(MOE_ARCHS)
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "benchmarks/families.py", "check"], cwd=root,
                          capture_output=True, text=True, env=checkout_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
