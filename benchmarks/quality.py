"""Quality benchmark on the embedded default model: dense vs pruned vs pruned + DenoiseRotator.

    python benchmarks/quality.py                      # CPU protocol documented in docs/benchmarks.md
    python benchmarks/quality.py --steps 100 --nsamples 64

Loads SmolLM2-135M-Instruct once, evaluates the dense model once, then runs each (method, pattern)
with ``steps=0`` (plain pruner) and ``steps=N`` (DenoiseRotator) on a fresh copy of the model. Writes
``benchmarks/results/quality.json`` and the table section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from drlightning.calibration_data import CalibrationDataModule
from drlightning.models import load_model
from drlightning.results import device_name, versions
from drlightning.rotation_module import RotationModule
from drlightning.run import RunOptions, run_job

ROOT = Path(__file__).resolve().parents[1]
RUNS = [("sparsegpt", "2:4"), ("wanda", "2:4"), ("sparsegpt", "50%"), ("magnitude", "2:4")]
BEGIN, END = "<!-- quality:begin -->", "<!-- quality:end -->"


def gap_closed(dense: float, pruned: float, rotated: float) -> float:
    """Share of the perplexity gap to dense that the rotation closes."""
    return (pruned - rotated) / (pruned - dense)


def markdown(res: dict) -> str:
    a = res["args"]
    lines = [
        BEGIN,
        f"Model: SmolLM2-135M-Instruct (embedded GGUF, float32). Calibration: {a['nsamples']} x "
        f"{a['seqlen']} tokens from the embedded text (seed {a['seed']}); rotation: {a['steps']} "
        f"steps/layer, Adam lr {a['lr']}, grad clip 1.0. Perplexity: embedded evaluation text, "
        f"{a['seqlen']}-token windows. Device: {res['device']}. Wall time: {res['seconds']:.0f} s. "
        f"Command: `python benchmarks/quality.py {res['argv']}`.",
        "",
        f"Dense perplexity: **{res['dense']:.3f}**",
        "",
        "| method | pattern | pruned ppl | + DR ppl | gap closed | DR run s |",
        "|---|---|---|---|---|---|",
    ]
    for row in res["rows"]:
        lines.append(f"| {row['method']} | {row['pattern']} | {row['plain']:.3f} | "
                     f"{row['dr']:.3f} | {100 * row['gap_closed']:.1f}% | {row['dr_seconds']:.0f} |")
    lines.append(END)
    return "\n".join(lines)


def write_doc(text: str, path: Path) -> None:
    doc = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if BEGIN in doc:
        head, rest = doc.split(BEGIN, 1)
        doc = head + text + rest.split(END, 1)[1]
    else:
        doc = doc.rstrip() + "\n\n## Quality (default model)\n\n" + text + "\n"
    path.write_text(doc, encoding="utf-8")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", nargs="*", default=[f"{m}:{pt}" for m, pt in RUNS],
                   help="method:pattern items, e.g. sparsegpt:2:4 wanda:50%%")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "quality.json")
    args = p.parse_args()
    start = time.perf_counter()
    model, tok = load_model()
    data = CalibrationDataModule(nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed)
    base = RunOptions(tensorboard=False, progress=False, output_dir="runs/bench/dense")
    dense = None
    rows = []
    for item in args.runs:
        method, pattern = item.split(":", 1)
        row = {"method": method, "pattern": pattern}
        for key, steps in (("plain", 0), ("dr", args.steps)):
            t0 = time.perf_counter()
            tag = f"{method}-{pattern.replace(':', 'of').replace('%', 'pct')}-s{steps}"
            opts = RunOptions(**{**base.__dict__, "output_dir": f"runs/bench/{tag}"})
            module = RotationModule(method=method, pattern=pattern, steps=steps, lr=args.lr)
            res = run_job(module, data, opts, loaded=(copy.deepcopy(model), tok), dense_ppl=dense)
            dense = dense or res["dense_ppl"]
            row[key] = res["ppl"]["embedded"]
            row[f"{key}_seconds"] = time.perf_counter() - t0
        row["gap_closed"] = gap_closed(dense["embedded"], row["plain"], row["dr"])
        rows.append(row)
        print(json.dumps(row), flush=True)
    import sys

    result = {"args": vars(args) | {"out": str(args.out), "json": str(args.json)},
              "argv": " ".join(sys.argv[1:]), "dense": dense["embedded"], "rows": rows,
              "seconds": time.perf_counter() - start, "device": device_name(torch.device("cpu")),
              "versions": versions()}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    write_doc(markdown(result), args.out)
    print(markdown(result))


if __name__ == "__main__":
    main()
