"""Model adapters (architecture roles as data) and loading."""

from .adapters import (
    ADAPTERS,
    INPUT_OF,
    ROLES,
    STAT_ORDER,
    ArchitectureAdapter,
    HeadLayout,
    adapter_for,
    supported_model_types,
)
from .loading import DEFAULT_MODEL, check_finite, default_gguf_path, load_model

__all__ = [
    "ADAPTERS", "INPUT_OF", "ROLES", "STAT_ORDER", "ArchitectureAdapter", "HeadLayout",
    "adapter_for", "supported_model_types", "DEFAULT_MODEL", "check_finite",
    "default_gguf_path", "load_model",
]
