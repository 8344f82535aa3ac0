"""Rotation step of a layer too large for the interleaved comparison on this machine (70B size).

    python benchmarks/large_layer_step.py            # writes <!-- rotstep-large --> in docs/benchmarks.md

rotation_step.py times every variant against the reference in one process; at LLaMA-3-70B size
that needs the reference's and the dense objective's working sets at once, more than a 24 GB
machine has. This script runs each requested variant alone in a fresh process: it builds the
synthetic layer, runs ``--steps`` steps and reports the median seconds per step (after one warm-up
step) and the step memory (peak resident set minus the resident set with the layer built).
Variants whose estimated step memory (the LLaMA-3-8B measurement scaled by parameter count)
exceeds ``--max-gib`` are listed as not run, with that estimate.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from docblock import write_block  # noqa: E402
from layer_memory import layer_params  # noqa: E402
from rotation_step import SIZES, variants  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def child(size: str, method: str, variant: list, steps: int) -> dict:
    """(in the fresh process) seconds per step and step memory of one variant."""
    import statistics

    import torch
    from rotation_step import _rss_gib, make_step, synthetic

    kind, k, low, bf16 = variant
    frozen, m_o = synthetic(SIZES[size], method, torch.device("cpu"))
    step = make_step(kind, frozen, m_o, SIZES[size], method, torch.device("cpu"), k, low, bf16)
    base = _rss_gib("VmRSS")
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"s_per_step": statistics.median(times[1:]), "memory_gib": _rss_gib("VmHWM") - base,
            "layer_gib": base}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", default="llama3-70b", choices=list(SIZES))
    p.add_argument("--method", default="sparsegpt")
    p.add_argument("--variants", nargs="+", default=["reference", "k=1", "k=8", "k=1, low_memory"])
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--max-gib", type=float, default=14.0)
    p.add_argument("--from-size", default="llama3-8b", help="measured size the estimates scale")
    p.add_argument("--steps-json", type=Path,
                   default=ROOT / "benchmarks" / "results" / "rotation_step.json")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "large_step.json")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = p.parse_args()
    spec = variants([1, 2, 4, 8], __import__("torch").device("cpu"))
    measured = json.loads(args.steps_json.read_text()).get("cpu", [])
    small = {r["variant"]: r for r in measured if r["size"] == args.from_size}
    scale = layer_params(SIZES[args.size]) / layer_params(SIZES[args.from_size])
    rows = []
    for name in args.variants:
        est_mem = small[name]["memory_gib"] * scale if name in small else None
        row = {"variant": name, "est_memory_gib": est_mem,
               "est_s_per_step": small[name]["s_per_step"] * scale * 2 if name in small else None}
        if est_mem is not None and est_mem > args.max_gib:
            row["run"] = False
        else:
            here = str(Path(__file__).parent)
            code = (f"import json, sys; sys.path.insert(0, {here!r}); import large_layer_step as b; "
                    f"print(json.dumps(b.child({args.size!r}, {args.method!r}, "
                    f"{list(spec[name])!r}, {args.steps})))")
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 check=True)
            row.update(run=True, **json.loads(out.stdout.strip().splitlines()[-1]))
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"size": args.size, "steps": args.steps, "rows": rows},
                                    indent=2) + "\n")
    lines = [f"`python benchmarks/large_layer_step.py` ({args.size} size, {args.method}, CPU, "
             f"1 thread, median of {args.steps} step(s) after a warm-up, each variant alone in a "
             f"fresh process; estimates = the {args.from_size} measurement × {scale:.2f} (parameter "
             f"ratio) for memory and × {2 * scale:.2f} for time (the W·Q work grows with "
             "parameters × d)).", "",
             "| variant | s/step | step memory GiB | est. s/step | est. step memory GiB |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        got = (f"{r['s_per_step']:.1f} | {r['memory_gib']:.2f}" if r["run"] else
               f"not run (est. > {args.max_gib:g} GiB) | –")
        est = (f"{r['est_s_per_step']:.0f} | {r['est_memory_gib']:.1f}"
               if r["est_memory_gib"] is not None else "– | –")
        lines.append(f"| {r['variant']} | {got} | {est} |")
    text = "\n".join(lines)
    print(text)
    write_block(args.out, "rotstep-large", "Rotation step at 70B size (CPU)", text)


if __name__ == "__main__":
    main()
