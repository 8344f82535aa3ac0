"""Perplexity of a model too large for memory: stream its layers from safetensors shards.

All evaluation windows go through layer ℓ before layer ℓ + 1 is loaded, so only one layer's weights
(plus the embeddings, the head and the windows' hidden states) are in memory. Batches, kwargs and
the order of the NLL sum are those of :func:`drlightning.eval.perplexity`, so the numbers are the
same as for the whole model in memory.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..export.sharded import OWNER, head_logits, turn_hidden
from ..layer.capture import capture_layer_inputs, run_layer
from .perplexity import eval_windows, perplexity_of_logits


@torch.no_grad()
def layerwise_perplexity(lw, checkpoint, tokens: dict[str, torch.Tensor], seqlen: int,
                         max_windows: dict[str, int | None], batch_size: int = 4,
                         progress: bool = True, offload: bool = False) -> dict[str, float]:
    """Perplexity on each dataset of ``tokens`` of the model stored in ``checkpoint``.

    ``lw`` is a :class:`~drlightning.models.shards.LayerwiseModel` (its embeddings and head are
    used; its layers are loaded from ``checkpoint`` one at a time). Boundary rotations
    (``drl_rotations.m{b}``) in the checkpoint are applied as the saved model applies them.
    ``offload`` keeps the windows' hidden states in pinned host memory between layers.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be ≥ 1")
    windows = {name: eval_windows(t, seqlen, max_windows.get(name)) for name, t in tokens.items()}
    streams = {name: capture_layer_inputs(lw.model, lw.adapter, w, batch_size, offload)
               for name, w in windows.items()}
    n = len(lw.layers)

    def boundary(b: int) -> torch.Tensor | None:
        key = f"{OWNER}.m{b}"
        return checkpoint.load([key], None, lw.device)[key] if key in checkpoint.weight_map else None

    for i in tqdm(range(n), desc="perplexity (layer by layer)", disable=not progress):
        layer = lw.load(i, lw.layer_tensors(i, checkpoint))
        m = boundary(i)
        for name, inputs in streams.items():
            streams[name] = run_layer(layer, turn_hidden(inputs, m) if m is not None else inputs)
        lw.release(i)
    m = boundary(n)
    out = {}
    for name, inputs in streams.items():
        inputs = turn_hidden(inputs, m) if m is not None else inputs
        out[name] = perplexity_of_logits(windows[name], batch_size, head_logits(lw, inputs),
                                         lw.device)
    return out
