"""A plain implementation of the paper's loss: an independent slow reference for
tests/test_objective.py and the yardstick of benchmarks/rotation_step.py.

Per linear it forms the rotated matrix QᵀMQ in full (d³ work, no sharing between linears that
read the same input), builds the block-diagonal R2 matrices densely and takes ``torch.linalg.qr``
of the raw parameters. It computes the same number as :func:`layer_entropy` (tested), only slower.
"""

from __future__ import annotations

import torch

from drlightning.models.adapters import HeadLayout
from drlightning.rotation import frozen_layer
from drlightning.rotation.entropy import group_entropy
from drlightning.rotation.objective import FrozenLayer

FROZEN_TENSORS = ("m_attn", "m_mlp", "m_o_blocks", "c_down")
"""The FrozenLayer fields beside ``weights`` that hold tensors (None where a method has none)."""


def frozen_float64(weights: dict, hessians: dict, method: str, layout: HeadLayout) -> FrozenLayer:
    """``frozen_layer`` from float64 copies, with every frozen tensor kept in float64
    (``frozen_layer`` itself computes in float32): the frozen side of a slow reference."""
    frozen = frozen_layer({k: v.double() for k, v in weights.items()},
                          {k: v.double() for k, v in hessians.items()}, method, layout)
    frozen.weights = {k: v.double() for k, v in frozen.weights.items()}
    for name in FROZEN_TENSORS:
        if getattr(frozen, name) is not None:
            setattr(frozen, name, getattr(frozen, name).double())
    return frozen


def _factor(m: torch.Tensor | None, rot: torch.Tensor, method: str) -> torch.Tensor | None:
    if m is None:
        return None
    d = torch.diagonal(rot.T @ m @ rot)
    return d if method == "wanda" else 1.0 / d


def _score(w: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    return w.square() if c is None else w.square() * c


def reference_entropy(a: torch.Tensor, b: torch.Tensor, frozen: FrozenLayer, m_o: torch.Tensor | None,
                      layout: HeadLayout, method: str) -> torch.Tensor:
    """Summed entropy for parameters A (d×d) and B (G×hd×hd); ``m_o`` is the full o-input matrix."""
    q = torch.linalg.qr(a).Q
    r = torch.linalg.qr(b).Q
    b_v = torch.block_diag(*r.unbind(0))
    b_o = torch.block_diag(*r.repeat_interleave(layout.n_rep, dim=0).unbind(0))
    w = frozen.weights
    total = torch.zeros((), dtype=a.dtype, device=a.device)
    for role, m in (("q", frozen.m_attn), ("k", frozen.m_attn), ("gate", frozen.m_mlp),
                    ("up", frozen.m_mlp)):
        total = total + group_entropy(_score(w[role] @ q, _factor(m, q, method)), 1)
    sv = _score(b_v.T @ w["v"] @ q, _factor(frozen.m_attn, q, method))
    so = _score(q.T @ w["o"] @ b_o, _factor(m_o, b_o, method))
    sd = (q.T @ w["down"]).square()
    return (total + group_entropy(sv, 1) + group_entropy(sv, 0) + group_entropy(so, 1)
            + group_entropy(so, 0) + group_entropy(sd, 0))
