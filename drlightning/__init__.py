"""drlightning: DenoiseRotator (arXiv 2505.23049) for PyTorch Lightning."""

from __future__ import annotations


def load_pretrained(path, dtype=None, device=None, with_tokenizer: bool = False):
    """Load a saved drlightning model directory strictly and without remote code."""
    from .export import load_pretrained as _load

    return _load(path, dtype=dtype, device=device, with_tokenizer=with_tokenizer)
