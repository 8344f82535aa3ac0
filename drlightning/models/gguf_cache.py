"""GGUF files dequantised once: a small GGUF model loaded in float32 is kept as a safetensors
directory (weights, config, tokenizer) in ``gguf/`` of drlightning's cache, so later loads skip
parsing and dequantising the file (most of the ~20–40 s the 135M default model takes on 2 cores).

The key is the file's resolved path, size and modification time and the versions of the libraries
that convert it; files over :data:`MAX_GGUF_BYTES` are not copied (their float32 copy would be
large). A cache that cannot be written (read-only, disk full) is skipped with a warning.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import warnings
from pathlib import Path

from safetensors import SafetensorError

from ..atomic import write_dir_atomically
from ..cache import cache_root

MAX_GGUF_BYTES = 1 << 30
_COMPLETE = "drl_converted.txt"


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def converted_dir(gguf: Path) -> Path | None:
    """Where ``gguf``'s float32 copy lives (None for files too large to copy)."""
    gguf = Path(gguf).resolve()
    stat = gguf.stat()
    if stat.st_size > MAX_GGUF_BYTES:
        return None
    key = f"{gguf}|{stat.st_size}|{stat.st_mtime_ns}|{_version('transformers')}|{_version('gguf')}"
    return cache_root() / "gguf" / hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


def lookup(gguf: Path) -> Path | None:
    """The finished float32 copy of ``gguf``, if there is one."""
    path = converted_dir(gguf)
    return path if path is not None and (path / _COMPLETE).is_file() else None


def store(gguf: Path, model, tokenizer) -> Path | None:
    """Keep ``model`` (float32, as loaded from ``gguf``) and ``tokenizer``; returns the copy."""
    path = converted_dir(gguf)
    if path is None:
        return None

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _COMPLETE).write_text(f"float32 copy of {Path(gguf).resolve()}\n", encoding="utf-8")

    try:
        return write_dir_atomically(path, write)
    except (OSError, SafetensorError) as err:  # a full disk is a SafetensorError in save_file
        warnings.warn(f"could not keep a converted copy of {gguf} in {path} ({err}); the next "
                      "load converts it again", stacklevel=2)
        return None
