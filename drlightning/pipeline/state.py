"""Resumable run state: one atomically written safetensors file per finished layer.

``<run_dir>/state/`` holds ``fingerprint.json`` (the settings that shape the layer results),
``dense_eval.json`` (the cached dense evaluation), ``elapsed.json`` (wall time of earlier attempts)
and ``layer_XX.safetensors`` (the final layer weights, its rotation Q and its report). A re-run
with the same settings reloads the finished layers, replays them on the calibration inputs and
continues with the next layer. Trained rotations waiting to be merged (parallel mode's
``rotations/``, shared R1's ``shared_rotation.safetensors``) use :func:`save_rotations`.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ..atomic import atomic_write_text
from ..eval.dense_cache import tensors_digest
from ..lightning.calibration import LATER_DEFAULTS as DATA_LATER_DEFAULTS
from ..rotation import RotatedLayer
from .state_files import (  # noqa: F401 (re-exported: state files are read through this module)
    atomic_save_tensors,
    load_rotations,
    read_report,
    safetensors_metadata,
    save_rotations,
)


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


class RunState:
    """The ``state/`` folder of one run directory.

    Every layer file carries its index, a checksum of its tensors and the digest of the run's
    fingerprint (safetensors metadata); a resumed run checks all three before it trusts a file.
    """

    def __init__(self, run_dir: Path, fingerprint: dict) -> None:
        self.dir = Path(run_dir) / "state"
        self.fingerprint = json.loads(json.dumps(fingerprint, default=str))

    @property
    def run_id(self) -> str:
        """Digest of the fingerprint: which run a layer file belongs to."""
        return hashlib.blake2b(json.dumps(self.fingerprint, sort_keys=True).encode(),
                               digest_size=12).hexdigest()

    def with_content(self, content: dict) -> RunState:
        """This state with the run's content digests (weights, config, calibration) added."""
        return RunState(self.dir.parent, {**self.fingerprint, "content": content})

    def finished_work(self) -> list[Path]:
        """Files of finished work: saved layers and (parallel mode) trained rotations."""
        return sorted([*self.dir.glob("layer_*.safetensors"),
                       *(self.dir / "rotations").glob("*.safetensors")])

    def check(self) -> bool:
        """Before any work: refuse a directory whose finished work has other settings (nothing is
        written). Returns True if the directory must be (re)claimed by :meth:`claim`.

        Before the model is loaded the fingerprint has no ``content`` yet: only the settings are
        compared then; :meth:`with_content` gives the state whose check compares everything."""
        path = self.dir / "fingerprint.json"
        if not path.is_file():
            return True
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            raise ValueError(f"{path} is not valid JSON (damaged); delete the run directory "
                             f"{self.dir.parent} to start over, or use another output directory") from None
        new = self.fingerprint
        if "content" not in new:
            old = {k: v for k, v in old.items() if k != "content"}
        diff = describe_differences(old, new)
        if not diff:
            return False
        if self.finished_work():
            why = ("; it was made before drlightning recorded what a run read (weights, config, "
                   "calibration tokens), so it cannot be checked" if "content" in new
                   and "content" not in old else "")
            raise ValueError(
                f"run directory {self.dir.parent} holds finished layers of a run with other "
                f"settings or inputs{why}; refusing to mix them. Differences (saved → now):\n  "
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
        """Number of leading layers (0, 1, …) whose state file exists; each is checked (header,
        size, index, run) first, so a damaged or foreign file fails before any work."""
        done = 0
        while done < n_layers and self.layer_path(done).is_file():
            self.layer_metadata(done)
            done += 1
        return done

    def _bad(self, index: int, what: str) -> ValueError:
        return ValueError(f"{self.layer_path(index)} {what}; delete it to recompute that layer "
                          "(and the layers after it) on the next run")

    def layer_metadata(self, index: int) -> dict[str, str]:
        """The checked metadata of finished layer ``index`` (a one-line error names a truncated,
        unreadable or foreign file)."""
        try:
            meta = safetensors_metadata(self.layer_path(index))
        except ValueError as err:
            raise self._bad(index, str(err)) from None
        if meta.get("index") != str(index):
            raise self._bad(index, f"holds layer {meta.get('index', '?')}, not layer {index} "
                                   "(copied or renamed)")
        if meta.get("run") != self.run_id:
            raise self._bad(index, "was written by another run (other settings or inputs)")
        return meta

    def save_layer(self, index: int, layer: nn.Module, report: dict) -> None:
        """Write the finished layer (weights, rotation, report) atomically, with its index, a
        checksum of its tensors and the run's digest."""
        rotated = isinstance(layer, RotatedLayer)
        inner = layer.inner if rotated else layer
        tensors = {f"layer.{k}": v.detach().cpu().contiguous() for k, v in inner.state_dict().items()}
        if rotated:
            tensors["rotation"] = layer.rotation.detach().cpu().contiguous()
        meta = {"report": json.dumps(report, default=float), "index": str(index),
                "run": self.run_id, "checksum": tensors_digest(sorted(tensors.items()))}
        atomic_save_tensors(tensors, self.layer_path(index), meta)

    def layer_tensors(self, index: int) -> tuple[dict, torch.Tensor | None, dict]:
        """(layer state_dict, rotation Q or None, report) of finished layer ``index``, on CPU;
        its checksum is checked."""
        path = self.layer_path(index)
        meta = self.layer_metadata(index)
        try:
            tensors = load_file(str(path))
        except Exception as err:
            raise self._bad(index, f"cannot be read ({type(err).__name__}: {err})") from None
        if tensors_digest(sorted(tensors.items())) != meta.get("checksum"):
            raise self._bad(index, "is damaged (its tensors do not match their checksum)")
        rotation = tensors.pop("rotation", None)
        return ({k.removeprefix("layer."): v for k, v in tensors.items()}, rotation,
                json.loads(meta.get("report", "{}")))

    def load_layer(self, index: int, layer: nn.Module,
                   device: torch.device | None = None) -> tuple[nn.Module, dict]:
        """Restore layer ``index`` into ``layer`` (strictly); returns (layer or wrapper, report).

        A layer on the ``meta`` device (layer-by-layer loading) gets its tensors assigned on
        ``device``.
        """
        state, rotation, report = self.layer_tensors(index)
        param = next(layer.parameters())
        device = device or param.device
        try:
            layer.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=True,
                                  assign=param.is_meta)
        except RuntimeError as err:
            raise self._bad(index, f"does not fit this model's layer ({str(err).splitlines()[0]})") \
                from None
        if rotation is not None:
            layer = RotatedLayer(layer, rotation.to(device))
        return layer, report

    def load_json(self, name: str) -> dict | None:
        path = self.dir / name
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            return None  # a damaged cache file: recomputed

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
