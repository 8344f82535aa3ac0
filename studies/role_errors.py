"""Where a layer's pruning error comes from: each group of linears pruned alone, plain vs rotated.

    python studies/role_errors.py --pruner sparsegpt:2:4 --layers 0 8 14 27

Each chosen decoder layer gets the *dense* model's calibration inputs (32 × 512 embedded tokens).
Two candidates: the layer as it is, and the layer rotated as the shipped config rotates it (pruned
mass, 50 steps; no permutation, no guard). Each is pruned the way the pipeline prunes
(true-sequential groups q,k,v → o → gate,up → down); then the layer's error
‖pruned(X) − dense(X)‖ / ‖dense(X) − X‖ is measured with every group pruned and with one group
pruned at a time (the other groups' weights put back to their unpruned values). Writes a table to
docs/benchmarks.md (block ``role-errors-<pruner>``).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from drlightning.layer.capture import capture_layer_inputs, run_layer
from drlightning.layer.prune import GROUPS, PruneSpec, prune_layer
from drlightning.layer.role_weights import group_errors
from drlightning.layer.step import LayerTask, merge_layer, relative_error
from drlightning.lightning.calibration import CalibrationDataModule
from drlightning.lightning.rotation_module import RotationModule
from drlightning.models import HeadLayout, adapter_for, load_model
from drlightning.pipeline.options import MonitorOptions, RunOptions
from drlightning.pipeline.sequential import LayerLoop, fit_rotation
from drlightning.pipeline.trainers import default_trainer_factory
from drlightning.rotation import fold_norms

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # docblock.py, shared with the benchmarks
from docblock import write_block  # noqa: E402


def errors_of(layer, inputs, dense_out, spec: PruneSpec) -> dict[str, float]:
    """The layer error with every group pruned ("all") and with each group pruned alone."""
    pruned, _ = prune_layer(copy.deepcopy(layer), inputs, spec)
    return {"all": relative_error(run_layer(pruned, inputs), dense_out, inputs),
            **group_errors(layer, inputs, spec)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pruner", default="sparsegpt:2:4", help="method:pattern")
    p.add_argument("--layers", type=int, nargs="+", default=[0, 8, 14, 27])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = p.parse_args()
    method, pattern = args.pruner.split(":", 1)
    start = time.perf_counter()
    model, tok = load_model()
    adapter, layout = adapter_for(model.config), HeadLayout.from_config(model.config)
    template = RotationModule(method=method, pattern=pattern, steps=args.steps,
                              objective="pruned_mass", permute=False, guard=False)
    spec = template.rotation.prune_spec(adapter, layout)
    opts = RunOptions(monitor=MonitorOptions(tensorboard=False, progress=False))
    loop = LayerLoop(template.rotation, default_trainer_factory(opts, Path("runs/role_errors")))
    windows = CalibrationDataModule(nsamples=32, seqlen=512).calibration(tok)
    inputs = capture_layer_inputs(model, adapter, windows, 8)
    layers = adapter.decoder_layers(model)
    rows = []
    for index in range(max(args.layers) + 1):
        dense_out = run_layer(layers[index], inputs)
        if index in args.layers:
            folded = copy.deepcopy(layers[index])
            fold_norms(folded, adapter)
            q, r, _ = fit_rotation(LayerTask(index, folded, inputs, spec), loop)
            rotated, _ = merge_layer(folded, q, r, inputs, adapter, layout, index)
            row = {"layer": index, "plain": errors_of(layers[index], inputs, dense_out, spec),
                   "rotated": errors_of(rotated, inputs, dense_out, spec)}
            rows.append(row)
            print(json.dumps(row), flush=True)
        inputs = dense_out
    keys = ["all", *(",".join(g) for g in GROUPS)]
    command = (f"python studies/role_errors.py --pruner {args.pruner} --layers "
               f"{' '.join(map(str, args.layers))} --steps {args.steps}")
    seconds = time.perf_counter() - start
    lines = [f"`{command}` (dense inputs per layer, 32 × 512 embedded calibration tokens, "
             f"{torch.get_num_threads()} thread(s), {seconds:.0f} s). Cells: layer pruning error, "
             "plain → rotated (pruned mass), with every group pruned and with one group pruned "
             "alone.", "", "| layer | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for row in rows + [{"layer": "mean", **{c: {k: sum(r[c][k] for r in rows) / len(rows) for k in keys}
                                           for c in ("plain", "rotated")}}]:
        lines.append(f"| {row['layer']} | " + " | ".join(
            f"{row['plain'][k]:.4f} → {row['rotated'][k]:.4f}" for k in keys) + " |")
    name = f"role-errors-{method}-{pattern.replace(':', 'of').replace('%', 'pct')}"
    write_block(args.out, name, f"Pruning error by group of linears ({method} {pattern})",
                "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
