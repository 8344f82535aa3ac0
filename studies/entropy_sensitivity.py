"""Run-to-run sensitivity: SparseGPT 2:4 + DR with two entropy implementations equal up to rounding.

    python studies/entropy_sensitivity.py --seeds 0 1        # ≈ 17 min per run on 1 CPU thread

``fused`` is drlightning's objective (``entropy_over``: one s·log s pass for rows and columns);
``per-group`` sums :func:`group_entropy` per dimension, as before the fused version. Both are equal
in float64 (tests/test_objective.py); in float32 they round differently. Prints one JSON line per
run (final perplexity, mean layer pruning error, summed best entropy) and writes them to
studies/results/entropy_sensitivity.json.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import drlightning.rotation.objective as objective
from drlightning.lightning.calibration import CalibrationDataModule
from drlightning.lightning.rotation_module import RotationModule
from drlightning.models import load_model
from drlightning.pipeline.job import run_job
from drlightning.pipeline.options import EvalOptions, ExportOptions, MonitorOptions, RunOptions
from drlightning.rotation.entropy import entropy_over, group_entropy

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"fused": entropy_over,
            "per-group": lambda s, dims: sum(group_entropy(s, d) for d in dims)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--json", type=Path, default=ROOT / "studies" / "results" / "entropy_sensitivity.json")
    args = p.parse_args()
    model, tok = load_model()
    rows = []
    for seed in args.seeds:
        for name in args.variants:
            objective.entropy_over = VARIANTS[name]
            data = CalibrationDataModule(nsamples=32, seqlen=512, seed=seed)
            opts = RunOptions(output_dir=f"runs/bench/entropy-{name}-seed{seed}",
                              eval=EvalOptions(dense=False), export=ExportOptions(save=False),
                              monitor=MonitorOptions(tensorboard=False, progress=False,
                                                     picture_layers=[]))
            res = run_job(RotationModule(method="sparsegpt", pattern="2:4", steps=args.steps), data,
                          opts, loaded=(copy.deepcopy(model), tok))
            layers = res["layers"]
            row = {"seed": seed, "variant": name, "ppl": res["ppl"]["embedded"],
                   "mean_pruning_error": sum(x["pruning_error"] for x in layers) / len(layers),
                   "total_best_entropy": sum(x["best_loss"] for x in layers),
                   "device": res["device"]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    objective.entropy_over = entropy_over
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
