"""Lightning callbacks of drlightning: merging rotations, pruning each layer, LoRA export
(``LoRAExport`` is imported on first use: the layer loop needs only the first two)."""

from .merge import MergeRotations
from .prune import GROUPS, PruneLayer, prune_layer

__all__ = ["GROUPS", "LoRAExport", "MergeRotations", "PruneLayer", "prune_layer"]


def __getattr__(name: str):
    if name == "LoRAExport":
        from .lora import LoRAExport

        return LoRAExport
    raise AttributeError(f"module 'drlightning.callbacks' has no attribute {name!r}")
