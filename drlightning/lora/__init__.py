"""LoRA recovery fine-tuning of a pruned (rotated) model with frozen rotations and kept sparsity."""

from .masked_merge import masked_merge, sparsity_masks, sparsity_summary
from .module import PAPER_DEFAULTS, LoRAModule
from .text_data import TextDataModule

__all__ = ["PAPER_DEFAULTS", "LoRAModule", "TextDataModule", "masked_merge", "sparsity_masks",
           "sparsity_summary"]
