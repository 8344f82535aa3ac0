"""The DenoiseRotator objective: summed entropy of importance scores of one rotated layer.

Shapes follow nn.Linear (out, in). With Q (d×d, residual stream) and R2 (G×hd×hd, one per KV head):

| role            | rotated weight  | input factor c_j (wanda / sparsegpt)       | entropy groups |
| q, k, gate, up  | W·Q             | D(QᵀHQ) / 1 / D(Qᵀ(H+λI)⁻¹Q)               | rows           |
| v               | B_vᵀ·W·Q        | as q                                       | rows + columns |
| o               | Qᵀ·W·B_o        | D(B_oᵀHB_o) / 1 / D(B_oᵀ(H+λI)⁻¹B_o)       | rows + columns |
| down            | Qᵀ·W            | cancels inside each column                 | columns        |

Scores are S = W̃² ⊙ c. Diagonals use D(QᵀMQ)_j = Σ_i (MQ)_ij Q_ij; QᵀMQ is never formed.
Q may also be given as k diagonal blocks (k, d/k, d/k) (block-diagonal R1, paper Appendix E): the
products then cost 1/k of the dense ones and D(QᵀMQ) needs only M's diagonal blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from ..models.adapters import EXPERT, HeadLayout, base_role, unit_of
from ..pruning import METHODS
from ..pruning.importance import damped_inverse
from ..pruning.patterns import Pattern
from .entropy import entropy_over
from .experts import expert_units, token_weights, weighted
from .pruned_mass import pruned_mass


@dataclass
class FrozenLayer:
    """Frozen float32 weights and per-input matrices M (H for wanda, (H+λI)⁻¹ for sparsegpt)."""

    weights: dict[str, torch.Tensor]
    m_attn: torch.Tensor | None
    m_mlp: torch.Tensor | None
    m_o_blocks: torch.Tensor | None
    """Diagonal (hd × hd) blocks of M_o, one per attention head: (n_heads, hd, hd)."""
    c_down: torch.Tensor | None = None
    """Input factor of down_proj (its inputs are never rotated); only the pruned-mass objective
    needs it (it cancels inside the entropy's columns)."""
    m_experts: dict[str, torch.Tensor] = field(default_factory=dict)
    """Mixture-of-Experts: M of each expert's gate/up input, keyed by unit (``"@e"``)."""
    c_down_experts: dict[str, torch.Tensor] = field(default_factory=dict)
    """Mixture-of-Experts: each expert's down input factor (pruned-mass only), keyed by unit."""
    expert_weight: dict[str, float] = field(default_factory=dict)
    """Mixture-of-Experts: how much each expert's linears count — its share of the calibration
    tokens the router sent to experts, relative to the mean (1.0 when unknown)."""


def frozen_layer(
    weights: dict[str, torch.Tensor],
    hessians: dict[str, torch.Tensor] | None,
    method: str,
    layout: HeadLayout,
    quirks: bool = False,
    hessian_scale: float = 1.0,
) -> FrozenLayer:
    """Precompute what the objective needs from the frozen weights and Hessians.

    ``method`` is the importance score of the objective. ``quirks`` reproduces the authors'
    released SparseGPT objective: their Hessians are averaged over sequences, not tokens
    (``hessian_scale`` = tokens per calibration sequence), and λ is added before and again after
    inversion. A ``down`` Hessian, when given, yields down_proj's input factor ``c_down``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
    w = {k: v.detach().float() for k, v in weights.items()}
    tokens = hessians.get("tokens") if hessians else None
    if tokens is not None:  # an expert without calibration tokens has nothing to concentrate
        w = {k: v for k, v in w.items() if EXPERT not in k or int(tokens[int(k.split(EXPERT)[1])])}
    units = expert_units(w)
    weight = token_weights(tokens, units)
    if method == "magnitude":
        return FrozenLayer(w, None, None, None, expert_weight=weight)
    assert hessians is not None, "wanda/sparsegpt objectives need Hessians"

    def m_of(h: torch.Tensor) -> torch.Tensor:
        h = h.float()
        if quirks:
            h = h * hessian_scale
        return h if method == "wanda" else damped_inverse(h, quirk=quirks)

    def c_of(h: torch.Tensor) -> torch.Tensor:
        m_down = torch.diagonal(m_of(h))
        return m_down if method == "wanda" else 1.0 / m_down

    hd, nh = layout.head_dim, layout.n_heads
    m_o = m_of(hessians["o"]).reshape(nh, hd, nh, hd)
    idx = torch.arange(nh, device=m_o.device)
    c_down = c_of(hessians["down"]) if "down" in hessians else None
    m_mlp = m_of(hessians["mlp_in"]) if "mlp_in" in hessians else None
    m_experts = {u: m_of(hessians[f"mlp_in{u}"]) for u in units}
    c_experts = {u: c_of(hessians[f"down{u}"]) for u in units if f"down{u}" in hessians}
    return FrozenLayer(w, m_of(hessians["attn_in"]), m_mlp, m_o[idx, :, idx, :].contiguous(),
                       c_down, m_experts, c_experts, weight)


def _diag_factor(m: torch.Tensor | None, q: torch.Tensor, method: str) -> torch.Tensor | None:
    """c = D(QᵀMQ) for wanda or 1/D(QᵀMQ) for sparsegpt; works batched over leading dims."""
    if m is None:
        return None
    d = ((m @ q) * q).sum(dim=-2)
    return d if method == "wanda" else 1.0 / d


def rotate_inputs(w: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """W·Q for W (out, d) and Q dense (d, d) or block-diagonal blocks (k, d/k, d/k)."""
    if q.dim() == 2:
        return w @ q
    k, b, _ = q.shape
    return torch.einsum("okb,kbc->okc", w.reshape(w.shape[0], k, b), q).reshape(w.shape)


def rotate_outputs(q: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Qᵀ·W for W (d, n) and Q dense or block-diagonal blocks."""
    if q.dim() == 2:
        return q.T @ w
    k, b, _ = q.shape
    return torch.einsum("kbc,kbn->kcn", q, w.reshape(k, b, -1)).reshape(w.shape)


def _input_factor(m: torch.Tensor | None, q: torch.Tensor, method: str) -> torch.Tensor | None:
    """D(QᵀMQ) (or its inverse) for the residual-stream rotation, dense or block-diagonal."""
    if m is None or q.dim() == 2:
        return _diag_factor(m, q, method)
    k, b, _ = q.shape
    idx = torch.arange(k, device=m.device)
    blocks = m.reshape(k, b, k, b)[idx, :, idx, :]
    return _diag_factor(blocks, q, method).reshape(-1)


def _scores(w: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    """S = W̃² ⊙ c in float32 (under bf16 autocast only the matmuls run in bf16)."""
    s = _wide(w).square()
    return s if c is None else s * _wide(c)


def _wide(t: torch.Tensor) -> torch.Tensor:
    """16-bit tensors (bf16 autocast matmul outputs) as float32; float32/64 unchanged."""
    return t.float() if t.element_size() < 4 else t


def layer_scores(
    q: torch.Tensor, r: torch.Tensor, frozen: FrozenLayer, layout: HeadLayout, method: str
) -> dict[str, torch.Tensor]:
    """Importance scores S = W̃² ⊙ c of all rotated linears — the seven, or q, k, v, o and every
    expert's gate/up/down (down: without c, which cancels inside each column). ``q`` is dense
    (d, d) or block-diagonal blocks (k, d/k, d/k)."""
    w = frozen.weights
    g, hd, nrep = layout.n_kv_heads, layout.head_dim, layout.n_rep
    c_attn = _input_factor(frozen.m_attn, q, method)
    c_mlp = _input_factor(frozen.m_mlp, q, method)
    n_q = w["q"].shape[0]
    qk = _scores(rotate_inputs(torch.cat([w["q"], w["k"]]), q), c_attn)
    wv = rotate_inputs(torch.einsum("gij,gid->gjd", r, w["v"].reshape(g, hd, -1)).reshape(g * hd, -1), q)
    wo = rotate_outputs(q, w["o"]).reshape(-1, g, nrep, hd)
    wo = torch.einsum("dgrj,gjk->dgrk", wo, r).reshape(wo.shape[0], -1)
    c_o = None
    if frozen.m_o_blocks is not None:
        r_heads = r.repeat_interleave(nrep, dim=0)
        c_o = _diag_factor(frozen.m_o_blocks, r_heads, method).reshape(-1)
    scores = {"q": qk[:n_q], "k": qk[n_q:], "v": _scores(wv, c_attn), "o": _scores(wo, c_o)}
    units = expert_units(w)
    for unit in ([""] if "gate" in w else []) + units:
        c = c_mlp if not unit else _input_factor(frozen.m_experts.get(unit), q, method)
        gate, up = w[f"gate{unit}"], w[f"up{unit}"]
        gu = _scores(rotate_inputs(torch.cat([gate, up]), q), c)
        scores.update({f"gate{unit}": gu[:gate.shape[0]], f"up{unit}": gu[gate.shape[0]:],
                       f"down{unit}": _scores(rotate_outputs(q, w[f"down{unit}"]), None)})
    return scores


GROUP_DIMS = {"q": (1,), "k": (1,), "v": (1, 0), "o": (1, 0), "gate": (1,), "up": (1,), "down": (0,)}
"""Dimensions over which each role's scores are normalised (1: per row, 0: per column)."""


def _role_scores(role: str, q: torch.Tensor, r: torch.Tensor, c: torch.Tensor | None,
                 frozen: FrozenLayer, layout: HeadLayout) -> torch.Tensor:
    """Scores of one role given its precomputed input factor ``c`` (as in :func:`layer_scores`).

    Kept beside :func:`layer_scores` rather than called from it: layer_scores fuses q/k and gate/up
    into one matmul each and its op order fixes the float32 rounding that published runs reproduce
    bit for bit; tests/test_objective.py checks both give the same loss and gradient (float64)."""
    w = frozen.weights[role]
    g, hd, nrep = layout.n_kv_heads, layout.head_dim, layout.n_rep
    if base_role(role) in ("q", "k", "gate", "up"):
        return _scores(rotate_inputs(w, q), c)
    if role == "v":
        wv = torch.einsum("gij,gid->gjd", r, w.reshape(g, hd, -1)).reshape(g * hd, -1)
        return _scores(rotate_inputs(wv, q), c)
    if role == "o":
        wo = rotate_outputs(q, w).reshape(-1, g, nrep, hd)
        return _scores(torch.einsum("dgrj,gjk->dgrk", wo, r).reshape(wo.shape[0], -1), c)
    return _scores(rotate_outputs(q, w), None)


OBJECTIVES = ("entropy", "pruned_mass")
"""What the rotation minimises: the paper's summed entropy, or the importance the pattern removes."""


def _role_factors(q: torch.Tensor, r: torch.Tensor, frozen: FrozenLayer, layout: HeadLayout,
                  method: str) -> dict[str, torch.Tensor | None]:
    """The input factor c of every role at rotations (Q, R2) (down: none, it cancels per column)."""
    c_attn = _input_factor(frozen.m_attn, q, method)
    c_mlp = _input_factor(frozen.m_mlp, q, method)
    c_o = None
    if frozen.m_o_blocks is not None:
        c_o = _diag_factor(frozen.m_o_blocks, r.repeat_interleave(layout.n_rep, dim=0), method)
        c_o = c_o.reshape(-1)
    factors = {"q": c_attn, "k": c_attn, "v": c_attn, "o": c_o}
    if "gate" in frozen.weights:
        factors.update({"gate": c_mlp, "up": c_mlp, "down": None})
    for unit in expert_units(frozen.weights):
        c = _input_factor(frozen.m_experts.get(unit), q, method)
        factors.update({f"gate{unit}": c, f"up{unit}": c, f"down{unit}": None})
    return factors


def _checkpointed_parts(q: torch.Tensor, r: torch.Tensor, frozen: FrozenLayer, layout: HeadLayout,
                        method: str, part_of) -> dict[str, torch.Tensor]:
    """``part_of(role, scores)`` for every role, each under activation checkpointing."""
    from torch.utils.checkpoint import checkpoint

    def part(role: str, q: torch.Tensor, r: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        return part_of(role, _role_scores(role, q, r, c, frozen, layout))

    factors = _role_factors(q, r, frozen, layout, method)
    return {role: checkpoint(part, role, q, r, c, use_reentrant=False) for role, c in factors.items()}


def layer_entropy(
    q: torch.Tensor, r: torch.Tensor, frozen: FrozenLayer, layout: HeadLayout, method: str,
    low_memory: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total entropy (the loss) and its part per role for rotations Q (d×d) and R2 (G×hd×hd).

    ``low_memory`` computes each role under activation checkpointing: the backward pass recomputes
    one role at a time, so the step's working memory is that of the largest linear instead of all
    seven (≈ 4× less at LLaMA sizes) for about one extra forward pass. Same value and gradient.
    """
    if not low_memory:
        scores = layer_scores(q, r, frozen, layout, method)
        parts = {role: entropy_over(s, GROUP_DIMS[base_role(role)]) for role, s in scores.items()}
    else:
        parts = _checkpointed_parts(q, r, frozen, layout, method,
                                    lambda role, s: entropy_over(s, GROUP_DIMS[base_role(role)]))
    parts = weighted(parts, frozen.expert_weight)
    return torch.stack(list(parts.values())).sum(), parts


def layer_pruned_mass(
    q: torch.Tensor, r: torch.Tensor, frozen: FrozenLayer, layout: HeadLayout, method: str,
    pattern: Pattern, scale: dict[str, float] | None = None, low_memory: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Summed pruned mass (see :mod:`.pruned_mass`) of all seven rotated linears and its parts.

    Scores include down_proj's input factor ``frozen.c_down``; each part is divided by
    ``scale[role]`` (its value at the identity) when given.
    """

    def part_of(role: str, s: torch.Tensor) -> torch.Tensor:
        if role == "down" and frozen.c_down is not None:
            s = s * frozen.c_down
        elif base_role(role) == "down" and unit_of(role) in frozen.c_down_experts:
            s = s * frozen.c_down_experts[unit_of(role)]
        value = pruned_mass(s, pattern)
        return value if scale is None else value / scale[role]

    if low_memory:
        parts = _checkpointed_parts(q, r, frozen, layout, method, part_of)
    else:
        scores = layer_scores(q, r, frozen, layout, method)
        parts = {role: part_of(role, s) for role, s in scores.items()}
    parts = weighted(parts, frozen.expert_weight)
    return torch.stack(list(parts.values())).sum(), parts


@dataclass(frozen=True)
class ObjectiveSpec:
    """What a layer's rotations minimise: ``objective`` (entropy | pruned_mass) of the importance
    ``score`` (magnitude | wanda | sparsegpt); pruned_mass also needs the ``pattern``."""

    objective: str
    score: str
    pattern: Pattern | None = None
    low_memory: bool = False


def layer_objective(
    q: torch.Tensor, r: torch.Tensor, frozen: FrozenLayer, layout: HeadLayout, spec: ObjectiveSpec,
    scale: dict[str, float] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of one layer at rotations (Q, R2) and its part per role (float32)."""
    if spec.objective == "pruned_mass":
        total, parts = layer_pruned_mass(q, r, frozen, layout, spec.score, spec.pattern, scale,
                                         spec.low_memory)
    else:
        total, parts = layer_entropy(q, r, frozen, layout, spec.score, low_memory=spec.low_memory)
    return total.float(), parts


@torch.no_grad()
def identity_scale(frozen: FrozenLayer, layout: HeadLayout, spec: ObjectiveSpec,
                   r1_blocks: int = 1) -> dict[str, float]:
    """Per-role divisors of the pruned-mass objective: its parts at Q = I (dense, or as
    ``r1_blocks`` diagonal blocks) and R2 = I, in the fused form (never 0)."""
    weight = frozen.weights["q"]
    kw = {"dtype": torch.float32, "device": weight.device}
    b = layout.hidden // r1_blocks
    eye_q = torch.eye(b, **kw) if r1_blocks == 1 else torch.eye(b, **kw).repeat(r1_blocks, 1, 1)
    eye_r = torch.eye(layout.head_dim, **kw).repeat(layout.n_kv_heads, 1, 1)
    unweighted = replace(frozen, expert_weight={})  # the token weights multiply the relative parts
    _, parts = layer_objective(eye_q, eye_r, unweighted, layout, replace(spec, low_memory=False))
    return {role: max(float(v), 1e-30) for role, v in parts.items()}
