"""Did a change move any result? Tiny fits in every schedule and placement, one digest line each.

    PYTHONPATH=<checkout A> OMP_NUM_THREADS=1 python studies/same_results.py > a.txt
    PYTHONPATH=<checkout B> OMP_NUM_THREADS=1 python studies/same_results.py > b.txt
    diff a.txt b.txt        # empty: the same saved tensors, per-layer reports, export and ppl

Run from the repository root of either checkout (its tests/tiny.py builds the models); a checkout
on ``PYTHONPATH`` needs ``ln -s ../callbacks drlightning/callbacks`` (the install maps it). Each line:
case, perplexity, a digest of every saved tensor, of the per-layer reports (timings left out) and of
the export fields. Used for the layer-walker redesign: all eight lines equal before and after.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

CASES = {
    "seq-sparsegpt24-llama": ("llama", "sparsegpt", "2:4", ()),
    "seq-wanda50-qwen2-unrot": ("qwen2", "wanda", "50%", ("--run.monitor.unrotated_error", "true")),
    "seq-mag48-mistral": ("mistral", "magnitude", "4:8", ()),
    "plain-sparsegpt24": ("llama", "sparsegpt", "2:4", ("--model.steps", "0")),
    "parallel-wanda24": ("qwen2", "wanda", "2:4", ("--run.launch.mode", "parallel")),
    "shared-sparsegpt24": ("llama", "sparsegpt", "2:4", ("--model.r1", "shared")),
    "shared-wanda24-layerwise": ("qwen2", "wanda", "2:4", ("--model.r1", "shared",
                                                          "--run.launch.layerwise", "true")),
    "layerwise-sparsegpt24": ("mistral", "sparsegpt", "2:4", ("--run.launch.layerwise", "true")),
}
TIMINGS = {"seconds", "fit_seconds", "prune_seconds"}


def digest(values) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def tensors_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.glob("*.safetensors")):
        tensors = load_file(str(f))
        for k in sorted(tensors):
            h.update(k.encode())
            h.update(tensors[k].contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def export_fields(export: dict) -> dict:
    out = {k: v for k, v in export.items() if k != "path"}
    if "shared_rotation" in out:
        shared = dict(out["shared_rotation"])
        guard = {k: v for k, v in shared.pop("model_guard", {}).items() if k != "seconds"}
        out["shared_rotation"] = {k: v for k, v in shared.items() if "seconds" not in k} | {"guard": guard}
    return out


def main() -> None:
    sys.path.insert(0, str(Path.cwd()))
    from drlightning.cli import DRLightningCLI
    from tests.tiny import fit_args, save_tiny_dir

    torch.set_num_threads(1)
    for name, (arch, method, pattern, extra) in CASES.items():
        if len(sys.argv) > 1 and name not in sys.argv[1:]:
            continue
        tmp = Path(tempfile.mkdtemp())
        src = save_tiny_dir(tmp / "tiny", arch)
        with contextlib.redirect_stdout(sys.stderr):
            res = DRLightningCLI(args=fit_args(src, tmp / "run", method=method, pattern=pattern,
                                               steps=6, extra=extra)).results
        layers = [{k: v for k, v in r.items() if k not in TIMINGS} for r in res["layers"]]
        print(name, res["ppl"], tensors_digest(tmp / "run" / "model"), digest(layers),
              digest(export_fields(res["export"])), flush=True)


if __name__ == "__main__":
    main()
