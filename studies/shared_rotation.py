"""Shared R1 (``model.r1: shared``): the rotation phase on the default model, all layers per step
(full batch) vs a random subset of layers per step (``model.layers_per_step``).

    python studies/shared_rotation.py                           # 50 steps; 5, 10, all layers
    python studies/shared_rotation.py --steps 100 --layers-per-step 10 0

Loads SmolLM2-135M-Instruct once, makes the dense calibration pass that turns every layer into an
item of the "layers" dataset once (32 × 512 embedded windows, seed 0), then trains the shared
rotation module from the identity for each setting in this process. Each row reports the summed
objective over *all* layers at the returned rotations (so subset runs are judged on the same
number as full-batch ones), the training time and the growth of the resident set during training
(peak RSS reset before each setting through /proc/self/clear_refs). Writes the table between
``<!-- sharedrot:begin -->`` and ``<!-- sharedrot:end -->`` in docs/benchmarks.md and the numbers
to studies/results/shared_rotation.json.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import sys
import time
from pathlib import Path

import torch

from drlightning.lightning.calibration import CalibrationDataModule
from drlightning.lightning.rotation_module import RotationModule
from drlightning.lightning.shared_rotation import (
    LayersDataModule,
    SharedRotationModule,
    summed_objective,
)
from drlightning.models import load_model
from drlightning.models.adapters import HeadLayout, adapter_for
from drlightning.pipeline.job import quiet_lightning
from drlightning.pipeline.options import MonitorOptions, RunOptions
from drlightning.pipeline.sequential import LayerLoop
from drlightning.pipeline.shared import dense_items
from drlightning.pipeline.trainers import default_trainer_factory
from drlightning.reporting.results import device_name, versions

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # docblock.py, shared with the benchmarks
from docblock import write_block  # noqa: E402


def rss_kib(field: str) -> int:
    """VmRSS / VmHWM of this process in KiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> None:
    """Hand freed memory back to the OS, then reset VmHWM to the current RSS."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")


def train(items, layout, template, loop: LayerLoop, per_step: int | None) -> dict:
    """One shared-rotation training from the identity; the row of the table."""
    module = SharedRotationModule(layout, len(items), template.rotation.spec, template.hparams.lr)
    data = LayersDataModule(items, per_step)
    reset_peak()
    before, start = rss_kib("VmRSS"), time.perf_counter()
    loop.make_trainer(f"shared-{per_step or 'all'}", template.rotation).fit(module, datamodule=data)
    seconds = time.perf_counter() - start
    peak = rss_kib("VmHWM") - before
    q, r = module.best_rotations()
    eye_q = torch.eye(layout.hidden)
    eye_r = torch.eye(layout.head_dim).expand(len(items), layout.n_kv_heads, -1, -1)
    with torch.no_grad():
        initial = summed_objective(items, eye_q, eye_r, layout, template.rotation.spec).item()
        final = summed_objective(items, q, r, layout, template.rotation.spec).item()
    return {"layers_per_step": per_step or len(items), "steps": template.hparams.steps,
            "initial": initial, "final": final, "reduction": 1 - final / initial,
            "seconds": seconds, "peak_rss_growth_mib": peak / 1024}


def setup(run_name: str, nsamples: int = 32, seqlen: int = 512, **settings):
    """The default model, its calibration windows (seed 0) and a quiet layer loop around a
    shared-R1 ``RotationModule(**settings)``: (model, adapter, layout, windows, template, loop)."""
    torch.manual_seed(0)
    model, tok = load_model()
    adapter, layout = adapter_for(model.config), HeadLayout.from_config(model.config)
    windows = CalibrationDataModule(nsamples=nsamples, seqlen=seqlen, seed=0).calibration(tok)
    template = RotationModule(r1="shared", **settings)
    opts = RunOptions(output_dir=f"runs/bench/{run_name}",
                      monitor=MonitorOptions(tensorboard=False, progress=False, picture_layers=[]))
    loop = LayerLoop(template.rotation, default_trainer_factory(opts, Path(opts.output_dir)), progress=False)
    return model, adapter, layout, windows, template, loop


def machine() -> str:
    """'cpu (…), N thread(s) (OMP_NUM_THREADS=…)' for the tables' first line."""
    return (f"{device_name(torch.device('cpu'))}, {torch.get_num_threads()} thread(s) "
            f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")


def publish(args, block: str, heading: str, text: str, **numbers) -> None:
    """Print the table, write it into docs/benchmarks.md and the numbers to ``args.json``."""
    print(text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                     "threads": torch.get_num_threads(), **numbers,
                                     "versions": versions()}, indent=2) + "\n")
    write_block(args.out, block, heading, text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--method", default="sparsegpt")
    p.add_argument("--pattern", default="2:4")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--layers-per-step", type=int, nargs="+", default=[5, 10, 0],
                   help="0 = every layer per step (full batch)")
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--json", type=Path, default=ROOT / "studies" / "results" / "shared_rotation.json")
    args = p.parse_args()
    model, adapter, layout, windows, template, loop = setup(
        "shared_rotation", args.nsamples, args.seqlen, method=args.method, pattern=args.pattern,
        steps=args.steps, role_weights="equal")  # as recorded (before auto measured them)
    start, before = time.perf_counter(), rss_kib("VmRSS")
    with quiet_lightning():
        items = dense_items(model, adapter, windows, loop)
    pass_seconds, items_mib = time.perf_counter() - start, (rss_kib("VmRSS") - before) / 1024
    rows = []
    for per_step in args.layers_per_step:
        with quiet_lightning():
            row = train(items, layout, template, loop, per_step or None)
        rows.append(row)
        print(json.dumps(row), flush=True)
    lines = [f"SmolLM2-135M-Instruct ({len(items)} layers), {args.method} {args.pattern}, objective "
             f"{template.rotation.spec.objective} (equal role weights), {args.steps} steps from the "
             "identity, lr "
             f"{template.hparams.lr}; {args.nsamples} × {args.seqlen} embedded calibration tokens; "
             f"{machine()}. Dense pass that "
             f"builds the layer items: {pass_seconds:.0f} s, resident set +{items_mib:.0f} MiB. "
             "Objective = the sum over all layers at the returned rotations (subset runs return "
             "the last iterate; full batch the best). Command: `python studies/shared_rotation.py"
             f" {' '.join(sys.argv[1:])}`.", "",
             "| layers per step | objective: identity → returned | reduction | training s | "
             "peak RSS growth MiB |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['layers_per_step']} | {row['initial']:.1f} → {row['final']:.1f} | "
                     f"{100 * row['reduction']:.1f}% | {row['seconds']:.0f} | "
                     f"{row['peak_rss_growth_mib']:.0f} |")
    publish(args, "sharedrot", "Shared R1: all layers per step vs a subset", "\n".join(lines),
            dense_pass_seconds=pass_seconds, items_mib=items_mib, rows=rows)


if __name__ == "__main__":
    main()
