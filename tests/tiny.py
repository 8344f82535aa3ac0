"""Tiny random models of every supported architecture, built in code (no downloads)."""

from __future__ import annotations

import os
import types
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    MixtralConfig,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
    Qwen3MoeConfig,
)

ARCHS: tuple[str, ...] = ("llama", "qwen2", "mistral", "qwen3", "phi3")
"""Every dense architecture with an adapter, as tiny configs."""

MOE_ARCHS: tuple[str, ...] = ("mixtral", "qwen3_moe")
"""Every Mixture-of-Experts architecture with an adapter (Qwen3-MoE's layer 1 is dense)."""

COMMON = dict(
    vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
)


def tiny_config(arch: str):
    """A small config; Qwen2 has q/k/v biases, Mistral a sliding window, Llama tied embeddings,
    Qwen3 q/k norms and a head_dim unlike hidden/heads, Phi-3 fused qkv/gate_up and partial RoPE."""
    if arch == "llama":
        return LlamaConfig(**COMMON, tie_word_embeddings=True)
    if arch == "qwen2":
        return Qwen2Config(**COMMON, tie_word_embeddings=False)
    if arch == "mistral":
        return MistralConfig(**COMMON, sliding_window=16)
    if arch == "qwen3":
        return Qwen3Config(**COMMON, head_dim=24, tie_word_embeddings=False)
    if arch == "phi3":
        return Phi3Config(**COMMON, pad_token_id=0, partial_rotary_factor=0.5,
                          tie_word_embeddings=False)
    if arch == "mixtral":
        return MixtralConfig(**COMMON, num_local_experts=4, num_experts_per_tok=2)
    if arch == "qwen3_moe":
        return Qwen3MoeConfig(**COMMON, head_dim=24, num_experts=4, num_experts_per_tok=2,
                              moe_intermediate_size=32, mlp_only_layers=[1], norm_topk_prob=True,
                              tie_word_embeddings=False)
    raise KeyError(arch)


def tiny_model(arch: str, dtype: torch.dtype = torch.float32, seed: int = 0):
    """A randomly initialised causal LM with non-trivial norm weights and biases."""
    torch.manual_seed(seed)
    moe = {"experts_implementation": "eager"} if arch in MOE_ARCHS else {}
    model = AutoModelForCausalLM.from_config(tiny_config(arch), dtype=dtype,
                                             attn_implementation="eager", **moe)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    if dtype == torch.float64:
        exact_norms(model)
    return model.eval()


def tiny_first_layer(arch: str = "llama", windows: int = 4, seqlen: int = 32, seed: int = 0):
    """(model, adapter, layout, inputs of decoder layer 0 on random token windows, a copy of
    layer 0) of a tiny model — the usual start of a layer-level test."""
    import copy

    from drlightning.layer.capture import capture_layer_inputs
    from drlightning.models import HeadLayout, adapter_for

    model = tiny_model(arch)
    adapter, layout = adapter_for(model.config), HeadLayout.from_config(model.config)
    ids = torch.randint(0, model.config.vocab_size, (windows, seqlen),
                        generator=torch.Generator().manual_seed(seed))
    inputs = capture_layer_inputs(model, adapter, ids, 2)
    return model, adapter, layout, inputs, copy.deepcopy(adapter.decoder_layers(model)[0])


def folded_layer_weights(seed: int = 0):
    """(layout, every layer's weights by role) of a tiny Llama with its norms folded into the
    next linears: the frozen side of an objective test, Hessians left to the test."""
    from drlightning.models import HeadLayout, adapter_for
    from drlightning.models.adapters import ROLES
    from drlightning.rotation import fold_norms

    model = tiny_model("llama", torch.float32, seed=seed)
    adapter, layout = adapter_for(model.config), HeadLayout.from_config(model.config)
    layers = []
    for layer in adapter.decoder_layers(model):
        fold_norms(layer, adapter)
        layers.append({role: adapter.linear(layer, role).weight.detach().clone() for role in ROLES})
    return layout, layers


def _rmsnorm_in_input_dtype(self, hidden_states: torch.Tensor) -> torch.Tensor:
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * hidden_states * torch.rsqrt(variance + self.variance_epsilon)


