"""What drlightning says about architectures it does not rotate: one line naming the family, why,
and what is supported — at pre-flight, from the config alone, before any weights load."""

from __future__ import annotations

_POST_NORMS = ("puts an RMSNorm after attention and after the MLP, before the residual add; a "
               "rotation of the residual stream cannot be folded through those norms, so the "
               "rotated model would not compute the same function")
_LAYERNORM = ("uses LayerNorm with a bias (it subtracts the mean); the rotations need RMSNorm "
              "without a bias, which commutes with an orthogonal rotation once its scale is folded")
_PARALLEL = ("runs attention and the MLP in parallel from one LayerNorm with a bias; the "
             "rotations need pre-norm RMSNorm layers without biases")
_SHARED_EXPERT = ("has a shared expert with its own sigmoid gate beside the routed experts, which "
                  "this version does not rotate yet (Mixtral and Qwen3-MoE are supported)")
_MLA = ("uses multi-head latent attention (compressed keys and values): there is no v/o pair for "
        "R2 and no q/k/v block fed by the residual stream alone")

UNSUPPORTED: dict[str, tuple[str, str]] = {
    "gemma": ("Gemma", "scales its embeddings by √d and its RMSNorm computes x·(1+γ); this "
              "version has no adapter for that"),
    "gemma2": ("Gemma 2", _POST_NORMS),
    "gemma3": ("Gemma 3", _POST_NORMS),
    "gemma3_text": ("Gemma 3", _POST_NORMS),
    "olmo2": ("OLMo 2", _POST_NORMS),
    "phi": ("Phi-1/Phi-2", _PARALLEL),
    "gpt2": ("GPT-2", _LAYERNORM),
    "gpt_neox": ("GPT-NeoX/Pythia", _PARALLEL),
    "gptj": ("GPT-J", _PARALLEL),
    "falcon": ("Falcon", _PARALLEL),
    "opt": ("OPT", _LAYERNORM),
    "bloom": ("BLOOM", _LAYERNORM),
    "stablelm": ("StableLM", _LAYERNORM),
    "starcoder2": ("StarCoder2", _LAYERNORM),
    "cohere": ("Command-R (Cohere)", _PARALLEL),
    "qwen2_moe": ("Qwen2-MoE", _SHARED_EXPERT),
    "deepseek_v2": ("DeepSeek-V2", _MLA),
    "deepseek_v3": ("DeepSeek-V3", _MLA),
}
"""``config.model_type`` → (family name, why drlightning does not rotate it)."""


def refusal(model_type: object, supported: list[str]) -> str:
    """The one-line error for an architecture without an adapter."""
    allowed = ", ".join(supported)
    if model_type in UNSUPPORTED:
        family, why = UNSUPPORTED[model_type]
        return (f"unsupported architecture model_type={model_type!r} ({family}): it {why}; "
                f"drlightning supports {allowed}")
    return (f"unsupported architecture model_type={model_type!r}: drlightning has no adapter for "
            f"it; supported: {allowed} (pre-norm decoders with RMSNorm and a q/k/v/o attention "
            "block with a gated MLP)")
