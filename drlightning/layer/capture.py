"""Replay decoder layers on calibration windows: capture layer inputs, collect Hessians.

Layer call arguments (position embeddings, masks) are captured once per batch from the model's own
forward; ``past_key_values``/``use_cache`` are dropped so no replay ever attends to another window.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..models.adapters import INPUT_OF, STAT_ORDER, ArchitectureAdapter
from .experts import ExpertStats, routed_inputs

OBJECTIVE_STATS: tuple[str, ...] = ("attn_in", "o", "mlp_in")
"""Hessians the rotation objective needs (down_proj's input factor cancels; its I×I Hessian — 3.3 GB
in float32 at 70B — is only collected by the pruner, one group at a time)."""

_DROP_KWARGS = ("past_key_values", "past_key_value", "use_cache", "cache_position")


class _Stop(Exception):
    """Raised from a hook to end a forward pass early once everything needed was seen."""


@dataclass
class LayerInputs:
    """Hidden states entering one decoder layer, batch by batch, with the layer's call kwargs."""

    hidden: list[torch.Tensor]
    kwargs: list[dict] = field(default_factory=list)
    device: torch.device | None = None
    """Compute device when ``hidden`` is offloaded to host memory (None: hidden is used in place)."""
    held: int = 0
    """How many of the last batches are held-out windows: no fit (Hessians, rotations, role
    weights, the pruner) sees them; selections (the guard) are judged on them."""

    def fitted(self) -> LayerInputs:
        """The batches the fits may use (all of them without held-out windows)."""
        if not self.held:
            return self
        return LayerInputs(self.hidden[:-self.held], self.kwargs[:-self.held], self.device)

    def held_out(self) -> LayerInputs:
        """The held-out batches (all batches when none are held out)."""
        if not self.held:
            return self
        return LayerInputs(self.hidden[-self.held:], self.kwargs[-self.held:], self.device)

    def batches(self):
        """(hidden on the compute device, kwargs) per batch; offloaded batches move one at a time."""
        for hidden, kwargs in zip(self.hidden, self.kwargs, strict=True):
            if self.device is not None:
                hidden = hidden.to(self.device, non_blocking=True)
            yield hidden, kwargs

    def store(self, hidden: torch.Tensor) -> torch.Tensor:
        """A batch as kept between layers: in (pinned) host memory when offloaded."""
        if self.device is None or self.device.type == "cpu":
            return hidden
        return hidden.to("cpu").pin_memory()


@torch.no_grad()
def capture_layer_inputs(
    model: nn.Module, adapter: ArchitectureAdapter, windows: torch.Tensor, batch_size: int,
    offload: bool = False, held_windows: int = 0,
) -> LayerInputs:
    """Inputs of decoder layer 0 for all calibration windows (embeddings + call kwargs).

    ``offload`` keeps the hidden states in (pinned) host memory between layers and moves one batch
    at a time to the model's device (calibration activations of large models do not fit next to a
    layer on the GPU: 128 × 2048 tokens × 8192 × 2 bytes = 4.3 GB per copy at 70B).
    ``held_windows``: the last windows are held out, batched on their own (``LayerInputs.held``).
    """
    first = adapter.decoder_layers(model)[0]
    device = next(model.parameters()).device
    captured = LayerInputs(hidden=[], device=device if offload else None)

    def hook(_module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.hidden.append(captured.store(hidden.detach()))
        captured.kwargs.append({k: v for k, v in kwargs.items() if k not in _DROP_KWARGS})
        raise _Stop

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    cut = windows.shape[0] - held_windows
    if not 0 <= held_windows < windows.shape[0]:
        raise ValueError(f"held_windows={held_windows}: must leave at least one of the "
                         f"{windows.shape[0]} calibration windows for the fits")
    try:
        for part in (windows[:cut], windows[cut:]):
            for start in range(0, part.shape[0], batch_size):
                try:
                    model(part[start : start + batch_size].to(device), use_cache=False)
                except _Stop:
                    pass
    finally:
        handle.remove()
    captured.held = -(-held_windows // batch_size) if held_windows else 0
    return captured


@torch.no_grad()
def run_layer(layer: nn.Module, inputs: LayerInputs) -> LayerInputs:
    """The layer's outputs for every batch (the next layer's inputs)."""
    outs = []
    for hidden, kwargs in inputs.batches():
        out = layer(hidden, **kwargs)
        outs.append(inputs.store(out[0] if isinstance(out, tuple) else out))
    return LayerInputs(hidden=outs, kwargs=inputs.kwargs, device=inputs.device, held=inputs.held)


@torch.no_grad()
def collect_hessians(
    layer: nn.Module,
    adapter: ArchitectureAdapter,
    inputs: LayerInputs,
    keys: tuple[str, ...] = STAT_ORDER,
) -> dict[str, torch.Tensor]:
    """H = (2/N)·Σ x xᵀ (float32) for each requested distinct linear input of ``layer``.

    In a Mixture-of-Experts layer ``mlp_in`` and ``down`` are per expert (``mlp_in@e``,
    ``down@e``, from the tokens routed to expert e) and ``tokens`` counts them per expert. The
    forward pass stops right after the last requested input is seen.
    """
    unknown = set(keys) - set(STAT_ORDER)
    if unknown:
        raise ValueError(f"unknown statistics {sorted(unknown)}; allowed: {STAT_ORDER}")
    ordered = [k for k in STAT_ORDER if k in keys]
    moe = adapter.is_moe(layer)
    routed = tuple(k for k in ordered if moe and k in ("mlp_in", "down"))
    hooked = [k for k in ordered if k not in routed]
    role_of = {key: next(r for r, k in INPUT_OF.items() if k == key) for key in hooked}
    sums: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(hooked, 0)
    handles = []
    experts = ExpertStats(adapter.experts_block(layer), routed) if routed else None

    def make_hook(key: str, last: bool):
        def hook(_module, args):
            x = args[0].reshape(-1, args[0].shape[-1]).float()
            if key not in sums:
                sums[key] = torch.zeros(x.shape[1], x.shape[1], device=x.device)
            sums[key].addmm_(x.T, x)
            counts[key] += x.shape[0]
            if last:
                raise _Stop

        return hook

    def experts_hook(_module, args, kwargs):
        experts.update(*routed_inputs(args, kwargs))
        raise _Stop  # the experts block comes after every other input of the layer

    for i, key in enumerate(hooked):
        lin = adapter.linear(layer, role_of[key])
        handles.append(lin.register_forward_pre_hook(make_hook(key, i == len(ordered) - 1)))
    if experts is not None:
        handles.append(experts.block.register_forward_pre_hook(experts_hook, with_kwargs=True))
    try:
        for hidden, kwargs in inputs.batches():
            try:
                layer(hidden, **kwargs)
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
    out = {k: sums[k] * (2.0 / counts[k]) for k in hooked}
    return {**out, **experts.hessians()} if experts is not None else out
