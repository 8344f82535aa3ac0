"""The dense model's evaluation, reused across runs (``run.eval.dense_cache``).

A dense model's perplexity and zero-shot numbers depend only on its weights and on the evaluation
protocol, so runs of several pruners on one model need them once. The key is a digest of every
weight (name, dtype, shape, bytes), of every evaluation token, of the evaluation settings, the
thread count, the device type, the library versions and the machine's float rounding (a
probe product, :func:`arithmetic_probe`); any change gives another key. Entries are
small JSON files in ``dense_eval/`` of drlightning's cache (:mod:`drlightning.cache`); deleting
them is always safe.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import torch

from ..atomic import atomic_write_text
from ..cache import cache_root
from ..reporting.results import versions


def cache_dir() -> Path:
    """Where dense evaluations are kept (``<cache root>/dense_eval``)."""
    return cache_root() / "dense_eval"


def tensors_digest(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """Digest of named tensors: names, dtypes, shapes and exact bytes."""
    h = hashlib.blake2b(digest_size=20)
    for name, tensor in tensors:
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def bytes_digest(items: Iterable[tuple[str, bytes]]) -> str:
    """Digest of named byte strings (e.g. the files of an offline task)."""
    h = hashlib.blake2b(digest_size=20)
    for name, data in items:
        h.update(f"{name}|{len(data)}|".encode())
        h.update(data)
    return h.hexdigest()


def arithmetic_probe(device: torch.device | str = "cpu") -> str:
    """Digest of a fixed float32 matrix product on ``device``: machines (or BLAS kernels) that
    round differently give different digests, so a dense evaluation made on one is not reused on
    another (their perplexities differ in the 5th–7th decimal, and their pruned results more)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(96, 640, generator=g).to(device)
    b = torch.randn(640, 256, generator=g).to(device)
    return tensors_digest([("probe", (a @ b).float())])


def dense_key(model: torch.nn.Module, eval_tokens: dict[str, torch.Tensor], protocol: dict) -> str:
    """The cache key of ``model`` evaluated on ``eval_tokens`` under ``protocol`` (JSON-able)."""
    device = next(model.parameters()).device
    parts = {"weights": tensors_digest(model.state_dict().items()),
             "tokens": {name: tensors_digest([(name, t)]) for name, t in sorted(eval_tokens.items())},
             "protocol": protocol, "threads": torch.get_num_threads(), "versions": versions(),
             "arithmetic": arithmetic_probe(device if device.type != "meta" else "cpu")}
    return hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(),
                           digest_size=20).hexdigest()


def load_dense(key: str) -> dict | None:
    """The cached evaluation under ``key`` (None if absent or unreadable)."""
    path = cache_dir() / f"{key}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))["result"]
    except (OSError, ValueError, KeyError):
        return None


def save_dense(key: str, result: dict, protocol: dict) -> Path | None:
    """Keep ``result`` under ``key``; a cache that cannot be written is skipped (returns None)."""
    path = cache_dir() / f"{key}.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"protocol": protocol, "result": result}, indent=1,
                                           default=str) + "\n")
    except OSError:
        return None
    return path
