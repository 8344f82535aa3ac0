"""Shard-wise export of a layer-by-layer run: one safetensors shard per decoder layer, written from
the run state, while a probe window checks the merged boundaries against the per-layer rotations."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..atomic import write_dir_atomically
from ..layer.capture import LayerInputs, capture_layer_inputs, run_layer
from ..models.adapters import _get
from ..models.expert_layout import to_saved
from ..rotation import RotatedLayer
from ..rotation.shared import absorb_ends
from . import modeling_drlightning as mdl
from .boundaries import _BoundaryConfig, boundary_matrix, merge_error
from .hf_dir import finish_dir

OWNER = "drl_rotations"
"""Attribute (state_dict prefix) of the boundary matrices in a saved drlightning model."""


def turn_hidden(inputs: LayerInputs, matrix: torch.Tensor) -> LayerInputs:
    """``h · M`` for every batch, exactly as the saved model's boundary pre-hook computes it."""
    hidden = [inputs.store(mdl.rotate_rows(h, matrix.to(h.device))) for h, _ in inputs.batches()]
    return LayerInputs(hidden=hidden, kwargs=inputs.kwargs, device=inputs.device)


@torch.no_grad()
def head_logits(lw, inputs: LayerInputs):
    """Logits of each batch in turn (final norm, then the output embedding), one batch at a time."""
    norm, head = _get(lw.model, lw.adapter.final_norm), lw.model.get_output_embeddings()
    for h, _ in inputs.batches():
        yield head(norm(h))


def _rotated_layers(state, n: int) -> list[bool]:
    out = []
    for i in range(n):
        with safe_open(str(state.layer_path(i)), framework="pt") as fh:
            out.append("rotation" in fh.keys())
    return out


def _outer_tensors(lw) -> dict[str, torch.Tensor]:
    """Weights outside the decoder layers (a tied head is stored once, as the embedding)."""
    seen, out = set(), {}
    for name, t in lw.model.state_dict().items():
        if name.startswith(lw.layer_prefix) or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        out[name] = t.detach().cpu().contiguous()
    return out


@torch.no_grad()
def save_layerwise_dir(lw, state, path: Path, rotation_dtype: str, probe: torch.Tensor,
                       tolerance: float, progress: bool = True,
                       shared: torch.Tensor | None = None) -> dict:
    """Write the finished run in ``state`` to ``path`` shard by shard (one layer in memory).

    Returns the ``drl_*`` config fields and ``boundary_merge_error``: the relative logit change on
    ``probe`` (1, T) between the per-layer rotations and the merged boundaries; above
    ``tolerance`` nothing is written and the error is raised. With a ``shared`` rotation (every
    layer's Q) no boundary is written: Q is absorbed into the embeddings and lm_head instead, and
    the directory is a standard checkpoint (the probe then checks that absorption).
    """
    n = len(lw.layers)
    rotated = _rotated_layers(state, n)
    boundaries = [b for b in range(n + 1) if (b > 0 and rotated[b - 1]) or (b < n and rotated[b])]
    fields = _BoundaryConfig(boundaries, rotation_dtype, lw.model.config.hidden_size,
                             lw.adapter).fields() if boundaries and shared is None else {}
    rdt = mdl.ROTATION_DTYPES[rotation_dtype]
    files = [f"model-{k + 1:05d}-of-{n + 1:05d}.safetensors" for k in range(n + 1)]
    result: dict = {}

    def write(tmp: Path) -> None:
        weight_map, total = {}, 0
        wrapped = plain = capture_layer_inputs(lw.model, lw.adapter, probe, 1)
        prev = None
        for i in tqdm(range(n), desc="export", disable=not progress):
            tensors, q, _ = state.layer_tensors(i)
            layer = lw.load(i, tensors)
            out = {f"{lw.layer_prefix}{i}.{k}": v.contiguous()
                   for k, v in to_saved(lw.adapter, tensors).items()}  # experts one by one
            m = boundary_matrix(prev, q) if shared is None else None
            if shared is not None:  # Q at the entry (in the embeddings), identity in between
                plain = turn_hidden(plain, shared.to(rdt)) if i == 0 else plain
            elif m is not None:
                out[f"{OWNER}.m{i}"] = m = m.to(rdt).contiguous()
                plain = turn_hidden(plain, m)
            wrapped = run_layer(RotatedLayer(layer, q.to(lw.device)) if q is not None else layer,
                                wrapped)
            plain = run_layer(layer, plain)
            save_file(out, str(tmp / files[i]), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(out, files[i]))
            total += sum(t.numel() * t.element_size() for t in out.values())
            lw.release(i)
            prev = q
        m = boundary_matrix(prev, None) if shared is None else None
        if shared is not None:  # the exit Qᵀ, only to compare logits with the original head
            plain = turn_hidden(plain, shared.T.to(rdt))
            result["boundary_merge_error"] = merge_error(next(head_logits(lw, wrapped)),
                                                         next(head_logits(lw, plain)), tolerance)
            result.update(absorb_ends(lw.model, lw.adapter, shared.to(lw.device)))
        out = _outer_tensors(lw)
        if shared is None and m is not None:
            out[f"{OWNER}.m{n}"] = m = m.to(rdt).contiguous()
            plain = turn_hidden(plain, m)
        save_file(out, str(tmp / files[n]), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(out, files[n]))
        total += sum(t.numel() * t.element_size() for t in out.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        lw.model.config.save_pretrained(tmp)
        if getattr(lw.model, "generation_config", None) is not None:
            lw.model.generation_config.save_pretrained(tmp)
        finish_dir(tmp, lw.model, lw.tokenizer, fields)
        if shared is None:
            result["boundary_merge_error"] = merge_error(next(head_logits(lw, wrapped)),
                                                         next(head_logits(lw, plain)), tolerance)

    write_dir_atomically(path, write)
    return {**fields, **result}
