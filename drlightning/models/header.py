"""A model's shape without loading its weights: config.json, or the metadata of a GGUF header.

Pre-flight checks (architecture, pattern vs every linear's width, r1_blocks, seqlen vs context)
need only these numbers; reading them takes milliseconds where loading the model takes minutes.
"""

from __future__ import annotations

import struct
from pathlib import Path
from types import SimpleNamespace

from .loading import read_config, resolve_source

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
            11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def gguf_metadata(path: Path) -> dict:
    """Scalar and string metadata of a GGUF file (arrays, e.g. the vocabulary, are skipped)."""
    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        version, _, n_kv = struct.unpack("<IQQ", fh.read(20))
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is too old (2 or later needed)")
        out = {}
        for _ in range(n_kv):
            key = _string(fh)
            out[key] = _value(fh, struct.unpack("<I", fh.read(4))[0])
    return {k: v for k, v in out.items() if v is not None}


def _string(fh) -> str:
    (n,) = struct.unpack("<Q", fh.read(8))
    return fh.read(n).decode("utf-8", errors="replace")


def _value(fh, kind: int):
    if kind == _STRING:
        return _string(fh)
    if kind == _ARRAY:
        item, count = struct.unpack("<IQ", fh.read(12))
        for _ in range(count):
            _value(fh, item)
        return None
    fmt = _SCALARS[kind]
    return struct.unpack(fmt, fh.read(struct.calcsize(fmt)))[0]


def model_shape(source: str, gguf_file: str | None = None, trust_remote_code: bool = False):
    """The model's config (transformers) or, for GGUF files, a config-like namespace with
    ``model_type``, sizes, head counts and context length — no weights are read."""
    location, gguf = resolve_source(source, gguf_file)
    if gguf is None:
        return read_config(location, source, trust_remote_code)
    meta = gguf_metadata(Path(location) / gguf)
    arch = meta.get("general.architecture", "?")

    def get(key: str, default=None):
        return meta.get(f"{arch}.{key}", default)

    heads = get("attention.head_count")
    return SimpleNamespace(
        model_type=arch, hidden_size=get("embedding_length"),
        intermediate_size=get("feed_forward_length"), num_attention_heads=heads,
        num_key_value_heads=get("attention.head_count_kv", heads),
        head_dim=get("attention.key_length"), max_position_embeddings=get("context_length"),
        vocab_size=get("vocab_size"))
