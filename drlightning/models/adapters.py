"""Per-architecture facts as data: where each linear role lives and how attention heads are laid out.

Every supported model is a stack of pre-norm decoder layers with a q/k/v/o attention block and a
gated MLP (gate/up/down). The adapters below only say *where* things are (and which roles share one
fused linear); all rotation, pruning and capture code is written once against these roles.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .families import refusal
from .fused import ExpertSlice, split_rows

ROLES: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")
"""The seven linear roles of a decoder layer, in forward order."""

INPUT_OF: dict[str, str] = {
    "q": "attn_in",
    "k": "attn_in",
    "v": "attn_in",
    "o": "o",
    "gate": "mlp_in",
    "up": "mlp_in",
    "down": "down",
}
"""Which distinct input (and so which Hessian) each role reads."""

STAT_ORDER: tuple[str, ...] = ("attn_in", "o", "mlp_in", "down")
"""Distinct linear inputs in the order a forward pass reaches them."""

EXPERT = "@"
"""Separator of an expert's role name: ``gate@3`` is expert 3's gate (``mlp_in@3`` its input)."""

ROUTER = "router"
"""The MoE router: rotated with the residual stream (input side), never pruned nor scored."""


def base_role(role: str) -> str:
    """``gate@3`` → ``gate``; a dense role is its own base."""
    return role.split(EXPERT, 1)[0]


def unit_of(role: str) -> str:
    """``gate@3`` → ``"@3"`` (the suffix naming its expert); ``""`` for a dense role."""
    return role[len(base_role(role)):]


def expert_of(role: str) -> int | None:
    """``gate@3`` → 3; None for a dense role."""
    return int(role.split(EXPERT, 1)[1]) if EXPERT in role else None


def input_of(role: str) -> str:
    """The capture key of a role's input: ``INPUT_OF`` of its base, per expert for experts."""
    expert = expert_of(role)
    key = INPUT_OF[base_role(role)]
    return key if expert is None else f"{key}{EXPERT}{expert}"


