"""Shared R1: where the shared rotation starts — the identity, the principal directions of the
layers' inputs (sorted by variance), or those directions interleaved over the N:M groups — judged
by the summed objective and by the real summed pruning error of the layers on dense inputs.

    OMP_NUM_THREADS=1 python studies/shared_start.py            # sparsegpt 2:4, 50 steps

One dense calibration pass makes the layer items (32 × 512 embedded windows, seed 0); the input
covariance is Σ H/tr(H) over every layer's attention and MLP input Hessians (recovered from the
items). For each start the shared module is trained for ``--steps`` steps; the model-wide guard's
pass then prunes every layer (dense inputs) with the start itself and with the trained rotations
and sums the layer errors (the identity's sum is the plain pruner's). Writes the table between
``<!-- sharedstart:begin -->`` and ``<!-- sharedstart:end -->`` in docs/benchmarks.md and the
numbers to studies/results/shared_start.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from drlightning.lightning.shared_rotation import LayersDataModule, SharedRotationModule, summed_objective
from drlightning.pipeline.job import quiet_lightning
from drlightning.pipeline.shared import dense_items, model_guard
from drlightning.pruning import parse_pattern

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pca_start import input_covariance, pca_start  # noqa: E402
from shared_rotation import machine, publish, setup  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def hessians_of(items, method: str) -> list[torch.Tensor]:
    """Every layer's attention and MLP input Hessians (sparsegpt items keep their inverses)."""
    out = []
    for item in items:
        for m in (item.frozen.m_attn, item.frozen.m_mlp):
            out.append(torch.linalg.inv(m.double()) if method == "sparsegpt" else m)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--method", default="sparsegpt")
    p.add_argument("--pattern", default="2:4")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--json", type=Path, default=ROOT / "studies" / "results" / "shared_start.json")
    args = p.parse_args()
    model, adapter, layout, windows, template, loop = setup(
        "shared_start", method=args.method, pattern=args.pattern, steps=args.steps,
        objective="pruned_mass", permute=True, guard=True, rotation_score="pruner",
        role_weights="equal")
    with quiet_lightning():
        items = dense_items(model, adapter, windows, loop)
    cov = input_covariance(hessians_of(items, args.method))
    m = parse_pattern(args.pattern).m
    starts = {"identity": torch.eye(layout.hidden), "principal directions": pca_start(cov)}
    if m:
        starts[f"principal directions, interleaved over groups of {m}"] = pca_start(cov, m)
    eye_r = torch.eye(layout.head_dim).repeat(len(items), layout.n_kv_heads, 1, 1)
    rows = []
    for name, q0 in starts.items():
        start = time.perf_counter()
        module = SharedRotationModule(layout, len(items), template.rotation.spec, template.hparams.lr,
                                      q_init=q0)
        with quiet_lightning():
            trainer = loop.make_trainer("shared-start", template.rotation)
            trainer.fit(module, datamodule=LayersDataModule(items))
        q, r = module.best_rotations()
        fit_s = time.perf_counter() - start
        with torch.no_grad():
            obj0 = summed_objective(items, q0, eye_r, layout, template.rotation.spec).item()
            obj1 = summed_objective(items, q, r, layout, template.rotation.spec).item()
        with quiet_lightning():
            at_start = model_guard(model, adapter, windows, loop, q0, eye_r)
            trained = model_guard(model, adapter, windows, loop, q, r)
        row = {"start": name, "objective_start": obj0, "objective_trained": obj1,
               "best_step": module.track.best_step, "error_identity": trained["identity"],
               "error_start": at_start["shared"], "error_trained": trained["shared"],
               "fit_seconds": fit_s}
        rows.append(row)
        print(json.dumps(row), flush=True)
    lines = [f"SmolLM2-135M-Instruct ({len(items)} layers), {args.method} {args.pattern}, shared R1, "
             f"objective pruned_mass, {args.steps} steps, lr {template.hparams.lr}; 32 × 512 embedded "
             f"calibration tokens (seed 0); {machine()}. Pruning error = the "
             "layers' relative output errors summed over the model, each layer pruned on the dense "
             "model's inputs (the model-wide guard's pass; R2 = identity at the start). Command: "
             f"`python studies/shared_start.py {' '.join(sys.argv[1:])}`.", "",
             "| start | objective: start → trained (best step) | summed pruning error: plain | "
             "at the start | trained | fit s |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['start']} | {row['objective_start']:.1f} → "
                     f"{row['objective_trained']:.1f} ({row['best_step']}) | "
                     f"{row['error_identity']:.3f} | {row['error_start']:.3f} | "
                     f"{row['error_trained']:.3f} | {row['fit_seconds']:.0f} |")
    publish(args, "sharedstart", "Shared R1: where the rotation starts", "\n".join(lines), rows=rows)


if __name__ == "__main__":
    main()
