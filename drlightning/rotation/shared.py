"""One residual rotation Q for the whole model, absorbed into its weights (shared R1).

With a single Q the residual stream is h·Q everywhere, so no layer needs an entry or exit
rotation: the embeddings become E·Q, every layer is merged as in per-layer mode (norms folded,
input-side W·Q, output-side Qᵀ·W, R2 inside attention), the final norm is folded into lm_head and
lm_head becomes W·Q. RMSNorm commutes with Q once its weight is 1, so the result is a model of the
input's own architecture and function, with no extra tensors. Tied embeddings are untied (the two
matrices differ after folding the final norm).
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.adapters import ArchitectureAdapter, HeadLayout, _get
from .fusion import fold_norms, merge_rotations, rotation_storage_dtype


def untie_embeddings(model: nn.Module, adapter: ArchitectureAdapter) -> bool:
    """Give lm_head its own copy of tied input embeddings; returns whether they were tied."""
    embed, head = _get(model, adapter.embed), _get(model, adapter.lm_head)
    tied = head.weight is embed.weight or head.weight.data_ptr() == embed.weight.data_ptr()
    if tied:
        head.weight = nn.Parameter(embed.weight.detach().clone(), requires_grad=False)
    model.config.tie_word_embeddings = False
    if hasattr(model.config, "get_text_config"):
        model.config.get_text_config().tie_word_embeddings = False
    return tied


@torch.no_grad()
def absorb_residual_rotation(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    layout: HeadLayout,
    q: torch.Tensor,
    r2: list[torch.Tensor] | None = None,
) -> dict:
    """Rotate ``model``'s residual stream by ``q`` (hidden × hidden) and merge each layer's R2
    (``r2[ℓ]``: n_kv_heads × head_dim × head_dim; identity when ``None``) into its weights.

    Returns what changed beyond the weights (``{"untied_embeddings": bool}``). The model's
    function is unchanged up to rounding; weight math runs in at least float32.
    """
    layers = adapter.decoder_layers(model)
    if q.shape != (layout.hidden, layout.hidden):
        raise ValueError(f"shared rotation has shape {tuple(q.shape)}; expected "
                         f"({layout.hidden}, {layout.hidden})")
    if r2 is not None and len(r2) != len(layers):
        raise ValueError(f"{len(r2)} R2 rotations for {len(layers)} layers")
    eye = torch.eye(layout.head_dim, dtype=q.dtype).expand(layout.n_kv_heads, -1, -1)
    for i, layer in enumerate(layers):
        fold_norms(layer, adapter)
        merge_rotations(layer, adapter, layout, q, eye if r2 is None else r2[i])
    return absorb_ends(model, adapter, q)


@torch.no_grad()
def absorb_ends(model: nn.Module, adapter: ArchitectureAdapter, q: torch.Tensor) -> dict:
    """Embeddings E·Q; final norm folded into lm_head, then lm_head W·Q (tied embeddings are
    untied first). For a model whose layers already work on the residual stream h·Q."""
    untied = untie_embeddings(model, adapter)
    embed, head = _get(model, adapter.embed), _get(model, adapter.lm_head)
    norm = _get(model, adapter.final_norm)
    for weight, scale in ((embed.weight, None), (head.weight, norm.weight)):
        dt = rotation_storage_dtype(weight.dtype)
        w = weight.to(dt) if scale is None else weight.to(dt) * scale.to(dt)
        weight.copy_((w @ q.to(dt).to(weight.device)).to(weight.dtype))
    norm.weight.fill_(1.0)
    return {"untied_embeddings": untied}
