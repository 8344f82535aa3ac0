"""Per-layer pruning error vs rotation steps on the embedded default model.

    python studies/layer_steps.py --layers 0 1 --steps 0 50 200 --method sparsegpt --pattern 2:4 \
        --lr 0.01 0.03

For each chosen decoder layer (fed with the *dense* model's inputs), rotate for N steps with the
chosen objective and Adam learning rate(s) (no permutation, no guard), merge, prune and report the
layer's relative pruning error ‖pruned(X) − dense(X)‖ / ‖dense(X) − X‖ on the calibration
windows, plus the objective reached. Cheap way to see how many steps the objective needs.
Writes a table to docs/benchmarks.md (block ``layer-steps-<method>-<pattern>-<objective>-<nsamples>``).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

from drlightning.layer.capture import capture_layer_inputs, run_layer
from drlightning.layer.step import layer_step
from drlightning.lightning.calibration import CalibrationDataModule
from drlightning.lightning.rotation_module import RotationModule
from drlightning.models import HeadLayout, adapter_for, load_model
from drlightning.pipeline.options import MonitorOptions, RunOptions
from drlightning.pipeline.sequential import LayerLoop, fit_now
from drlightning.pipeline.trainers import default_trainer_factory

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # docblock.py, shared with the benchmarks
from docblock import write_block  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--layers", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, nargs="+", default=[0, 50, 200])
    p.add_argument("--method", default="sparsegpt")
    p.add_argument("--pattern", default="2:4")
    p.add_argument("--objective", default="entropy", help="entropy | pruned_mass")
    p.add_argument("--lr", type=float, nargs="+", default=[0.01], help="Adam learning rate(s)")
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = p.parse_args()
    model, tok = load_model()
    adapter, layout = adapter_for(model.config), HeadLayout.from_config(model.config)
    windows = CalibrationDataModule(nsamples=args.nsamples, seqlen=args.seqlen).calibration(tok)
    inputs = capture_layer_inputs(model, adapter, windows, 8)
    layers = adapter.decoder_layers(model)
    opts = RunOptions(monitor=MonitorOptions(tensorboard=False, progress=False))
    make = default_trainer_factory(opts, Path("runs/layer_steps"))
    rows = []
    for index in range(max(args.layers) + 1):
        dense_out = run_layer(layers[index], inputs)
        if index in args.layers:
            for steps, lr in [(s, lr) for s in args.steps for lr in (args.lr if s else args.lr[:1])]:
                t0 = time.perf_counter()
                module = RotationModule(method=args.method, pattern=args.pattern, steps=steps, lr=lr,
                                        objective=args.objective, permute=False, guard=False)
                spec = module.rotation.prune_spec(adapter, layout, False)
                _, rep, _ = layer_step(index, copy.deepcopy(layers[index]), inputs, dense_out, spec,
                                       fit_now(LayerLoop(module.rotation, make)))
                entropy = (f"{rep['initial_loss']:.4g} → {rep['best_loss']:.4g}"
                           if steps else "")
                err = rep["pruning_error"]
                rows.append((index, steps, lr if steps else "-", entropy, err,
                             time.perf_counter() - t0))
                print(rows[-1], flush=True)
        inputs = dense_out
    lines = [f"`python studies/layer_steps.py --layers {' '.join(map(str, args.layers))} --steps "
             f"{' '.join(map(str, args.steps))} --lr {' '.join(map(str, args.lr))} --method {args.method} "
             f"--pattern {args.pattern} --objective {args.objective} --nsamples {args.nsamples} "
             f"--seqlen {args.seqlen}` "
             f"({args.nsamples} × {args.seqlen} embedded calibration windows, dense inputs per layer, "
             f"2-core CPU, {torch.get_num_threads()} thread(s)).", "",
             f"| layer | steps | lr | {args.objective} (initial → best) | rel. pruning error | seconds |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {i} | {s} | {lr} | {e or '-'} | {err:.4f} | {sec:.0f} |"
              for i, s, lr, e, err, sec in rows]
    pattern = args.pattern.replace(":", "of").replace("%", "pct")
    write_block(args.out, f"layer-steps-{args.method}-{pattern}-{args.objective}-{args.nsamples}",
                f"Layer pruning error vs rotation steps ({args.method} {args.pattern}, "
                f"{args.objective}, {args.nsamples} windows)", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
