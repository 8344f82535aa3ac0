"""Cost of the orthogonal map per step: QR (what drlightning uses) vs the Cayley transform.

    python studies/orthogonal_maps.py            # writes <!-- orthmaps --> in docs/benchmarks.md

Both maps are timed forward + backward on a d × d parameter near the identity (median of
``--repeats``), interleaved. The share is the QR time over drlightning's whole k = 1 step at that
size (benchmarks/results/rotation_step.json, written by benchmarks/rotation_step.py);
1 / (1 − share) bounds the speed-up any cheaper map could give.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # docblock.py, shared with the benchmarks
from docblock import write_block  # noqa: E402

SIZES = {"smollm2": 576, "llama3-8b": 4096}


def qr_map(a: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(a).Q


def cayley_map(a: torch.Tensor) -> torch.Tensor:
    s = a - a.T
    eye = torch.eye(a.shape[0], dtype=a.dtype)
    return torch.linalg.solve(eye - s, eye + s)


def timed(fn, a: torch.Tensor) -> float:
    a = a.detach().clone().requires_grad_()
    start = time.perf_counter()
    fn(a).sum().backward()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps-json", type=Path,
                   default=ROOT / "benchmarks" / "results" / "rotation_step.json")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = p.parse_args()
    steps = json.loads(args.steps_json.read_text()) if args.steps_json.is_file() else {}
    step_s = {r["size"]: r["s_per_step"] for r in steps.get("cpu", []) if r["variant"] == "k=1"}
    lines = ["| layer size | d | QR s | Cayley s | k=1 step s | QR share | bound for a free map |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    torch.manual_seed(0)
    for size in args.sizes:
        d = SIZES[size]
        a = torch.eye(d) + 0.01 * torch.randn(d, d)
        qr, cay = [], []
        for _ in range(args.repeats):
            qr.append(timed(qr_map, a))
            cay.append(timed(cayley_map, a))
        q, c = statistics.median(qr), statistics.median(cay)
        step = step_s.get(size)
        share = f"{q / step:.0%}" if step else "n/a"
        bound = f"{1 / (1 - q / step):.2f}×" if step else "n/a"
        lines.append(f"| {size} | {d} | {q:.4f} | {c:.4f} | {step or float('nan'):.3f} | {share} | "
                     f"{bound} |")
    threads = torch.get_num_threads()
    text = (f"`python studies/orthogonal_maps.py` (CPU, {threads} thread(s), forward + backward, "
            f"median of {args.repeats}; step time from the rotation step table).\n\n" +
            "\n".join(lines))
    print(text)
    write_block(args.out, "orthmaps", "Orthogonal map cost", text)


if __name__ == "__main__":
    main()