def exact_norms(model) -> None:
    """HF RMSNorm upcasts to float32 even in float64 models (~1e-7 error); compute it in float64."""
    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm"):
            module.forward = types.MethodType(_rmsnorm_in_input_dtype, module)


def tiny_tokenizer(vocab_size: int = 320):
    """A byte-level BPE tokenizer trained in memory on a slice of the embedded text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from drlightning.data import load_documents

    docs = load_documents("embedded", "calibration")[:200]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


def save_tiny_dir(path, arch: str = "llama", dtype: torch.dtype = torch.float32, seed: int = 0,
                  **overrides):
    """A tiny model + tokenizer saved as a local Hugging Face directory (safetensors)."""
    tokenizer = tiny_tokenizer()
    config = tiny_config(arch)
    config.vocab_size = len(tokenizer)
    config.eos_token_id = tokenizer.eos_token_id
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def fit_args(model_dir, out_dir, *, method: str = "sparsegpt", pattern: str = "2:4",
             steps: int = 20, nsamples: int = 8, seqlen: int = 64, extra: tuple = ()) -> list[str]:
    """``drlightning fit`` arguments for a quick run on a tiny local model."""
    return ["fit", "--model.method", method, "--model.pattern", pattern, "--model.steps", str(steps),
            "--data.nsamples", str(nsamples), "--data.seqlen", str(seqlen), "--data.batch_size", "4",
            "--run.model", str(model_dir), "--run.output_dir", str(out_dir),
            "--run.monitor.progress", "false", "--run.monitor.tensorboard", "false",
            "--run.eval.max_windows", "2",
            *extra]


def rotation_trainer(module, callbacks=(), **kwargs):
    """A quiet CPU Trainer that fits ``module`` (a RotationModule) for its own number of steps, with
    the gradient clipping it asks for; no logger, checkpoints, bars or summary."""
    from lightning import Trainer

    return Trainer(max_steps=module.hparams.steps, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                   callbacks=list(callbacks), **module.rotation.trainer_clipping(), **kwargs)


def check_float64_rotate_only_run(arch: str, r1: str, tmp_path) -> tuple:
    """A whole rotate-only ``drlightning fit`` in float64 (10 entropy steps) keeps the dense
    model's logits within 1e-9: the per-layer output loads with drlightning and with remote code,
    the shared-R1 output as the input's own architecture with plain transformers. Returns
    (source dir, run dir)."""
    import json

    import drlightning
    from drlightning.cli import DRLightningCLI

    src = save_tiny_dir(tmp_path / "tiny", arch, dtype=torch.float64)
    run = tmp_path / "run"
    DRLightningCLI(args=fit_args(src, run, pattern="none", steps=10, extra=(
        "--run.dtype", "float64", "--model.r1", r1, "--model.objective", "entropy")))
    shared = r1 == "shared"
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["model_type"] == (arch if shared else f"drlightning_{arch}")
    assert shared == ("auto_map" not in config)
    if not shared:  # loads with remote code too (in-process transformers may pick the class
        # drlightning registered earlier; tests/test_export.py checks the remote module itself)
        model = AutoModelForCausalLM.from_pretrained(run / "model", trust_remote_code=True,
                                                     dtype=torch.float64)
        assert type(model).__name__ == "DRLightningForCausalLM"
    moe = {"experts_implementation": "eager"} if arch in MOE_ARCHS else {}
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(0))

    def logits(path, remote: bool) -> torch.Tensor:
        model = (drlightning.load_pretrained(path, dtype="float64") if remote else
                 AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64, **moe).eval())
        exact_norms(model)
        with torch.no_grad():
            return model(ids).logits

    dense, got = logits(src, remote=False), logits(run / "model", remote=not shared)
    assert ((got - dense).norm() / dense.norm()).item() <= 1e-9
    return src, run


def checkout_env(**extra: str) -> dict[str, str]:
    """The environment for a subprocess that must import this checkout's drlightning (first on
    PYTHONPATH), whatever an editable install elsewhere points at; ``extra`` variables added."""
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "PYTHONPATH": path, **extra}
