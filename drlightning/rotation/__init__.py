"""Pure tensor functions for DenoiseRotator: orthogonal maps, entropy objective, weight fusion."""

from .entropy import entropy_over, group_entropy
from .fusion import RotatedLayer, fold_norms, merge_rotations, rotation_storage_dtype
from .objective import METHODS, FrozenLayer, damped_inverse, frozen_layer, layer_entropy
from .orthogonal import block_diagonal, orthogonality_error, qr_orthogonal, random_orthogonal

__all__ = [
    "entropy_over", "group_entropy", "RotatedLayer", "fold_norms", "merge_rotations",
    "rotation_storage_dtype",
    "METHODS", "FrozenLayer", "damped_inverse", "frozen_layer", "layer_entropy",
    "block_diagonal", "orthogonality_error", "qr_orthogonal", "random_orthogonal",
]
