"""Weights of the linears in the pruned-mass objective, from the layer's real pruning error.

The objective counts every linear by its *relative* improvement (1.0 each at the identity), but a
layer's output error is not shared equally: on the default model the MLP (gate, up, down) makes
most of it, and after rotation the attention linears make little (docs/benchmarks.md, "Pruning
error by group of linears"). ``model.role_weights: measured`` prunes the unrotated layer first,
measures the layer's error with each group of linears pruned alone, e_g, and weights every linear
of group g by e_g² (relative to the mean: errors of independent groups add in squares).
"""

from __future__ import annotations

import copy
from dataclasses import replace

from torch import nn

from ..models.adapters import base_role
from .capture import LayerInputs, run_layer
from .prune import GROUPS, PruneSpec, prune_layer
from .step import relative_error

GROUP_OF: dict[str, str] = {role: ",".join(group) for group in GROUPS for role in group}
"""role → the name of its true-sequential group ("q,k,v", "o", "gate,up", "down"); an expert's
role is in its base role's group (all experts' gate/up are pruned as one group)."""


def first_batches(inputs: LayerInputs, n: int | None) -> LayerInputs:
    """The first ``n`` calibration batches (all of them for None)."""
    if n is None:
        return inputs
    return LayerInputs(hidden=inputs.hidden[:n], kwargs=inputs.kwargs[:n], device=inputs.device)


def group_errors(layer: nn.Module, inputs: LayerInputs, spec: PruneSpec) -> dict[str, float]:
    """The layer's error ‖pruned(X) − dense(X)‖ / ‖dense(X) − X‖ with each group of linears
    pruned alone (the others unpruned), after pruning a copy of ``layer`` with ``spec``'s method
    and pattern. Always without channel permutations: a permuted layer's weights are no longer in
    the order of the unpruned copy they are put into."""
    dense_out = run_layer(layer, inputs)
    pruned, _ = prune_layer(copy.deepcopy(layer), inputs, replace(spec, permute=False))
    errors = {}
    for group in spec.adapter.groups(layer):
        alone = copy.deepcopy(layer)
        for role in group:
            spec.adapter.linear(alone, role).weight.data.copy_(spec.adapter.linear(pruned, role).weight)
        name = GROUP_OF[base_role(group[0])]
        errors[name] = relative_error(run_layer(alone, inputs), dense_out, inputs)
    return errors


def weights_from_errors(errors: dict[str, float],
                        roles: tuple[str, ...] = tuple(GROUP_OF)) -> dict[str, float]:
    """w_role = e_g² of its group, divided by the mean over the layer's roles (all 1 if every
    group's error is 0)."""
    return weights_across_layers([errors], [roles])[0]


def weights_across_layers(errors: list[dict[str, float]],
                          roles: list[tuple[str, ...]] | None = None) -> list[dict[str, float]]:
    """Shared R1: w_{layer,role} = e_g² of its layer and group divided by the mean over every
    layer and role, so a layer whose pruning costs more counts more in the summed objective (one
    Q serves all layers; per layer, :func:`weights_from_errors` normalises each layer alone).
    ``roles``: each layer's roles (default the seven; an MoE layer has every expert's)."""
    roles = roles or [tuple(GROUP_OF)] * len(errors)
    raw = [{role: e[GROUP_OF[base_role(role)]] ** 2 for role in rs}
           for e, rs in zip(errors, roles, strict=True)]
    total = sum(sum(r.values()) for r in raw)
    mean = total / max(1, sum(len(r) for r in raw))
    return [{role: (v / mean if mean > 0 else 1.0) for role, v in r.items()} for r in raw]


def measured_role_weights(layer: nn.Module, inputs: LayerInputs, spec: PruneSpec,
                          batches: int | None = 1) -> tuple[dict[str, float], dict[str, float]]:
    """(weights per role, group errors) of ``layer``, pruned and measured on its first
    ``batches`` calibration batches (None: all; one batch is enough to rank the groups)."""
    errors = group_errors(layer, first_batches(inputs, batches), spec)
    return weights_from_errors(errors, spec.adapter.roles(layer)), errors
