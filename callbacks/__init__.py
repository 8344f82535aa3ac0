"""Lightning callbacks of drlightning: merging rotations, pruning each layer, LoRA export."""

from .lora import LoRAExport
from .merge import MergeRotations
from .prune import GROUPS, PruneLayer, prune_layer

__all__ = ["GROUPS", "LoRAExport", "MergeRotations", "PruneLayer", "prune_layer"]
