"""Resumable run state: one atomically written safetensors file per finished layer.

``<run_dir>/state/`` holds ``fingerprint.json`` (the settings that shape the layer results),
``dense_eval.json`` (the cached dense evaluation), ``elapsed.json`` (wall time of earlier attempts)
and ``layer_XX.safetensors`` (the final layer weights, its rotation Q and its report). A re-run
with the same settings reloads the finished layers, replays them on the calibration inputs and
continues with the next layer. Trained rotations waiting to be merged (parallel mode's
``rotations/``, shared R1's ``shared_rotation.safetensors``) use :func:`save_rotations`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..atomic import atomic_write_text, atomic_write_with
from ..lightning.calibration import LATER_DEFAULTS as DATA_LATER_DEFAULTS
from ..rotation import RotatedLayer


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


CONFIG_KEY = {"run.mode": "run.launch.mode"}
"""Fingerprint keys kept from before the run options were grouped → the config key a user sets."""

LATER_DEFAULTS = {"r1_blocks": 1, "low_memory": False, "objective": "entropy",
                  "rotation_score": "pruner", "permute": False, "guard": False, "r1": "per_layer",
                  "layers_per_step": None, "role_weights": "equal", "holdout": 0.0,
                  "refit": "none", "refit_damping": 0.01, "refit_steps": 100, "refit_lr": 1e-4,
                  "best_on": "fitted"}
"""RotationModule settings added later, with the value that reproduces the earlier behaviour: a
fingerprint leaves them out while at that value, so older run directories still resume."""


def describe_differences(old: dict, new: dict) -> list[str]:
    """Human-readable ``key: old → new`` lines (config keys) for every setting that differs; a
    rotation setting left out of a fingerprint shows its earlier default (what to pass to resume)."""
    a, b = _flatten(old), _flatten(new)
    later = {**{f"model.{k}": v for k, v in LATER_DEFAULTS.items()},
             **{f"data.{k}": v for k, v in DATA_LATER_DEFAULTS.items()}}
    before = {k: a.get(k, later.get(k, "<unset>")) for k in set(a) | set(b)}
    after = {k: b.get(k, later.get(k, "<unset>")) for k in before}
    return [f"{CONFIG_KEY.get(k, k)}: {before[k]!r} → {after[k]!r}"
            for k in sorted(before) if before[k] != after[k]]


def atomic_save_tensors(tensors: dict, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file via a temporary file and ``os.replace`` (never half-written)."""
    atomic_write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def save_rotations(path: Path, q: torch.Tensor, r: torch.Tensor, report: dict) -> None:
    """Trained (Q, R2) and their report in one safetensors file, atomically."""
    tensors = {"q": q.detach().cpu().contiguous(), "r": r.detach().cpu().contiguous()}
    atomic_save_tensors(tensors, path, {"report": json.dumps(report, default=float)})


