"""Damaged tiny models and a finished tiny run for the bad-input table (benchmarks/bad_inputs.py),
made once per process in a temporary folder."""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tests.tiny import fit_args, save_tiny_dir

WEIGHTS = "model.safetensors"


def tiny_fit(model: Path, *args: str) -> list[str]:
    """``drlightning fit`` of a tiny model (20 steps, 8 × 64 tokens); ``args`` hold
    ``--run.output_dir DIR`` and any other flags."""
    args = list(args)
    i = args.index("--run.output_dir")
    out = args[i + 1]
    del args[i:i + 2]
    return fit_args(model, out, extra=tuple(args))


def _variant(root: Path, name: str, good: Path, change) -> Path:
    path = root / name
    shutil.copytree(good, path)
    change(path)
    return path


def _tensors(change):
    def apply(path: Path) -> None:
        tensors = load_file(str(path / WEIGHTS))
        change(tensors)
        save_file(tensors, str(path / WEIGHTS), metadata={"format": "pt"})
    return apply


def _config(**fields):
    def apply(path: Path) -> None:
        cfg = json.loads((path / "config.json").read_text())
        cfg.update(fields)
        (path / "config.json").write_text(json.dumps(cfg))
    return apply


def _header(path: Path) -> None:
    data = bytearray((path / WEIGHTS).read_bytes())
    data[9] = ord("#")  # inside the JSON header: no longer JSON
    (path / WEIGHTS).write_bytes(bytes(data))


def _nan(tensors: dict) -> None:
    name = next(k for k in sorted(tensors) if k.endswith("up_proj.weight"))
    tensors[name][0, 0] = float("nan")


NAMES = ("good", "other", "missing", "unexpected", "truncated", "header", "context", "vocab", "nan",
         "badjson", "finished", "replaced", "finished-replaced")


@functools.cache
def _root() -> Path:
    return Path(tempfile.mkdtemp(prefix="drl-bad-models-"))


def models() -> dict[str, Path]:
    """Where the tiny inputs are (made by :func:`build`): good, other (other weights), damaged
    ones, and a finished run of the good one."""
    return {name: _root() / name for name in NAMES}


@functools.cache
def build() -> dict[str, Path]:
    """Make the tiny Llama directories and the finished run (once per process)."""
    paths = models()
    good = save_tiny_dir(paths["good"], "llama")
    save_tiny_dir(paths["other"], "llama", seed=1)
    changes = {
        "missing": _tensors(lambda t: t.pop("model.layers.0.mlp.up_proj.weight")),
        "unexpected": _tensors(lambda t: t.update({"model.extra.weight": torch.zeros(4)})),
        "truncated": lambda p: (p / WEIGHTS).write_bytes((p / WEIGHTS).read_bytes()[:20000]),
        "header": _header,
        "context": _config(max_position_embeddings=2 ** 40),
        "vocab": _config(vocab_size=100),
        "nan": _tensors(_nan),
        "badjson": lambda p: (p / "config.json").write_text('{"model_type": "llama",'),
    }
    for name, change in changes.items():
        _variant(_root(), name, good, change)
    from drlightning.cli import DRLightningCLI

    DRLightningCLI(args=tiny_fit(good, "--run.output_dir", str(paths["finished"])))
    shutil.copytree(good, paths["replaced"])  # a run of it, then its weights replaced in place
    DRLightningCLI(args=tiny_fit(paths["replaced"], "--run.output_dir", str(paths["finished-replaced"])))
    shutil.copy(paths["other"] / WEIGHTS, paths["replaced"] / WEIGHTS)
    return paths


def finished_copy(run: Path, which: str = "finished") -> Path:
    """A fresh copy of a finished tiny run at ``run``."""
    if run.exists():
        shutil.rmtree(run)
    shutil.copytree(build()[which], run)
    return run
