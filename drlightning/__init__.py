"""drlightning: DenoiseRotator (arXiv 2505.23049) for PyTorch Lightning."""

from __future__ import annotations


def load_pretrained(path, dtype=None, device=None, with_tokenizer: bool = False):
    """Load a saved drlightning model directory strictly and without remote code."""
    from .export import load_pretrained as _load

    return _load(path, dtype=dtype, device=device, with_tokenizer=with_tokenizer)


def __getattr__(name: str):
    """``drlightning.prune`` and ``drlightning.PruneResult`` (the Python API), imported on first
    use so that ``import drlightning`` stays light."""
    if name in ("prune", "PruneResult"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'drlightning' has no attribute {name!r}")
