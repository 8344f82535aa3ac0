"""Block-diagonal R1 (paper Appendix E) on the default model: quality and time per block count.

    python studies/block_r1.py                    # SparseGPT 2:4, 50 steps, k = 1 2 4 8
    python studies/block_r1.py --blocks 1 4 --steps 100

Loads SmolLM2-135M-Instruct once; runs the plain pruner (steps 0) and DenoiseRotator with R1 as
k diagonal blocks of hidden/k for each k (k = 1 is the paper's dense R1), all in this process with
the same thread count. Writes the table between ``<!-- blockr1:begin -->`` and
``<!-- blockr1:end -->`` in docs/benchmarks.md and the numbers to studies/results/block_r1.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from drlightning.lightning.calibration import CalibrationDataModule
from drlightning.lightning.rotation_module import RotationModule
from drlightning.models import load_model
from drlightning.pipeline.job import run_job
from drlightning.pipeline.options import EvalOptions, ExportOptions, MonitorOptions, RunOptions
from drlightning.reporting.results import device_name, versions

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # docblock.py, shared with the benchmarks
from docblock import write_block  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--method", default="sparsegpt")
    p.add_argument("--pattern", default="2:4")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--blocks", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--json", type=Path, default=ROOT / "studies" / "results" / "block_r1.json")
    args = p.parse_args()
    start = time.perf_counter()
    model, tok = load_model()
    data = CalibrationDataModule(nsamples=args.nsamples, seqlen=args.seqlen, seed=0)
    dense, rows = None, []
    for k in [None, *args.blocks]:
        steps = 0 if k is None else args.steps
        tag = "plain" if k is None else f"k{k}"
        opts = RunOptions(output_dir=f"runs/bench/block_r1-{tag}", eval=EvalOptions(dense=dense is None),
                          monitor=MonitorOptions(tensorboard=False, progress=False, picture_layers=[]),
                          export=ExportOptions(save=False))
        module = RotationModule(method=args.method, pattern=args.pattern, steps=steps,
                                r1_blocks=k or 1)
        t0 = time.perf_counter()
        res = run_job(module, data, opts, loaded=(copy.deepcopy(model), tok))
        dense = dense or res["dense_ppl"]  # measured once, by the first run
        row = {"blocks": k, "ppl": res["ppl"]["embedded"], "seconds": time.perf_counter() - t0,
               "layer_seconds": sum(layer["seconds"] for layer in res["layers"])}
        rows.append(row)
        print(json.dumps(row), flush=True)
    d, plain = dense["embedded"], rows[0]["ppl"]
    lines = [f"SmolLM2-135M-Instruct, {args.method} {args.pattern}, {args.steps} steps, "
             f"{args.nsamples} × {args.seqlen} embedded calibration tokens, dense perplexity {d:.3f}, "
             f"plain pruner {plain:.3f}; {device_name(torch.device('cpu'))}, "
             f"{time.perf_counter() - start:.0f} s in all. Layer time = rotation + merge + pruning "
             f"of all layers. Command: `python studies/block_r1.py {' '.join(sys.argv[1:])}`.",
             "", "| R1 blocks k | block size | ppl | gap closed | layer time s |", "|---|---|---|---|---|"]
    hidden = model.config.hidden_size
    for row in rows[1:]:
        closed = (plain - row["ppl"]) / (plain - d)
        lines.append(f"| {row['blocks']} | {hidden // row['blocks']} | {row['ppl']:.3f} | "
                     f"{100 * closed:.1f}% | {row['layer_seconds']:.0f} |")
    text = "\n".join(lines)
    print(text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                     "dense": d, "rows": rows, "versions": versions()}, indent=2) + "\n")
    write_block(args.out, "blockr1", "Block-diagonal R1", text)


if __name__ == "__main__":
    main()
