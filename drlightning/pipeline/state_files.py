"""The files of a run's ``state/`` below the run state itself: safetensors written atomically,
their header checked against their size, trained rotations with a checksum."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..atomic import atomic_write_with
from ..eval.dense_cache import tensors_digest


def atomic_save_tensors(tensors: dict, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file via a temporary file and ``os.replace`` (never half-written)."""
    atomic_write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def save_rotations(path: Path, q: torch.Tensor, r: torch.Tensor, report: dict,
                   index: int | None = None) -> None:
    """Trained (Q, R2) and their report in one safetensors file, atomically, with a checksum
    (and the layer ``index`` it belongs to, if any)."""
    tensors = {"q": q.detach().cpu().contiguous(), "r": r.detach().cpu().contiguous()}
    meta = {"report": json.dumps(report, default=float),
            "checksum": tensors_digest(sorted(tensors.items()))}
    if index is not None:
        meta["index"] = str(index)
    atomic_save_tensors(tensors, path, meta)


def load_rotations(path: Path, index: int | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(Q, R2, report) from a file written by :func:`save_rotations`; a truncated, damaged or
    misplaced file is a one-line error naming it."""
    def bad(what: str) -> ValueError:
        return ValueError(f"{path} {what}; delete it to recompute those rotations on the next run")

    try:
        meta = safetensors_metadata(path)
        t = load_file(str(path))
    except ValueError as err:
        raise bad(str(err)) from None
    except Exception as err:  # safetensors' own error types
        raise bad(f"cannot be read ({type(err).__name__}: {err})") from None
    if set(t) != {"q", "r"} or tensors_digest(sorted(t.items())) != meta.get("checksum"):
        raise bad("is damaged (its tensors do not match their checksum)")
    if index is not None and meta.get("index") != str(index):
        raise bad(f"holds layer {meta.get('index', '?')}'s rotations, not layer {index}'s")
    return t["q"], t["r"], json.loads(meta.get("report", "{}"))


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The metadata of a safetensors file whose header parses and whose size matches it (a
    ValueError says what is wrong: truncated, padded or not safetensors)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or 8 + n > size:
            raise ValueError(f"is truncated or not a safetensors file ({size} bytes)")
        try:
            header = json.loads(fh.read(n))
        except ValueError:
            raise ValueError("has a damaged header (not JSON)") from None
    if not isinstance(header, dict):
        raise ValueError("has a damaged header")
    ends = [v["data_offsets"][1] for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v]
    expected = 8 + n + max(ends, default=0)
    if size != expected:
        raise ValueError(f"is truncated or padded ({size} bytes where its header says {expected})")
    return header.get("__metadata__") or {}


def read_report(path: Path) -> dict:
    """The JSON ``report`` kept in a state file's safetensors metadata ({} if none)."""
    with safe_open(str(path), framework="pt") as fh:
        return json.loads((fh.metadata() or {}).get("report", "{}"))
