"""Can the Hugging Face Hub be reached, and which Hub datasets does this machine already hold?

Everything is read from the environment when called (``HF_HUB_OFFLINE``, ``HF_DATASETS_OFFLINE``,
``HF_ENDPOINT``, ``HF_HOME``, ``HF_HUB_CACHE``, ``HF_DATASETS_CACHE``), so that pre-flight agrees
with what ``datasets.load_dataset`` will do later in the same process.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
HUB_SOURCES = {"c4": "allenai/c4", "wikitext2": "wikitext"}
"""Named text sources that read a Hub dataset (see corpora.load_documents)."""


def offline_reason(timeout: float = 3.0) -> str | None:
    """Why the Hub cannot be used (an offline variable, or the endpoint cannot be reached);
    ``None`` when it answers."""
    for name in OFFLINE_VARIABLES:
        if os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return f"{name}={os.environ[name]}"
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        return f"{host} cannot be reached ({type(err).__name__}: {err})"
    return None


def cache_dirs() -> tuple[Path, Path]:
    """The Hub cache (snapshots) and the datasets cache (prepared Arrow files)."""
    xdg = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache"))
    home = Path(os.environ.get("HF_HOME", xdg / "huggingface")).expanduser()
    hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or home / "hub"
    return Path(hub).expanduser(), Path(os.environ.get("HF_DATASETS_CACHE", home / "datasets")).expanduser()


def is_cached(dataset: str) -> bool:
    """Whether ``dataset`` ("owner/name", or a bare legacy "name" that may now live under an
    owner) has a snapshot in the Hub cache or prepared files in the datasets cache."""
    hub, prepared = cache_dirs()
    owner = "*" if "/" not in dataset else dataset.split("/")[0]
    name = dataset.split("/")[-1]
    patterns = [(hub, f"datasets--{owner}--{name}"), (prepared, f"{owner}___{name}")]
    if "/" not in dataset:
        patterns += [(hub, f"datasets--{name}"), (prepared, name)]
    return any(folder.is_dir() and any(folder.glob(p)) for folder, p in patterns)


def source_dataset(source: str) -> str | None:
    """The Hub dataset a text source reads ("c4", "wikitext2", "hf:<dataset>[:<config>]"), or
    ``None`` for local and embedded text."""
    if source.startswith("hf:"):
        return source[3:].partition(":")[0] or None
    return HUB_SOURCES.get(source)