def load_rotations(path: Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(Q, R2, report) from a file written by :func:`save_rotations`."""
    t = load_file(str(path))
    return t["q"], t["r"], read_report(path)


def read_report(path: Path) -> dict:
    """The JSON ``report`` kept in a state file's safetensors metadata ({} if none)."""
    with safe_open(str(path), framework="pt") as fh:
        return json.loads((fh.metadata() or {}).get("report", "{}"))


class RunState:
    """The ``state/`` folder of one run directory."""

    def __init__(self, run_dir: Path, fingerprint: dict) -> None:
        self.dir = Path(run_dir) / "state"
        self.fingerprint = json.loads(json.dumps(fingerprint, default=str))

    def finished_work(self) -> list[Path]:
        """Files of finished work: saved layers and (parallel mode) trained rotations."""
        return sorted([*self.dir.glob("layer_*.safetensors"),
                       *(self.dir / "rotations").glob("*.safetensors")])

    def check(self) -> bool:
        """Before any work: refuse a directory whose finished work has other settings (nothing is
        written). Returns True if the directory must be (re)claimed by :meth:`claim`."""
        path = self.dir / "fingerprint.json"
        if not path.is_file():
            return True
        old = json.loads(path.read_text(encoding="utf-8"))
        diff = describe_differences(old, self.fingerprint)
        if not diff:
            return False
        if self.finished_work():
            raise ValueError(
                f"run directory {self.dir.parent} holds finished layers of a run with other "
                "settings; refusing to mix them. Differences (saved → now):\n  "
                + "\n  ".join(diff)
                + "\nUse another run.output_dir, or delete the directory to start over.")
        return True

    def claim(self) -> None:
        """Record our settings once the run's checks have passed. A directory left by a run with
        other settings that finished no layer is reused (its cached results are dropped)."""
        path = self.dir / "fingerprint.json"
        if path.is_file():
            print(f"reusing {self.dir.parent}: it held an unfinished run with other settings "
                  "(no finished layer)", flush=True)
            for stale in ("dense_eval.json", "elapsed.json"):
                (self.dir / stale).unlink(missing_ok=True)
        atomic_write_text(path, json.dumps(self.fingerprint, indent=2, sort_keys=True) + "\n")

    def check_or_claim(self) -> None:
        """:meth:`check`, then :meth:`claim` if needed (for callers with no checks in between)."""
        if self.check():
            self.claim()

    def layer_path(self, index: int) -> Path:
        return self.dir / f"layer_{index:02d}.safetensors"

    def finished_layers(self, n_layers: int) -> int:
        """Number of leading layers (0, 1, …) whose state file exists."""
        done = 0
        while done < n_layers and self.layer_path(done).is_file():
            done += 1
        return done

    def save_layer(self, index: int, layer: nn.Module, report: dict) -> None:
        """Write the finished layer (weights, rotation, report) atomically."""
        rotated = isinstance(layer, RotatedLayer)
        inner = layer.inner if rotated else layer
        tensors = {f"layer.{k}": v.detach().cpu().contiguous() for k, v in inner.state_dict().items()}
        if rotated:
            tensors["rotation"] = layer.rotation.detach().cpu().contiguous()
        atomic_save_tensors(tensors, self.layer_path(index), {"report": json.dumps(report, default=float)})

    def layer_tensors(self, index: int) -> tuple[dict, torch.Tensor | None, dict]:
        """(layer state_dict, rotation Q or None, report) of finished layer ``index``, on CPU."""
        path = self.layer_path(index)
        tensors = load_file(str(path))
        rotation = tensors.pop("rotation", None)
        return {k.removeprefix("layer."): v for k, v in tensors.items()}, rotation, read_report(path)

    def load_layer(self, index: int, layer: nn.Module,
                   device: torch.device | None = None) -> tuple[nn.Module, dict]:
        """Restore layer ``index`` into ``layer`` (strictly); returns (layer or wrapper, report).

        A layer on the ``meta`` device (layer-by-layer loading) gets its tensors assigned on
        ``device``.
        """
        state, rotation, report = self.layer_tensors(index)
        param = next(layer.parameters())
        device = device or param.device
        layer.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=True,
                              assign=param.is_meta)
        if rotation is not None:
            layer = RotatedLayer(layer, rotation.to(device))
        return layer, report

    def load_json(self, name: str) -> dict | None:
        path = self.dir / name
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def save_json(self, name: str, data: dict) -> None:
        atomic_write_text(self.dir / name, json.dumps(data, indent=2) + "\n")


class RunClock:
    """Wall time of a run over all its attempts: the earlier attempts' time up to their last saved
    layer (``state/elapsed.json``) plus this attempt's."""

    def __init__(self, state: RunState, start: float | None = None) -> None:
        self.state = state
        self.start = time.perf_counter() if start is None else start
        self.earlier = float((state.load_json("elapsed.json") or {}).get("seconds", 0.0))

    def this_run(self) -> float:
        return time.perf_counter() - self.start

    def total(self) -> float:
        return self.earlier + self.this_run()

    def save(self) -> None:
        self.state.save_json("elapsed.json", {"seconds": self.total()})