@dataclass(frozen=True)
class ArchitectureAdapter:
    """Where the parts of one decoder-only architecture live (dotted attribute paths)."""

    name: str
    model_types: tuple[str, ...]
    layers: str = "model.layers"
    embed: str = "model.embed_tokens"
    final_norm: str = "model.norm"
    lm_head: str = "lm_head"
    linears: dict[str, str] = field(
        default_factory=lambda: {
            "q": "self_attn.q_proj",
            "k": "self_attn.k_proj",
            "v": "self_attn.v_proj",
            "o": "self_attn.o_proj",
            "gate": "mlp.gate_proj",
            "up": "mlp.up_proj",
            "down": "mlp.down_proj",
        }
    )
    input_norm: str = "input_layernorm"
    post_attention_norm: str = "post_attention_layernorm"
    norm_feeds: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: {
            "input_layernorm": ("q", "k", "v"),
            "post_attention_layernorm": ("gate", "up"),
        }
    )
    """Each RMSNorm (attribute inside a layer) and the roles whose input it scales."""
    fused: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Fused linears (path inside a layer) and the roles stacked in their rows, in order."""
    notes: str = ""
    """What is particular about rotating this family (shown in docs and the README table)."""
    router: str = ""
    """Mixture-of-Experts only: the router (a weight (E, d)) inside a layer."""
    experts: str = ""
    """Mixture-of-Experts only: the experts block (3-D ``gate_up_proj``, ``down_proj``); a layer
    without it (e.g. Qwen3-MoE's ``mlp_only_layers``) has the dense gate/up/down."""
    saved_experts: tuple[str, ...] = ()
    """Mixture-of-Experts only: how checkpoints name the experts — (MLP prefix, gate, up, down),
    as in ``<prefix>.experts.<e>.<gate>.weight`` (see :mod:`.expert_layout`)."""

    def is_moe(self, layer: nn.Module) -> bool:
        """Whether this decoder layer's MLP is a Mixture-of-Experts block."""
        return bool(self.experts) and _has(getattr(layer, "inner", layer), self.experts)

    def experts_block(self, layer: nn.Module) -> nn.Module:
        """An MoE layer's experts block (its 3-D ``gate_up_proj`` and ``down_proj``)."""
        return _get(getattr(layer, "inner", layer), self.experts)

    def n_experts(self, layer: nn.Module) -> int:
        """Number of experts of an MoE layer (0 for a dense one)."""
        return self.experts_block(layer).gate_up_proj.shape[0] if self.is_moe(layer) else 0

    def roles(self, layer: nn.Module) -> tuple[str, ...]:
        """The layer's prunable roles: the seven, or q, k, v, o and every expert's gate/up/down."""
        n = self.n_experts(layer)
        if not n:
            return ROLES
        return ("q", "k", "v", "o", *(f"{b}{EXPERT}{e}" for e in range(n)
                                      for b in ("gate", "up", "down")))

    def groups(self, layer: nn.Module) -> tuple[tuple[str, ...], ...]:
        """True-sequential groups [q, k, v] → [o] → [gate, up (every expert)] → [down (every)]."""
        roles = self.roles(layer)
        return tuple(tuple(r for r in roles if base_role(r) in bases)
                     for bases in (("q", "k", "v"), ("o",), ("gate", "up"), ("down",)))

    def fed_by(self, layer: nn.Module, norm_attr: str) -> tuple[str, ...]:
        """The roles (and the router) whose input the RMSNorm ``norm_attr`` scales."""
        bases = self.norm_feeds[norm_attr]
        fed = tuple(r for r in self.roles(layer) if base_role(r) in bases)
        return (*fed, ROUTER) if self.is_moe(layer) and "gate" in bases else fed

    def rotated_roles(self, layer: nn.Module) -> tuple[str, ...]:
        """Everything a residual rotation turns: the prunable roles and an MoE layer's router."""
        return (*self.roles(layer), ROUTER) if self.is_moe(layer) else self.roles(layer)

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        """The model's list of decoder layers."""
        return _get(model, self.layers)

    def linear(self, layer: nn.Module, role: str) -> nn.Linear:
        """The nn.Linear playing ``role`` inside a decoder layer (unwrapping rotation wrappers);
        for a fused linear, a :class:`~drlightning.models.fused.RowSlice` of the role's rows."""
        layer = getattr(layer, "inner", layer)
        if role == ROUTER:
            return _get(layer, self.router)
        expert = expert_of(role)
        if expert is not None:
            block = self.experts_block(layer)
            if base_role(role) == "down":
                return ExpertSlice(block.down_proj, expert)
            width = block.gate_up_proj.shape[1] // 2
            return ExpertSlice(block.gate_up_proj, expert,
                               *((0, width) if base_role(role) == "gate" else (width, 2 * width)))
        path = self.linears[role]
        module = _get(layer, path)
        if path not in self.fused:
            return module
        config = getattr(layer, "config", None) or _get(layer, path.split(".")[0]).config
        return split_rows(module, self.fused[path], HeadLayout.from_config(config).out_features())[role]

    def module_names(self, roles: tuple[str, ...] = ROLES) -> list[str]:
        """Module-name suffixes of the linears holding ``roles`` (a fused one named once)."""
        names = [self.linears[r].split(".")[-1] for r in roles]
        return list(dict.fromkeys(names))

    def norm(self, layer: nn.Module, attr: str) -> nn.Module:
        """An RMSNorm module inside a decoder layer."""
        return _get(getattr(layer, "inner", layer), attr)


@dataclass(frozen=True)
class HeadLayout:
    """Sizes needed by the rotation objective, read from a model config."""

    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate: int
    experts: int = 0
    """Experts per MoE layer (0: a dense model)."""
    expert_intermediate: int = 0
    """Intermediate width of each expert (its down_proj's input)."""

    @property
    def n_rep(self) -> int:
        """Query heads per KV head (HF ``repeat_kv`` factor)."""
        return self.n_heads // self.n_kv_heads

    def in_features(self) -> dict[str, int]:
        """Input width of each role's linear (what an N:M pattern must tile)."""
        h = self.hidden
        widths = {"q": h, "k": h, "v": h, "o": self.n_heads * self.head_dim, "gate": h, "up": h,
                  "down": self.intermediate}
        if self.experts:
            widths[f"down{EXPERT}"] = self.expert_intermediate
        return widths

    def out_features(self) -> dict[str, int]:
        """Output width of each role's linear (its rows in a fused linear)."""
        qd, kvd = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        return {"q": qd, "k": kvd, "v": kvd, "o": self.hidden, "gate": self.intermediate,
                "up": self.intermediate, "down": self.hidden}

    @classmethod
    def from_config(cls, config) -> HeadLayout:
        """Read hidden size, head counts and head_dim from a transformers config."""
        n_heads = config.num_attention_heads
        n_kv = getattr(config, "num_key_value_heads", None) or n_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
        if n_heads % n_kv:
            raise ValueError(f"num_attention_heads={n_heads} is not a multiple of "
                             f"num_key_value_heads={n_kv}")
        experts = getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None)
        expert_width = (getattr(config, "moe_intermediate_size", None) or config.intermediate_size
                        if experts else 0)
        return cls(config.hidden_size, n_heads, n_kv, head_dim, config.intermediate_size,
                   experts or 0, expert_width)


