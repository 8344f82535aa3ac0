"""Lightning callbacks of drlightning: merging rotations, pruning each layer, LoRA export."""

from .lora import LoRAExport
from .merge import MergeRotations, merge_into_datamodule
from .prune import GROUPS, PruneLayer, prune_datamodule, prune_layer

__all__ = ["GROUPS", "LoRAExport", "MergeRotations", "PruneLayer", "merge_into_datamodule",
           "prune_datamodule", "prune_layer"]
