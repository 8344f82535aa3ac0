"""Where drlightning keeps what it can rebuild: ``$DRL_CACHE_DIR``, else
``$XDG_CACHE_HOME/drlightning`` or ``~/.cache/drlightning``. Deleting it is always safe."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "DRL_CACHE_DIR"


def cache_root() -> Path:
    """The cache directory (see the module docstring); not created here."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "drlightning"
