"""Lightning callbacks of drlightning: merging rotations and pruning each layer."""

from .merge import MergeRotations
from .prune import GROUPS, PruneLayer, prune_layer

__all__ = ["GROUPS", "MergeRotations", "PruneLayer", "prune_layer"]