ADAPTERS: tuple[ArchitectureAdapter, ...] = (
    ArchitectureAdapter(name="llama", model_types=("llama",)),
    ArchitectureAdapter(
        name="qwen2", model_types=("qwen2",),
        notes="q/k/v carry biases: R1 acts on the inputs only, so q's and k's stay; v's bias "
              "turns with R2"),
    ArchitectureAdapter(
        name="mistral", model_types=("mistral",),
        notes="sliding-window attention is untouched (the rotations act on channels, not "
              "positions)"),
    ArchitectureAdapter(
        name="qwen3", model_types=("qwen3",),
        notes="q_norm/k_norm (an RMSNorm per head of q and k) act after the projections, so R1 "
              "on their inputs and R2 on v/o stay exact; the head_dim of q and k may not be "
              "rotated or permuted (q_norm/k_norm weights and RoPE act on it) and never is"),
    ArchitectureAdapter(
        name="phi3", model_types=("phi3",),
        linears={"q": "self_attn.qkv_proj", "k": "self_attn.qkv_proj", "v": "self_attn.qkv_proj",
                 "o": "self_attn.o_proj", "gate": "mlp.gate_up_proj", "up": "mlp.gate_up_proj",
                 "down": "mlp.down_proj"},
        fused={"self_attn.qkv_proj": ("q", "k", "v"), "mlp.gate_up_proj": ("gate", "up")},
        notes="fused qkv_proj and gate_up_proj: each role is its own rows of the fused weight for "
              "importance, rotation, permutation and pruning; saved fused, as the model had them"),
    ArchitectureAdapter(
        name="mixtral", model_types=("mixtral",), router="mlp.gate", experts="mlp.experts",
        saved_experts=("block_sparse_moe", "w1", "w3", "w2"),
        notes="Mixture-of-Experts: R1 is shared by the router (rotated, never pruned) and every "
              "expert's gate/up (inputs) and down (outputs); each expert has its own Hessian from "
              "the tokens routed to it, its own intermediate permutation, and counts in the "
              "objective by its share of the calibration tokens"),
    ArchitectureAdapter(
        name="qwen3_moe", model_types=("qwen3_moe",), router="mlp.gate", experts="mlp.experts",
        saved_experts=("mlp", "gate_proj", "up_proj", "down_proj"),
        notes="Qwen3 attention (q_norm/k_norm) with Mixture-of-Experts MLPs as Mixtral's; layers "
              "listed in mlp_only_layers keep a dense MLP"),
)


def supported_model_types() -> list[str]:
    """All ``config.model_type`` values drlightning can rotate."""
    return sorted(t for a in ADAPTERS for t in a.model_types)


def adapter_for(config) -> ArchitectureAdapter:
    """The adapter for a transformers config; a clear error for anything unsupported."""
    model_type = getattr(config, "model_type", None)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    raise ValueError(refusal(model_type, supported_model_types()))


def _has(root: nn.Module, path: str) -> bool:
    try:
        _get(root, path)
    except AttributeError:
        return False
    return True


def _get(root: nn.Module, path: str):
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj
