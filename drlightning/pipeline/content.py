"""What a run actually read, as digests: the model's weights and config and the calibration tokens.

A run directory's fingerprint holds these next to the settings, so a resumed run can only continue
with the same model and the same calibration text — not with whatever a path or a hub id names
today. How each is digested, and why:

* **weights in memory** (the whole-model placement, the Python API's loaded model): for every
  tensor its name, dtype, shape, 1024 evenly spaced elements' exact bytes, and the exact integer
  sum of all its elements' bit patterns (int64, order-free, so every thread count and device gives
  the same value). One pass over the weights, no copy of them: it catches another model, retrained
  or replaced weights and any single flipped bit. It is a checksum, not a cryptographic hash.
* **weights on disk** (layer-by-layer loading, where they are never all in memory): each shard's
  name, size, safetensors header (every tensor's name, dtype, shape and offsets) and 64 evenly
  spaced 4 KiB chunks. Reading every byte of a 16 GB checkpoint again at each start costs minutes;
  the sample catches any other model or a re-saved one, but not a few flipped bits.
* **config**: the model config's fields (``rms_norm_eps``, ``hidden_act``, … change the function),
  less the ones that name where it came from.
* **calibration**: the exact bytes of the calibration token windows (fitted and held out) — the
  text actually read, after sampling and tokenising.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from ..eval.dense_cache import tensors_digest

SAMPLED_ELEMENTS = 1024
FILE_CHUNKS, CHUNK_BYTES = 64, 4096
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_SUM_CHUNK = 1 << 24
VOLATILE_CONFIG_KEYS = ("_name_or_path", "name_or_path", "transformers_version", "_commit_hash",
                        "auto_map")
"""Config fields that say where a model came from, not what it computes."""


def _hash(payload) -> str:
    return hashlib.blake2b(json.dumps(payload, sort_keys=True, default=str).encode(),
                           digest_size=16).hexdigest()


def bit_sum(tensor: torch.Tensor) -> int:
    """The exact sum of the elements' bit patterns as integers (order-free, device-free)."""
    flat = tensor.detach().reshape(-1)
    if flat.numel() == 0:
        return 0
    ints = flat.view(_INT_VIEW[flat.element_size()])
    total = 0
    for start in range(0, ints.numel(), _SUM_CHUNK):
        total += int(ints[start:start + _SUM_CHUNK].to(torch.int64).sum().item())
    return total


def sampled_elements(tensor: torch.Tensor, k: int = SAMPLED_ELEMENTS) -> torch.Tensor:
    """``k`` evenly spaced elements of ``tensor`` (all of them if it has fewer), on the CPU."""
    flat = tensor.detach().reshape(-1)
    if flat.numel() <= k:
        return flat.cpu()
    index = torch.arange(k, device=flat.device, dtype=torch.int64) * (flat.numel() - 1) // (k - 1)
    return flat[index].cpu()


def tensors_checksum(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """Digest of named in-memory tensors: name, dtype, shape, a sample of exact bytes and the
    exact bit-pattern sum of each (see the module docstring)."""
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in named:
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|{bit_sum(tensor)}|".encode())
        h.update(sampled_elements(tensor).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def files_digest(paths: Iterable[Path]) -> str:
    """Digest of weight files: name, size, the safetensors header and evenly spaced chunks."""
    h = hashlib.blake2b(digest_size=16)
    for path in sorted(Path(p) for p in paths):
        size = path.stat().st_size
        h.update(f"{path.name}|{size}|".encode())
        with open(path, "rb") as fh:
            head = fh.read(8)
            header_len = int.from_bytes(head, "little") if len(head) == 8 else 0
            h.update(head + fh.read(min(header_len, 100 << 20)))
            for i in range(FILE_CHUNKS):
                fh.seek(size * i // FILE_CHUNKS)
                h.update(fh.read(CHUNK_BYTES))
    return h.hexdigest()


def config_digest(config) -> str:
    """Digest of a model config's fields, less where it came from."""
    fields = {k: v for k, v in config.to_dict().items() if k not in VOLATILE_CONFIG_KEYS}
    return _hash(fields)


def weights_digest(model: nn.Module, shard_files: list[Path] | None = None) -> str:
    """The weights' digest: from memory, or from ``shard_files`` when the model's decoder layers
    are not in memory (layer-by-layer loading)."""
    if shard_files is not None:
        return "files:" + files_digest(shard_files)
    return "tensors:" + tensors_checksum(model.state_dict().items())


def run_content(model: nn.Module, windows: torch.Tensor,
                shard_files: list[Path] | None = None) -> dict:
    """The content part of a run's fingerprint: weights, config and calibration tokens."""
    return {"weights": weights_digest(model, shard_files), "config": config_digest(model.config),
            "calibration": tensors_digest([("windows", windows)])}
