"""Hugging Face export of drlightning outputs: merged boundary rotations, saving, strict loading."""

from .boundaries import boundary_matrices, install_boundaries, unwrap_rotated_layers
from .hf_dir import load_pretrained, register_auto_classes, save_model_dir

__all__ = ["boundary_matrices", "install_boundaries", "load_pretrained", "register_auto_classes",
           "save_model_dir", "unwrap_rotated_layers"]
