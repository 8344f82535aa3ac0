"""Tiny random models of every supported architecture, built in code (no downloads)."""

from __future__ import annotations

import types

import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
)

COMMON = dict(
    vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
)


def tiny_config(arch: str):
    """A small config; Qwen2 has q/k/v biases, Mistral a sliding window, Llama tied embeddings."""
    if arch == "llama":
        return LlamaConfig(**COMMON, tie_word_embeddings=True)
    if arch == "qwen2":
        return Qwen2Config(**COMMON, tie_word_embeddings=False)
    if arch == "mistral":
        return MistralConfig(**COMMON, sliding_window=16)
    raise KeyError(arch)


def tiny_model(arch: str, dtype: torch.dtype = torch.float32, seed: int = 0):
    """A randomly initialised causal LM with non-trivial norm weights and biases."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch), dtype=dtype,
                                             attn_implementation="eager")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    if dtype == torch.float64:
        exact_norms(model)
    return model.eval()


def _rmsnorm_in_input_dtype(self, hidden_states: torch.Tensor) -> torch.Tensor:
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * hidden_states * torch.rsqrt(variance + self.variance_epsilon)


def exact_norms(model) -> None:
    """HF RMSNorm upcasts to float32 even in float64 models (~1e-7 error); compute it in float64."""
    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm"):
            module.forward = types.MethodType(_rmsnorm_in_input_dtype, module)
