"""Record the numbers tests/test_reproduction.py compares with, on this machine.

The test checks that today's float32 paper method reproduces commit 60bbeaf (the last release of
the paper-only method) bit for bit. float32 sums round differently on different CPUs, so the
numbers are recorded per machine, from that commit:

    git worktree add ../drl-60bbeaf 60bbeaf && cd ../drl-60bbeaf
    ln -s ../callbacks drlightning/callbacks      # the package maps callbacks/ only when installed
    PYTHONPATH=. OMP_NUM_THREADS=1 python <this checkout>/tests/record_reproduction.py

and add the printed dictionary to ``RECORDINGS`` in the test. Run in today's checkout with
``--model.objective entropy --model.rotation_score pruner --model.permute false --model.guard
false`` it prints what the test computes, to see which number moved.
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

CASES = {"llama": ("sparsegpt", "2:4"), "qwen2": ("wanda", "50%"), "mistral": ("magnitude", "4:8")}


def digest(path: Path) -> str:
    """sha256 over every tensor's name and bytes, in name order (as the test computes it)."""
    tensors, h = load_file(str(path)), hashlib.sha256()
    for key in sorted(tensors):
        h.update(key.encode())
        h.update(tensors[key].contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def recording(run: Path) -> dict:
    """What the test compares, from one finished run directory: per-layer best loss and pruning
    error, perplexity (as exact float hex) and the saved tensors' digest."""
    res = json.loads((run / "results.json").read_text())
    # the entropy was called best_entropy before the objective became a choice
    loss = [float(r.get("best_loss", r.get("best_entropy"))).hex() for r in res["layers"]]
    return {"best_loss": loss,
            "pruning_error": [float(r["pruning_error"]).hex() for r in res["layers"]],
            "ppl": float(res["ppl"]["embedded"]).hex(),
            "tensors": digest(run / "model" / "model.safetensors")}


def main() -> None:
    sys.path.insert(0, str(Path.cwd()))  # the checkout being recorded, with its own tests/tiny.py
    from drlightning.cli import DRLightningCLI
    from tests.tiny import fit_args, save_tiny_dir

    torch.set_num_threads(1)
    out = {}
    for arch, (method, pattern) in CASES.items():
        tmp = Path(tempfile.mkdtemp())
        src = save_tiny_dir(tmp / "tiny", arch)
        with contextlib.redirect_stdout(sys.stderr):  # stdout: the recording only
            DRLightningCLI(args=fit_args(src, tmp / "run", method=method, pattern=pattern,
                                         steps=20, extra=tuple(sys.argv[1:])))
        out[arch] = recording(tmp / "run")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
