"""Zero-shot accuracy of the dense default model and of saved runs (the generated task works offline).

    python benchmarks/zero_shot.py --runs runs/smollm2/sparsegpt-2of4-plain runs/smollm2/sparsegpt-2of4

Each run directory is evaluated from its saved ``model/`` (as a user would load it); the dense row is
the embedded default model. Tasks default to ``drl_continuation`` (generated from the embedded
evaluation text); on a machine with the hub add ``--tasks piqa hellaswag arc_easy arc_challenge
winogrande``. Writes a table between ``<!-- zeroshot:begin -->`` and ``<!-- zeroshot:end -->`` in
docs/benchmarks.md and the raw numbers to benchmarks/results/zero_shot.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from drlightning.eval.api import evaluate_loaded, load_any
from drlightning.eval.plan import EvalPlan
from drlightning.models import DEFAULT_MODEL
from drlightning.reporting.report import load_run
from drlightning.reporting.results import device_name

sys.path.insert(0, str(Path(__file__).parent))
from docblock import write_block  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run_label(run: dict) -> str:
    """What a run did, from its results.json: pruner, pattern, and the rotation settings."""
    rot = run.get("rotation") or {}
    head = f"{run['method']} {run['pattern']}"
    if not run["steps"]:
        return (f"{head}, plain" + (" + permutation" if rot.get("permute") else "")
                + f", seed {run['calibration']['seed']}")
    objective = rot.get("objective", "entropy")
    parts = [f"DR {objective}" + (" as released" if rot.get("reference_quirks") else ""),
             *(["measured role weights"] if rot.get("role_weights") == "measured" else []),
             *(["permutation"] if rot.get("permute") else []), *(["guard"] if rot.get("guard") else [])]
    return f"{head}, {' + '.join(parts)}, {run['steps']} steps, seed {run['calibration']['seed']}"


def shown(path: str) -> str:
    """A run path as the command line in the docs shows it (quality runs: under runs/quality)."""
    root = os.environ.get("DRL_QUALITY_RUNS")
    if root and Path(path).resolve().is_relative_to(Path(root).resolve()):
        return str(Path("runs/quality") / Path(path).resolve().relative_to(Path(root).resolve()))
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True)
    p.add_argument("--tasks", nargs="+", default=["drl_continuation"])
    p.add_argument("--items", type=int, default=200)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "zero_shot.json")
    args = p.parse_args()
    start = time.perf_counter()
    rows = []
    targets = [("dense", DEFAULT_MODEL, None)] + [
        (run_label(r), str(Path(path) / "model"), r) for path in args.runs for r in [load_run(path)]]
    for label, spec, run in targets:
        model, tok = load_any(spec, None, "float32", False)
        res = evaluate_loaded(model, tok, EvalPlan(data=[], zero_shot=list(args.tasks),
                                                   task_items=args.items), progress=False)
        ppl = run["ppl"].get("embedded") if run else None
        rows.append({"label": label, "ppl": ppl, **res["zero_shot"]})
        print(label, {t: v["value"] for t, v in res["zero_shot"]["tasks"].items()}, flush=True)
    dense_ppl = load_run(args.runs[0]).get("dense_ppl", {}).get("embedded")
    rows[0]["ppl"] = dense_ppl
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2) + "\n")
    head = "| model | ppl embedded | " + " | ".join(f"{t} acc %" for t in args.tasks)
    head += " | mean |" if len(args.tasks) > 1 else " |"
    lines = [f"0-shot through lm-eval {rows[0]['protocol']['lm_eval']}; drl_continuation = "
             f"{args.items} generated items (true 10-word continuation of a 40-word passage among 4, "
             f"chance 25%) from the embedded evaluation text; {device_name(torch.device('cpu'))}, "
             f"{time.perf_counter() - start:.0f} s. Command: `python benchmarks/zero_shot.py --runs "
             f"{' '.join(map(shown, args.runs))}`.", "", head,
             "|---" * (len(args.tasks) + 2 + (len(args.tasks) > 1)) + "|"]
    for r in rows:
        cells = [f"{100 * r['tasks'][t]['value']:.1f}" for t in args.tasks]
        mean = f" {100 * r['mean']:.1f} |" if len(args.tasks) > 1 else ""
        ppl = f"{r['ppl']:.3f}" if r["ppl"] is not None else "-"
        lines.append(f"| {r['label']} | {ppl} | " + " | ".join(cells) + " |" + mean)
    text = "\n".join(lines)
    print(text)
    write_block(args.out, "zeroshot", "Zero-shot accuracy", text)


if __name__ == "__main__":
    main()
